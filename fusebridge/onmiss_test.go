package fusebridge_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/testenv"
)

// TestOnMiss checks Dir.OnMiss: a name that comes into being outside the
// program is found at its first lookup (the hook publishes it, with a
// bounded file inside, from the lookup); a name the hook does not publish
// is ENOENT, asked again at every lookup (no negative entry hides a name
// published later), and leaves nothing in the directory. On a mount made
// by root the directory is one bind of the no-open connection, so the
// lookups reach the hook through the second connection's twin.
func TestOnMiss(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	top, err := srv.MkdirAll("groups", 0o555)
	if err != nil {
		t.Fatal(err)
	}
	var gens atomic.Int64
	publish := func(d *fusebridge.Dir, name string) {
		sub, err := d.Mkdir(name, 0o555)
		if err != nil {
			t.Errorf("publishing %s: %v", name, err)
			return
		}
		if _, err := sub.Create("clock", 0o444, clockFile(&gens, 0).MaxAge(time.Hour)); err != nil {
			t.Errorf("publishing %s/clock: %v", name, err)
		}
	}
	publish(top, "a") // published ahead, as at start
	// A miss before the hook: the kernel may cache it, so the bridge
	// drops negative entries at a Create from then on, but not for the
	// name whose lookup waits for the hook (that would wait for the
	// lookup itself: this test would hang).
	if _, err := os.Stat(filepath.Join(srv.Mountpoint(), "groups", "early")); !os.IsNotExist(err) {
		t.Fatalf("before the hook: %v, want ENOENT", err)
	}
	var (
		mu    sync.Mutex
		world = map[string]bool{} // the names that exist outside
		asked = map[string]int{}
	)
	top.OnMiss(func(ctx context.Context, name string) {
		mu.Lock()
		asked[name]++
		exists := world[name]
		mu.Unlock()
		if exists {
			publish(top, name)
		}
	})
	mnt := srv.Mountpoint()
	if srv.HandlersNoOpen() {
		if mounts := testenv.MountsUnder(t, mnt); len(mounts) != 2 {
			t.Errorf("mounts %q, want the directory and one bind of groups", mounts)
		}
	}
	read := func(rel string) error {
		_, err := os.ReadFile(filepath.Join(mnt, "groups", rel))
		return err
	}
	if err := read("a/clock"); err != nil {
		t.Fatal(err)
	}
	if err := read("b/clock"); !os.IsNotExist(err) {
		t.Fatalf("a name outside the world: %v, want ENOENT", err)
	}
	for range 3 {
		if err := read("b/clock"); !os.IsNotExist(err) {
			t.Fatalf("a name outside the world: %v, want ENOENT", err)
		}
	}
	mu.Lock()
	nb := asked["b"]
	world["b"] = true // b comes into being
	mu.Unlock()
	if nb < 3 {
		t.Errorf("3 lookups of a missing name asked the hook %d times: the kernel cached the miss", nb)
	}
	if top.Lookup("b") != nil {
		t.Error("a miss left an entry behind")
	}
	if err := read("b/clock"); err != nil {
		t.Fatalf("a name published by the hook at its first lookup: %v", err)
	}
	if err := read("b/nothing"); !os.IsNotExist(err) {
		t.Errorf("a name in a directory without a hook: %v, want ENOENT", err)
	}
	if err := top.Lookup("b").Dir().Remove(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	delete(world, "b")
	mu.Unlock()
	if err := read("b/clock"); !os.IsNotExist(err) {
		t.Errorf("a removed name: %v, want ENOENT", err)
	}
	if srv.HandlersNoOpen() {
		if mounts := testenv.MountsUnder(t, mnt); len(mounts) != 2 {
			t.Errorf("mounts %q after names came and went, want the directory and one bind of groups", mounts)
		}
	}
	// A directory with its hook from the start.
	var inM atomic.Int64
	m, err := top.MkdirOnMiss("m", 0o555, func(ctx context.Context, name string) {
		inM.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := read("m/x"); !os.IsNotExist(err) || inM.Load() != 1 {
		t.Errorf("a lookup in a MkdirOnMiss directory: %v, hook asked %d times, want ENOENT and 1", err, inM.Load())
	}
	if _, err := m.Mkdir("x", 0o555); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "groups/m/x")); err != nil {
		t.Errorf("a name published after a miss in a MkdirOnMiss directory: %v", err)
	}
	top.OnMiss(nil)
	if err := read("c"); !os.IsNotExist(err) {
		t.Errorf("without the hook: %v, want ENOENT", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if asked["c"] != 0 {
		t.Error("the hook was asked after it was removed")
	}
}
