package fusebridge_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
)

// TestOpenRacesVanishingChild: opens of a dynamic child while the handler
// makes it vanish and come back get the file or ENOENT, never EIO: a name
// that is gone before the open completed is not there (as a /proc/<pid>
// file of a process that exited), and EIO is for descriptors opened
// before. Each round ends with the child gone and an open that must be
// ENOENT.
func TestOpenRacesVanishingChild(t *testing.T) {
	for _, opts := range []fusebridge.Options{{}, {NoOpenHandlers: true}, {NoOpen: true}} {
		t.Run(fmt.Sprintf("noopenhandlers=%v,noopen=%v", opts.NoOpenHandlers, opts.NoOpen), func(t *testing.T) {
			srv := mount(t, opts)
			pids := newMapDir()
			if _, err := srv.Create("pids", 0o555, pids); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(srv.Mountpoint(), "pids", "x")
			var opened, gone atomic.Int64
			other := map[string]int{}
			var mu sync.Mutex
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 3 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 16)
					for {
						select {
						case <-stop:
							return
						default:
						}
						fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
						if err == nil {
							opened.Add(1)
							unix.Read(fd, buf) // EIO allowed: opened before it vanished
							unix.Close(fd)
							continue
						}
						if errors.Is(err, syscall.ENOENT) {
							gone.Add(1)
							continue
						}
						mu.Lock()
						other[err.Error()]++
						mu.Unlock()
					}
				}()
			}
			deadline := time.Now().Add(2 * time.Second)
			rounds := 0
			for time.Now().Before(deadline) || rounds < 200 {
				pids.set("x", text("x"))
				// Let some opens find it (a stat looks it up).
				os.Stat(p)
				pids.set("x", nil)
				rounds++
			}
			close(stop)
			wg.Wait()
			if _, err := os.Open(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("open after the child vanished: %v, want ENOENT", err)
			}
			t.Logf("%d rounds: %d opens found the child, %d got ENOENT", rounds, opened.Load(), gone.Load())
			if len(other) > 0 {
				t.Errorf("opens racing the vanishing child got %v; want only success or ENOENT", other)
			}
		})
	}
}
