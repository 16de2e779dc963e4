package fusebridge_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// TestNoOpen checks the semantics of a NoOpen mount: knobs, generated
// files served from the kernel cache until Invalidate, and removal.
func TestNoOpen(t *testing.T) {
	checkNoOpen(t, mount(t, fusebridge.Options{NoOpen: true}))
}

// checkNoOpen checks the no-open semantics of handler files created on
// srv: those of a NoOpen mount, and of a NoOpenHandlers mount's handlers.
func checkNoOpen(t *testing.T, srv *fusebridge.Server) {
	var gen atomic.Int64
	counter := handler.Generated(func(context.Context) ([]byte, error) {
		return []byte("generation " + string(rune('0'+gen.Add(1))) + "\n"), nil
	})
	ge, err := srv.Create("counter", 0o444, counter)
	if err != nil {
		t.Fatal(err)
	}
	knob := handler.NewValue("100\n")
	if _, err := srv.Create("knob", 0o666, knob); err != nil {
		t.Fatal(err)
	}
	dir := srv.Mountpoint()
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		return string(b)
	}

	// Generated: the size is the snapshot's, and the snapshot stays
	// until Invalidate. (Publishing may have taken and dropped one.)
	first := read("counter")
	n := gen.Load()
	if first != fmt.Sprintf("generation %d\n", n) || n > 2 {
		t.Errorf("counter = %q after %d generations", first, n)
	}
	for range 5 {
		if got := read("counter"); got != first {
			t.Errorf("counter again = %q, want %q (cached until Invalidate)", got, first)
		}
	}
	if err := ge.Invalidate(); err != nil {
		t.Fatal(err)
	}
	if got, want := read("counter"), fmt.Sprintf("generation %d\n", n+1); got != want {
		t.Errorf("counter after Invalidate = %q, want %q", got, want)
	}

	// Knob: echo works without atomic O_TRUNC, and a shorter value is
	// not padded by the kernel's cached pages or size.
	if got := read("knob"); got != "100\n" {
		t.Errorf("knob = %q", got)
	}
	out, err := exec.Command("sh", "-c", "echo 7 > $1 && cat $1", "sh", filepath.Join(dir, "knob")).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if string(out) != "7\n" {
		t.Errorf("echo 7 > knob; cat knob = %q", out)
	}
	if got := string(knob.Get()); got != "7\n" {
		t.Errorf("knob value = %q", got)
	}

	// Removal: a descriptor opened before gets EIO, not cached pages.
	f, err := os.Open(filepath.Join(dir, "counter"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64)
	if _, err := f.ReadAt(buf, 0); err != nil && err.Error() != "EOF" {
		t.Logf("read before remove: %v", err)
	}
	if err := ge.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(buf, 0); errnoOf(err) != syscall.EIO {
		t.Errorf("read after Remove: %v, want EIO", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "counter")); !os.IsNotExist(err) {
		t.Errorf("stat after Remove: %v, want ENOENT", err)
	}
}
