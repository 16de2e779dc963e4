package fusebridge

import (
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// After a crash the new process gives the keeper only the descriptors it
// does not hold already under the same name: the same open file (a
// duplicate of it) is not sent again, another open of the same path is,
// and so is a name the keeper lacks. Sending what it holds would open a
// window (FDSTOREREMOVE, then FDSTORE) in which a second crash loses it.
func TestKeepPlan(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) int {
		t.Helper()
		fd, err := unix.Open(filepath.Join(dir, name), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	dup := func(fd int) int {
		t.Helper()
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(d) })
		return d
	}
	a, b, bAgain, c := open("a"), open("b"), open("b"), open("c")
	held := map[string]int{
		"fd-0": dup(a),      // the keeper holds this very file
		"fd-1": dup(bAgain), // the same path, another open: a different file
		"fd-9": dup(c),      // a name the new record does not use
	}
	got := keepPlan([]string{"fd-0", "fd-1", "fd-2"}, []int{a, b, c}, held)
	if want := []int{1, 2}; !slices.Equal(got, want) {
		t.Errorf("keepPlan: %v, want %v (fd-0 is held already)", got, want)
	}
	// A number the program closed and the kernel gave to another file is
	// not mistaken for what the keeper holds.
	reused := open("d")
	if sameFile(held["fd-0"], reused) {
		t.Errorf("sameFile of two different files is true")
	}
	if !sameFile(a, held["fd-0"]) {
		t.Errorf("sameFile of a descriptor and its duplicate is false (kcmp(2): without it every descriptor is kept again)")
	}
}
