package fusebridge

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// churnDir is a per-caller dynamic directory of "stay", "held" while
// shown, and one numbered child at a time: a process table whose pids come
// and go.
type churnDir struct {
	mu       sync.Mutex
	cur      int
	showHeld bool
}

func (c *churnDir) PerCaller() bool { return true }

func (c *churnDir) shown(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return name == "stay" || (name == "held" && c.showHeld) || name == strconv.Itoa(c.cur)
}

func (c *churnDir) child(name string) handler.Child {
	return handler.Child{Name: name, Mode: 0o444, Node: handler.Generated(func(context.Context) ([]byte, error) {
		return []byte(name + "\n"), nil
	})}
}

func (c *churnDir) Lookup(ctx context.Context, name string) (handler.Child, error) {
	if !c.shown(name) {
		return handler.Child{}, syscall.ENOENT
	}
	return c.child(name), nil
}

func (c *churnDir) List(ctx context.Context) ([]handler.Child, error) {
	var list []handler.Child
	for _, name := range []string{"stay", "held", strconv.Itoa(c.cur)} {
		if c.shown(name) {
			list = append(list, c.child(name))
		}
	}
	return list, nil
}

func (c *churnDir) set(i int) {
	c.mu.Lock()
	c.cur = i
	c.mu.Unlock()
}

// TestPerCallerDirChurn churns 10,000 children through a per-caller
// dynamic directory, each looked up (so the kernel caches its dentry) and
// some listed: the bridge's map of children does not keep them, while a
// child that stays shown keeps its inode number throughout, and one that
// no answer shows any more but a descriptor holds keeps its entry, inode
// number and content.
func TestPerCallerDirChurn(t *testing.T) {
	for _, opts := range []Options{{}, {NoOpenHandlers: true}} {
		t.Run(fmt.Sprintf("noopenhandlers=%v", opts.NoOpenHandlers), func(t *testing.T) {
			perCallerDirChurn(t, opts)
		})
	}
}

func perCallerDirChurn(t *testing.T, opts Options) {
	testenv.RequireFUSE(t)
	srv, err := Mount(filepath.Join(t.TempDir(), "mnt"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()
	// Below a static directory, which a NoOpenHandlers mount serves on its
	// other connection, as cgroupfs's proc would be if it were not at the
	// top.
	if _, err := srv.Root().Mkdir("s", 0o555); err != nil {
		t.Fatal(err)
	}
	cd := &churnDir{showHeld: true}
	e, err := srv.Create("s/d", 0o555, cd)
	if err != nil {
		t.Fatal(err)
	}
	d := e.Dir()
	dir := filepath.Join(srv.Mountpoint(), "s/d")
	ino := func(name string) uint64 {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, name), &st); err != nil {
			t.Fatalf("stat %s: %v", name, err)
		}
		return st.Ino
	}
	stay := ino("stay")
	held, err := os.Open(filepath.Join(dir, "held"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(held.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	heldIno, heldEntry := st.Ino, srv.Lookup("s/d/held")
	cd.mu.Lock()
	cd.showHeld = false
	cd.mu.Unlock()

	const n = 10000
	most := 0
	for i := range n {
		cd.set(i)
		ino(strconv.Itoa(i))
		if i%100 == 0 {
			if _, err := os.ReadDir(dir); err != nil {
				t.Fatal(err)
			}
			if got := ino("stay"); got != stay {
				t.Fatalf("after %d children: inode of stay %d, was %d", i, got, stay)
			}
		}
		srv.mu.RLock()
		most = max(most, d.children.len())
		srv.mu.RUnlock()
	}
	// The kernel forgets the dropped dentries' inodes in its own time, and
	// a sweep runs only as children are added: churn on until the map is
	// down to its steady size, with a bound for a kernel that never
	// forgets (not a speed: a busy machine takes longer).
	left, i := 0, n
	for deadline := time.Now().Add(time.Minute); ; i++ {
		srv.mu.RLock()
		left = d.children.len()
		srv.mu.RUnlock()
		if left <= 4*sweepMin || time.Now().After(deadline) {
			break
		}
		cd.set(i)
		ino(strconv.Itoa(i))
		// stay stays shown: a child no answer shows across two sweeps is
		// forgotten once the kernel lets it go (percaller.go), and this
		// loop may run many sweeps (it did with GOMAXPROCS=1).
		if i%100 == 0 {
			if got := ino("stay"); got != stay {
				t.Fatalf("after %d children: inode of stay %d, was %d", i, got, stay)
			}
		}
	}
	t.Logf("children in the map: at most %d during the churn of %d, %d after %d more", most, n, left, i-n)
	if most > n/4 || left > 4*sweepMin {
		t.Errorf("the map of children kept churned ones: at most %d during the churn of %d, %d after %d more; want <= %d and <= %d", most, n, left, i-n, n/4, 4*sweepMin)
	}
	if got := ino("stay"); got != stay {
		t.Errorf("inode of stay %d, was %d", got, stay)
	}
	b := make([]byte, 16)
	if k, err := held.ReadAt(b, 0); string(b[:k]) != "held\n" {
		t.Errorf("the held child's descriptor reads %q, %v", b[:k], err)
	}
	if err := unix.Fstat(int(held.Fd()), &st); err != nil || st.Ino != heldIno {
		t.Errorf("the held child's inode: %d, %v; was %d", st.Ino, err, heldIno)
	}
	if got := srv.Lookup("s/d/held"); got != heldEntry {
		t.Errorf("the held child's entry was forgotten while a descriptor holds it")
	}
}

// TestPerCallerSweepAfterLag: once the kernel has caught up with the
// dentry invalidations it was slow to serve (a busy machine), the map of a
// per-caller directory's children shrinks back to its steady size. The
// lag is made, not waited for: every invalidation is held back while 2,000
// children churn through, then let go. Before the sweep limit followed the
// children in use, it followed all those kept, and the map stayed at the
// size the lag had left it (about 2,000 here) for good.
func TestPerCallerSweepAfterLag(t *testing.T) {
	testenv.RequireFUSE(t)
	srv, err := Mount(filepath.Join(t.TempDir(), "mnt"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()
	cd := &churnDir{}
	e, err := srv.Create("d", 0o555, cd)
	if err != nil {
		t.Fatal(err)
	}
	d := e.Dir()
	dir := filepath.Join(srv.Mountpoint(), "d")
	held := make(chan struct{})
	hold := func() { <-held }
	dropDentriesHook.Store(&hold)
	defer dropDentriesHook.Store(nil)
	released := false
	release := func() {
		if !released {
			released = true
			close(held)
		}
	}
	defer release()

	size := func() int {
		srv.mu.RLock()
		defer srv.mu.RUnlock()
		return d.children.len()
	}
	i := 0
	churn := func() {
		cd.set(i)
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, strconv.Itoa(i)), &st); err != nil {
			t.Fatalf("stat %d: %v", i, err)
		}
		i++
	}
	for range 2000 {
		churn()
	}
	lagged := size()
	release()
	// The kernel forgets the dropped dentries' inodes in its own time, and
	// a sweep runs only as children are added: churn on until the map is
	// down to its steady size. The bound is for a kernel that never
	// forgets, not a speed: the old limit never got there at any speed.
	left := 0
	for deadline := time.Now().Add(time.Minute); ; {
		left = size()
		if left <= 4*sweepMin || time.Now().After(deadline) {
			break
		}
		churn()
	}
	t.Logf("children in the map: %d after 2000 added while the kernel's invalidations were held back, %d after %d more once let go", lagged, left, i-2000)
	if lagged < 1000 {
		t.Errorf("only %d children in the map while the invalidations were held back: the lag was not made", lagged)
	}
	if left > 4*sweepMin {
		t.Errorf("the map of children stayed at %d (after %d more children), want <= %d", left, i-2000, 4*sweepMin)
	}
}

// TestPerCallerRelink: a child that two sweeps forgot while a listing
// held it (nothing else did) is linked back, with its inode number, when
// the listing returns it; one retired meanwhile is not, nor one whose
// name another child has taken.
func TestPerCallerRelink(t *testing.T) {
	testenv.RequireFUSE(t)
	srv, err := Mount(filepath.Join(t.TempDir(), "mnt"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()
	cd := &churnDir{cur: -1}
	e, err := srv.Create("d", 0o555, cd)
	if err != nil {
		t.Fatal(err)
	}
	d := e.Dir()
	listed := map[string]*Entry{}
	for _, name := range []string{"x", "y", "z"} {
		listed[name] = d.adopt(cd.child(name))
	}
	d.sweep() // clears their marks
	d.sweep() // forgets them: the kernel never looked them up
	for name := range listed {
		if d.Lookup(name) != nil {
			t.Fatalf("%s survived two sweeps", name)
		}
	}
	if got := d.relink(listed["x"]); got != listed["x"] || d.Lookup("x") != listed["x"] {
		t.Errorf("relink of a swept child: %v, map has %v", got, d.Lookup("x"))
	}
	// y's name is taken by a new child meanwhile.
	ny := d.adopt(cd.child("y"))
	if ny == listed["y"] {
		t.Fatal("adopt revived a swept child")
	}
	if got := d.relink(listed["y"]); got != nil || d.Lookup("y") != ny {
		t.Errorf("relink over a newer child: %v, map has %v", got, d.Lookup("y"))
	}
	// z is retired by the handler after a new adoption of the name.
	nz := d.adopt(cd.child("z"))
	d.forget("z", nz.ino+1)
	if got := d.relink(nz); got != nil || d.Lookup("z") != nil {
		t.Errorf("relink of a retired child: %v, map has %v", got, d.Lookup("z"))
	}
}
