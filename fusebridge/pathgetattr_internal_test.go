package fusebridge

import (
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// TestPathGetattrMarks checks the record of GETATTRs without a file
// handle when two threads' ids share a slot: each is seen as marked while
// its request runs, whichever way it was recorded, and neither after.
func TestPathGetattrMarks(t *testing.T) {
	n := uint32(len(pathGetattrSlots))
	a, b, c := 7*n+5, 9*n+5, 11*n+5 // one slot
	ctx := func(pid uint32) *fuse.Context {
		return &fuse.Context{Caller: fuse.Caller{Pid: pid}}
	}
	sa := markPathGetattr(a)
	sb := markPathGetattr(b)
	if !sa || sb {
		t.Fatalf("slotted: first %v, second %v; want the first only", sa, sb)
	}
	for _, pid := range []uint32{a, b} {
		if !pathGetattr(ctx(pid)) {
			t.Errorf("thread %d: not marked during its GETATTR", pid)
		}
	}
	if pathGetattr(ctx(c)) {
		t.Errorf("thread %d: marked without a GETATTR", c)
	}
	unmarkPathGetattr(a, sa)
	if pathGetattr(ctx(a)) || !pathGetattr(ctx(b)) {
		t.Errorf("after the first's end: first %v, second %v; want false, true", pathGetattr(ctx(a)), pathGetattr(ctx(b)))
	}
	unmarkPathGetattr(b, sb)
	if pathGetattr(ctx(b)) || pathGetattrMoreN.Load() != 0 {
		t.Errorf("after both ended: second marked %v, %d recorded aside", pathGetattr(ctx(b)), pathGetattrMoreN.Load())
	}
	if pathGetattr(ctx(0)) {
		t.Error("thread 0 marked without a GETATTR")
	}
	s0 := markPathGetattr(0)
	if s0 || !pathGetattr(ctx(0)) {
		t.Errorf("thread 0: slotted %v, marked %v; want false, true", s0, pathGetattr(ctx(0)))
	}
	unmarkPathGetattr(0, s0)
}
