package fusebridge_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/testenv"
)

// A mount's /dev/fuse descriptor never reaches a child process that another
// goroutine starts while the mount is being made: a child that outlived the
// server would keep the connection alive with nobody to answer it, and its
// own requests on the mount would wait forever (seen: a cat in D state for
// an hour, holding the device of the mount it read).
func TestDeviceNotInheritedByChildren(t *testing.T) {
	testenv.RequireFUSE(t)
	var stop atomic.Bool
	var leaked, children atomic.Int64
	var sample atomic.Value
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				out, err := exec.Command("ls", "-l", "/proc/self/fd").Output()
				if err != nil {
					t.Errorf("ls /proc/self/fd: %v", err)
					return
				}
				children.Add(1)
				if strings.Contains(string(out), "/dev/fuse") {
					leaked.Add(1)
					sample.Store(string(out))
				}
			}
		}()
	}
	for i := range 30 {
		srv, err := fusebridge.Mount(filepath.Join(t.TempDir(), "mnt"), fusebridge.Options{})
		if err != nil {
			t.Fatalf("mount %d: %v", i, err)
		}
		if err := srv.Unmount(); err != nil {
			t.Fatalf("unmount %d: %v", i, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d children started during 30 mounts", children.Load())
	if n := leaked.Load(); n > 0 {
		t.Errorf("%d of %d children inherited a /dev/fuse descriptor; one's descriptors:\n%s", n, children.Load(), sample.Load())
	}
}
