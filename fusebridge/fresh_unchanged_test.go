package fusebridge_test

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// TestFreshUnchangedKeepsPages: when a bounded file is regenerated with the
// bytes it had, the kernel keeps the pages it caches (its mtime does not
// move), so a reader pays the GETATTR that regenerates it and no READ;
// when the bytes change, the mtime moves and the reader gets the new ones.
// The test waits for regenerations, not for a time: it reads until the
// handler has run again.
func TestFreshUnchangedKeepsPages(t *testing.T) {
	const bound = 20 * time.Millisecond
	for _, l := range freshLayouts {
		t.Run(l.name, func(t *testing.T) {
			srv := mount(t, l.opts)
			if !l.opts.NoOpen && !srv.HandlersNoOpen() {
				testenv.Missing(t, "bounded files are cached only on a no-open connection, which needs root")
			}
			var sameGens, clockGens atomic.Int64
			same := handler.Generated(func(context.Context) ([]byte, error) {
				sameGens.Add(1)
				return []byte("the same bytes\n"), nil
			})
			dir := l.dir
			if dir != "" {
				if _, err := srv.MkdirAll(dir, 0o555); err != nil {
					t.Fatal(err)
				}
			} else if _, err := srv.Create("plain", 0o444, text("x\n")); err != nil {
				t.Fatal(err)
			}
			for name, h := range map[string]any{"same": same.MaxAge(bound), "clock": clockFile(&clockGens, 100).MaxAge(bound)} {
				if _, err := srv.Create(filepath.Join(dir, name), 0o444, h); err != nil {
					t.Fatal(err)
				}
			}
			samePath := filepath.Join(srv.Mountpoint(), dir, "same")
			clockPath := filepath.Join(srv.Mountpoint(), dir, "clock")
			mtime := func(path string) unix.Timespec {
				var st unix.Stat_t
				if err := unix.Stat(path, &st); err != nil {
					t.Fatal(err)
				}
				return st.Mtim
			}

			if got := readAt(t, samePath); got != "the same bytes\n" {
				t.Fatalf("same: %q", got)
			}
			m := srv.Metrics()
			reads0, gens0, mtime0 := m.Requests(fusebridge.OpRead), sameGens.Load(), mtime(samePath)
			// Five regenerations, each found by the read after the bound.
			const rounds = 5
			for r := range rounds {
				for deadline := time.Now().Add(time.Minute); sameGens.Load() <= gens0+int64(r); {
					if time.Now().After(deadline) {
						t.Fatalf("round %d: no regeneration within a minute of reads (%d generations)", r, sameGens.Load())
					}
					time.Sleep(bound)
					if got := readAt(t, samePath); got != "the same bytes\n" {
						t.Fatalf("round %d: %q", r, got)
					}
				}
			}
			// Before, every regeneration cost its READ; now none should
			// (a page the kernel reclaimed meanwhile would cost one).
			if reads := m.Requests(fusebridge.OpRead) - reads0; reads >= rounds {
				t.Errorf("%d READs over %d regenerations of unchanged bytes; want the kernel to keep its pages", reads, sameGens.Load()-gens0)
			}
			if got := mtime(samePath); got != mtime0 {
				t.Errorf("the mtime of unchanged bytes moved from %v to %v at their regeneration", mtime0, got)
			}

			// Bytes that change move the mtime, and are read.
			b, err := os.ReadFile(clockPath)
			if err != nil {
				t.Fatal(err)
			}
			_, gen := parseClock(t, b)
			first := mtime(clockPath)
			for deadline := time.Now().Add(time.Minute); ; {
				if time.Now().After(deadline) {
					t.Fatal("clock: no new content within a minute of reads")
				}
				time.Sleep(bound)
				b, err := os.ReadFile(clockPath)
				if err != nil {
					t.Fatal(err)
				}
				if _, g := parseClock(t, b); g > gen {
					break
				}
			}
			if got := mtime(clockPath); got == first {
				t.Errorf("clock: new content kept the mtime %v", first)
			}
		})
	}
}
