package bytestore

import (
	"math/rand/v2"
	"testing"
)

// TestPageSet checks pageSet against a plain map of pages under random adds
// and removes, including the invariant that runs stay sorted, disjoint and
// non-adjacent.
func TestPageSet(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var s pageSet
	model := map[int64]bool{}
	for i := range 5000 {
		lo := rng.Int64N(200)
		hi := lo + rng.Int64N(20)
		if rng.IntN(2) == 0 {
			s.add(lo, hi)
			for p := lo; p < hi; p++ {
				model[p] = true
			}
		} else {
			s.remove(lo, hi)
			for p := lo; p < hi; p++ {
				delete(model, p)
			}
		}
		for j, r := range s.runs {
			if r.lo >= r.hi || (j > 0 && s.runs[j-1].hi >= r.lo) {
				t.Fatalf("step %d: bad runs %v", i, s.runs)
			}
		}
		p := rng.Int64N(230)
		want := int64(-1)
		for q := p; q < 230; q++ {
			if model[q] {
				want = q
				break
			}
		}
		lo, hi, ok := s.next(p)
		if !ok {
			lo = -1
		}
		if lo != want {
			t.Fatalf("step %d: next(%d) = %d, want %d (runs %v)", i, p, lo, want, s.runs)
		}
		if ok && (!model[hi-1] || model[hi]) {
			t.Fatalf("step %d: next(%d) ends at %d, not at the end of a run", i, p, hi)
		}
	}
}
