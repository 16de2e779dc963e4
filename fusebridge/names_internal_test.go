package fusebridge

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestNames checks the table of a directory's children against a map
// through random additions, replacements and deletions, growing to
// thousands of names and shrinking back to none.
func TestNames(t *testing.T) {
	var tab names
	want := map[string]*Entry{}
	r := rand.New(rand.NewPCG(1, 2))
	entry := func(name string) *Entry { return &Entry{entryCore: &entryCore{name: name}} }
	check := func(step int) {
		t.Helper()
		if tab.len() != len(want) {
			t.Fatalf("step %d: len %d, want %d", step, tab.len(), len(want))
		}
		seen := 0
		for e := range tab.all {
			if want[e.name] != e {
				t.Fatalf("step %d: all yields %q, which is not in the table", step, e.name)
			}
			seen++
		}
		if seen != len(want) {
			t.Fatalf("step %d: all yields %d entries, want %d", step, seen, len(want))
		}
		for name, e := range want {
			if got := tab.get(name); got != e {
				t.Fatalf("step %d: get(%q) = %p, want %p", step, name, got, e)
			}
		}
	}
	for step := range 40000 {
		// Grow for the first half, shrink in the second.
		name := fmt.Sprintf("f%d", r.IntN(3000))
		add := r.IntN(100) < 70
		if step >= 20000 {
			add = r.IntN(100) < 20
		}
		if add {
			e := entry(name)
			tab.set(e)
			want[name] = e
		} else {
			tab.delete(name)
			delete(want, name)
		}
		if tab.get("missing") != nil {
			t.Fatalf("step %d: a name never added was found", step)
		}
		if step%997 == 0 {
			check(step)
		}
	}
	for name := range want {
		tab.delete(name)
		delete(want, name)
	}
	check(-1)
	if len(tab.slots) > minNames {
		t.Errorf("an emptied table keeps %d slots, want at most %d", len(tab.slots), minNames)
	}
	tab.clear()
	if tab.get("f1") != nil || tab.len() != 0 {
		t.Error("a cleared table is not empty")
	}
}
