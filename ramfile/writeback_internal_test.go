package ramfile

import (
	"fmt"
	"math"
	"testing"
)

// TestWritebackSet: the page runs stay sorted, disjoint and merged, against
// a plain map of pages.
func TestWritebackSet(t *testing.T) {
	var w writeback
	ref := map[int64]bool{}
	ops := []struct {
		add    bool
		lo, hi int64
	}{
		{true, 10, 20}, {true, 30, 40}, {true, 20, 30}, {false, 15, 35}, {true, 0, 5},
		{true, 5, 15}, {false, 0, 1}, {true, 100, 101}, {false, 39, 200}, {true, 12, 38},
	}
	for i, op := range ops {
		w.mu.Lock()
		if op.add {
			w.add(op.lo, op.hi)
		} else {
			w.remove(op.lo, op.hi)
		}
		runs := append([]pageRun(nil), w.runs...)
		w.mu.Unlock()
		for p := op.lo; p < op.hi; p++ {
			ref[p] = op.add
		}
		got := map[int64]bool{}
		for j, r := range runs {
			if r.lo >= r.hi || (j > 0 && runs[j-1].hi >= r.lo) {
				t.Fatalf("op %d: runs not sorted, disjoint and merged: %v", i, runs)
			}
			for p := r.lo; p < r.hi; p++ {
				got[p] = true
			}
		}
		for p := int64(0); p < 210; p++ {
			if got[p] != ref[p] {
				t.Fatalf("op %d: page %d in the set: %v, want %v (runs %v)", i, p, got[p], ref[p], runs)
			}
		}
	}
	// forget to the end of the file must not overflow.
	w.any.Store(true)
	w.forget(4096*12, math.MaxInt64-4096*12)
	if fmt.Sprint(w.runs) != "[{1 12}]" {
		t.Errorf("after forgetting from page 12 on: %v", w.runs)
	}
}
