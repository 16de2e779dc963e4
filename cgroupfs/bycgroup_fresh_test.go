package cgroupfs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
	"github.com/ramproc/ramproc/cgroupfs/procview"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/cgroupfstest"
	"github.com/ramproc/ramproc/internal/testenv"
)

// mountByCgroup mounts the tree with o and returns the server.
func mountByCgroup(t *testing.T, o Options) *fusebridge.Server {
	t.Helper()
	testenv.RequireFUSE(t)
	v, err := procview.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	srv, err := fusebridge.Mount(t.TempDir(), fusebridge.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Unmount() })
	if err := Publish(srv.Root(), v, o); err != nil {
		t.Fatal(err)
	}
	return srv
}

// TestByCgroupLayout checks by-cgroup's shape: on a mount made by root the
// whole subtree is one bind of the no-open connection, however many
// cgroups come and go; a cgroup made after the start, nested or not, is
// found at its first lookup; a name that is no cgroup is ENOENT and leaves
// nothing in the tree; umount -R stops it all.
func TestByCgroupLayout(t *testing.T) {
	if _, err := exec.LookPath("umount"); err != nil {
		testenv.Missing(t, "umount is not installed (apt-get install mount)")
	}
	srv := mountByCgroup(t, Options{})
	mnt := srv.Mountpoint()
	parent := livecg.New(t, livecg.Memory, "bycgroup-"+livecg.Name(), "memory.limit_in_bytes", "268435456")
	child := livecg.New(t, livecg.Memory, parent.Path[1:]+"/c", "memory.limit_in_bytes", "134217728")
	if got := memTotal(readFile(t, filepath.Join(mnt, "by-cgroup", child.Path, "proc/meminfo"))); got != "MemTotal:         131072 kB" {
		t.Errorf("a nested cgroup made after the start: %q", got)
	}
	if got := memTotal(readFile(t, filepath.Join(mnt, "by-cgroup", parent.Path, "proc/meminfo"))); got != "MemTotal:         262144 kB" {
		t.Errorf("its parent: %q", got)
	}
	for range 3 {
		if _, err := os.Stat(filepath.Join(mnt, "by-cgroup", "bycgroup-no-such-cgroup")); !os.IsNotExist(err) {
			t.Fatalf("a name that is no cgroup: %v, want ENOENT", err)
		}
	}
	if srv.Lookup("by-cgroup/bycgroup-no-such-cgroup") != nil {
		t.Error("a name that is no cgroup was kept")
	}
	wantMounts := 1
	if srv.HandlersNoOpen() {
		wantMounts = 2
	}
	if mounts := testenv.MountsUnder(t, mnt); len(mounts) != wantMounts {
		t.Errorf("mounts %q, want %d (the directory, and by-cgroup as one bind on a mount made by root)", mounts, wantMounts)
	}
	if err := os.Remove(child.Dir); err != nil {
		t.Fatal(err)
	}
	waitGone(t, filepath.Join(mnt, "by-cgroup", child.Path))
	if mounts := testenv.MountsUnder(t, mnt); len(mounts) != wantMounts {
		t.Errorf("after a cgroup came and went: mounts %q, want %d", mounts, wantMounts)
	}
	if out, err := exec.Command("umount", "-R", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount -R %s: %v: %s", mnt, err, out)
	}
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the server did not stop within 20s of umount -R")
	}
	if got := testenv.MountsUnder(t, mnt); len(got) != 0 {
		t.Errorf("mounts left after umount -R: %q", got)
	}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestByCgroupFreshBound checks the bound of by-cgroup's files: a writer
// sets the cgroup's memory limit to 1, 2, 3, ... MiB and notes when each
// write had returned; a reader that gets limit k at a read begun after
// limit k+1 was in place got content at least that old, which must stay
// within the bound (plus the moment one regeneration takes). Ages are
// derived from the content, not timed; the test runs until it has seen a
// number of limits, and checks that the content does change.
func TestByCgroupFreshBound(t *testing.T) {
	const bound = 50 * time.Millisecond
	const slack = 500 * time.Millisecond // as fusebridge's TestFreshBound
	srv := mountByCgroup(t, Options{ByCgroupMaxAge: bound})
	g := livecg.New(t, livecg.Memory, "bycgroup-"+livecg.Name(), "memory.limit_in_bytes", strconv.Itoa(1<<20))
	name := filepath.Join(srv.Mountpoint(), "by-cgroup", g.Path, "proc/meminfo")
	var (
		mu  sync.Mutex
		set = map[int64]time.Time{1: time.Now()} // limit in MiB: when it was in place
	)
	var limit atomic.Int64
	limit.Store(1)
	const limits = 30
	var stop, written atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer written.Store(true)
		for k := int64(2); k <= limits && !stop.Load(); k++ {
			time.Sleep(bound / 2)
			if err := os.WriteFile(filepath.Join(g.Dir, "memory.limit_in_bytes"), []byte(strconv.FormatInt(k<<20, 10)), 0); err != nil {
				t.Errorf("set the limit: %v", err)
				return
			}
			mu.Lock()
			set[k] = time.Now()
			mu.Unlock()
			limit.Store(k)
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()
	seen := map[int64]bool{}
	var worst time.Duration
	for deadline := time.Now().Add(2 * time.Minute); !written.Load(); {
		if time.Now().After(deadline) {
			t.Fatal("the writer did not finish within 2 minutes")
		}
		start := time.Now()
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		var kb int64
		if _, err := fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(memTotal(data), "MemTotal:")), "%d kB", &kb); err != nil {
			t.Fatalf("MemTotal of %q: %v", memTotal(data), err)
		}
		k := kb >> 10
		seen[k] = true
		mu.Lock()
		next, ok := set[k+1]
		mu.Unlock()
		if ok && start.After(next) {
			if age := start.Sub(next); age > worst {
				worst = age
			}
		}
	}
	t.Logf("%d limits seen of %d; oldest content read: at least %v old (bound %v)", len(seen), limits, worst, bound)
	if worst > bound+slack {
		t.Errorf("a read got content at least %v old, bound %v (+%v for one regeneration)", worst, bound, slack)
	}
	if len(seen) < 3 {
		t.Errorf("saw %d limits of %d: the content does not follow the cgroup", len(seen), limits)
	}
}

// TestByCgroupNewCgroups: cgroups made one after another and read at once,
// every file, through the cgroupfs command (built without -race, whose
// speed is what once let an inotify rescan that had listed the hierarchy
// before a cgroup was made withdraw the cgroup a lookup had just
// published: EIO and ENOENT in the middle of its files).
func TestByCgroupNewCgroups(t *testing.T) {
	ours := cgroupfstest.Start(t, len(Paths(Options{}))).Mnt
	for i := range 40 {
		g := livecg.New(t, livecg.Memory, "bycgroup-"+livecg.Name(), "memory.limit_in_bytes", "268435456")
		for _, f := range benchFiles {
			if _, err := os.ReadFile(filepath.Join(ours, "by-cgroup", g.Path, f)); err != nil {
				t.Errorf("cgroup %d: %v", i, err)
			}
		}
	}
}

// TestByCgroupFixture follows a fixture hierarchy (plain directories, which
// inotify reports as it does cgroups) mounted with root /outer, as a
// container's bind of part of the tree shows it: by-cgroup holds outer and
// the cgroups below it; one made later is found at its first lookup, one
// removed is withdrawn, a name outside the hierarchy's root is ENOENT.
func TestByCgroupFixture(t *testing.T) {
	testenv.RequireFUSE(t)
	tree := t.TempDir()
	for _, d := range []string{"a", "a/b", "proc"} {
		if err := os.Mkdir(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	v := &procview.View{Cgroups: &cgroup.Hierarchies{Proc: "/proc", V1: map[string]cgroup.Mount{"memory": {Dir: tree, Root: "/outer"}}}, Proc: "/proc", Sys: "/sys"}
	t.Cleanup(v.Close)
	srv, err := fusebridge.Mount(t.TempDir(), fusebridge.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Unmount() })
	if err := Publish(srv.Root(), v, Options{}); err != nil {
		t.Fatal(err)
	}
	by := filepath.Join(srv.Mountpoint(), "by-cgroup")
	isDir := func(rel string) bool {
		st, err := os.Stat(filepath.Join(by, rel))
		return err == nil && st.IsDir()
	}
	for _, rel := range []string{"proc", "outer/proc/pressure", "outer/a/b/sys/devices/system/cpu"} {
		if !isDir(rel) {
			t.Errorf("%s: not a directory", rel)
		}
	}
	for _, rel := range []string{"a", "outer/proc/x", "outer/nothing"} {
		if isDir(rel) {
			t.Errorf("%s: a directory, want ENOENT", rel)
		}
	}
	// outer/proc is the files, not the fixture's cgroup "proc".
	if _, err := os.Stat(filepath.Join(by, "outer/proc/meminfo")); err != nil {
		t.Error(err)
	}
	if err := os.MkdirAll(filepath.Join(tree, "a/c/d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if !isDir("outer/a/c/d/proc") {
		t.Error("a cgroup made after the start: not found at its first lookup")
	}
	if err := os.RemoveAll(filepath.Join(tree, "a/c")); err != nil {
		t.Fatal(err)
	}
	waitGone(t, filepath.Join(by, "outer/a/c"))
	if !isDir("outer/a/b/proc") {
		t.Error("a cgroup beside the removed one was withdrawn")
	}
}
