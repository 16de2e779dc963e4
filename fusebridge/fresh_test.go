package fusebridge_test

import (
	"bytes"
	"context"
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

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// clockFile is generated content that embeds when it was made (Unix
// nanoseconds) and a generation count, padded to pad bytes so that a
// size that does not move cannot hide a stale page.
func clockFile(gens *atomic.Int64, pad int) handler.Generated {
	return func(context.Context) ([]byte, error) {
		n := gens.Add(1)
		b := fmt.Appendf(nil, "%d %d\n", time.Now().UnixNano(), n)
		for len(b) < pad {
			b = append(b, '.')
		}
		return b, nil
	}
}

func parseClock(t *testing.T, b []byte) (made time.Time, gen int64) {
	t.Helper()
	f := strings.Fields(string(b))
	if len(f) < 2 {
		t.Fatalf("content %q is not \"<nanoseconds> <generation>\"", b)
	}
	ns, err1 := strconv.ParseInt(f[0], 10, 64)
	gen, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("content %q is not \"<nanoseconds> <generation>\"", b)
	}
	return time.Unix(0, ns), gen
}

// freshLayouts are the mounts a bounded file must keep its bound on: the
// default layout (its own no-open connection, bound in a directory of its
// own and in the top directory beside a file that keeps OPEN), and a NoOpen
// mount.
var freshLayouts = []struct {
	name string
	opts fusebridge.Options
	dir  string
}{
	{"default", fusebridge.Options{}, "sub"},
	{"default-top", fusebridge.Options{}, ""},
	{"noopen", fusebridge.Options{NoOpen: true}, "sub"},
}

// TestFreshBound checks the contract of Generated.MaxAge: no read returns
// content made longer than the bound before the read started (plus the
// moment one regeneration and its reply take), and the content does change
// (the file is not frozen). Ages are measured from the times embedded in
// the content; the test runs until it has seen a number of generations,
// not for a fixed time. Where the file has a directory of its own, that is
// listed meanwhile (a listing revalidates it too: TestFreshListing).
func TestFreshBound(t *testing.T) {
	const bound = 50 * time.Millisecond
	// slack is what "one regeneration" may take on a loaded machine: the
	// GETATTR that regenerates, and its reply's way to the kernel. A file
	// frozen for even a few bounds fails.
	const slack = 500 * time.Millisecond
	for _, l := range freshLayouts {
		t.Run(l.name, func(t *testing.T) {
			srv := mount(t, l.opts)
			var gens atomic.Int64
			path := "clock"
			if l.dir != "" {
				if _, err := srv.MkdirAll(l.dir, 0o555); err != nil {
					t.Fatal(err)
				}
				path = l.dir + "/clock"
			} else if _, err := srv.Create("plain", 0o444, text("x\n")); err != nil {
				t.Fatal(err)
			}
			if _, err := srv.Create(path, 0o444, clockFile(&gens, 100).MaxAge(bound)); err != nil {
				t.Fatal(err)
			}
			name := filepath.Join(srv.Mountpoint(), path)
			var wg sync.WaitGroup
			var stop atomic.Bool
			var maxAge atomic.Int64
			var reads atomic.Int64
			errs := make(chan error, 5)
			if l.dir != "" {
				// Listings too, whose READDIRPLUS revalidates the file
				// between the readers' GETATTRs (server.go).
				wg.Add(1)
				go func() {
					defer wg.Done()
					for !stop.Load() {
						if _, err := os.ReadDir(filepath.Dir(name)); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			for range 3 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for !stop.Load() {
						start := time.Now()
						b, err := os.ReadFile(name)
						if err != nil {
							errs <- err
							return
						}
						made, _ := parseClock(t, b)
						if len(b) != 100 {
							errs <- fmt.Errorf("read %d bytes (%q), want the 100 of one generation", len(b), b)
							return
						}
						age := start.Sub(made)
						for {
							m := maxAge.Load()
							if int64(age) <= m || maxAge.CompareAndSwap(m, int64(age)) {
								break
							}
						}
						reads.Add(1)
						if age > bound+slack {
							errs <- fmt.Errorf("a read that started at %v returned content made at %v: %v old, bound %v", start.Format(time.StampMicro), made.Format(time.StampMicro), age, bound)
							return
						}
					}
				}()
			}
			// Until 20 generations have been read (a frozen file never
			// gets there), or an error.
			seen := int64(0)
			deadline := time.Now().Add(time.Minute)
			for seen < 20 && time.Now().Before(deadline) && len(errs) == 0 {
				b, err := os.ReadFile(name)
				if err != nil {
					t.Fatal(err)
				}
				_, g := parseClock(t, b)
				seen = max(seen, g)
				time.Sleep(bound / 2)
			}
			stop.Store(true)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if seen < 20 {
				t.Fatalf("only %d generations in a minute with a bound of %v: the file is frozen", seen, bound)
			}
			t.Logf("%d reads over %d generations; oldest content read was %v old (bound %v)", reads.Load(), gens.Load(), time.Duration(maxAge.Load()), bound)
		})
	}
}

// TestFreshListing checks the bound where listings revalidate bounded
// files: a no-open connection lists with READDIRPLUS, and the kernel trusts
// the attributes a listing gives for the time the snapshot has left, so
// find | xargs cat reads a file without asking again. Passes that list a
// directory of clock files and read each, each pass starting after the
// bound has passed since the one before ended, read new content from every
// file every time (the content of the pass before is older than the bound),
// and none older than the bound plus one regeneration.
func TestFreshListing(t *testing.T) {
	const files, bound = 50, 100 * time.Millisecond
	const slack = 500 * time.Millisecond // as in TestFreshBound
	var gens atomic.Int64
	forListedClocks(t, files, clockFile(&gens, 100), bound, func(t *testing.T, dir string) {
		last := map[string]time.Time{}
		for pass := range 3 {
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(ents) != files {
				t.Fatalf("listed %d files, want %d", len(ents), files)
			}
			for _, ent := range ents {
				start := time.Now()
				b, err := os.ReadFile(filepath.Join(dir, ent.Name()))
				if err != nil {
					t.Fatal(err)
				}
				made, _ := parseClock(t, b)
				if age := start.Sub(made); age > bound+slack {
					t.Errorf("pass %d: %s: a read that started at %v returned content made at %v: %v old, bound %v", pass, ent.Name(), start.Format(time.StampMicro), made.Format(time.StampMicro), age, bound)
				}
				if prev, ok := last[ent.Name()]; ok && !made.After(prev) {
					t.Errorf("pass %d: %s: read the content of the pass before (made %v), older than the bound", pass, ent.Name(), prev.Format(time.StampMicro))
				}
				last[ent.Name()] = made
			}
			time.Sleep(bound)
		}
	})
}

// forListedClocks runs fn in a subtest for each layout whose bounded files
// have a directory of their own (the top directory is listed by the
// connection that keeps OPEN), with files files made by gen with the
// bound, named c00, c01, ..., in that directory, whose path fn gets.
func forListedClocks(t *testing.T, files int, gen handler.Generated, bound time.Duration, fn func(t *testing.T, dir string)) {
	for _, l := range freshLayouts {
		if l.dir == "" {
			continue
		}
		t.Run(l.name, func(t *testing.T) {
			srv := mount(t, l.opts)
			if _, err := srv.MkdirAll(l.dir, 0o555); err != nil {
				t.Fatal(err)
			}
			for i := range files {
				if _, err := srv.Create(fmt.Sprintf("%s/c%02d", l.dir, i), 0o444, gen.MaxAge(bound)); err != nil {
					t.Fatal(err)
				}
			}
			fn(t, filepath.Join(srv.Mountpoint(), l.dir))
		})
	}
}

// TestFreshListingSlow checks the bound of the first entry of a listing
// whose files take long to make: a READDIRPLUS reply leaves only once every
// entry in it has been looked up (and generated), and the kernel counts an
// attribute timeout from the reply, so the bridge takes the time the reply
// took off every entry's timeout. Here the listing takes 40 x 20 ms: the
// first file's snapshot, made at its start, is older than its 100 ms bound
// when the reply arrives, and the read right after must not be served from
// it.
func TestFreshListingSlow(t *testing.T) {
	const files, bound, pause = 40, 100 * time.Millisecond, 20 * time.Millisecond
	const slack = 500 * time.Millisecond // as in TestFreshBound
	var gens atomic.Int64
	clock := clockFile(&gens, 100)
	slow := handler.Generated(func(ctx context.Context) ([]byte, error) {
		time.Sleep(pause)
		return clock(ctx)
	})
	forListedClocks(t, files, slow, bound, func(t *testing.T, dir string) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		b, err := os.ReadFile(filepath.Join(dir, ents[0].Name()))
		if err != nil {
			t.Fatal(err)
		}
		made, _ := parseClock(t, b)
		if age := start.Sub(made); age > bound+slack {
			t.Errorf("the first file of a listing of %d files that take %v each read content %v old, bound %v", files, pause, age, bound)
		}
	})
}

// TestFreshNoRequests checks that re-reading a bounded file within its
// bound asks the server nothing, and that Notify makes the next read show
// new content, on the layout the library chooses.
func TestFreshNoRequests(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	if !srv.HandlersNoOpen() {
		testenv.Missing(t, "a no-open connection for bounded files needs root")
	}
	var gens atomic.Int64
	if _, err := srv.MkdirAll("sys", 0o555); err != nil {
		t.Fatal(err)
	}
	e, err := srv.Create("sys/clock", 0o444, clockFile(&gens, 0).MaxAge(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(srv.Mountpoint(), "sys/clock")
	// Twice: the first READ makes the kernel forget the atime it caches,
	// which the next stat(2) (os.ReadFile's) asks for once.
	os.ReadFile(name)
	first, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	m := srv.Metrics()
	before := totalRequests(m)
	before0 := snapshotOps(m)
	for range 100 {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, first) {
			t.Fatalf("re-read within the bound gave %q, first %q", b, first)
		}
	}
	if n := totalRequests(m) - before; n != 0 {
		t.Errorf("100 open+read+close of a cached bounded file cost %d requests (%s), want 0", n, opsSince(m, before0))
	}
	e.Notify()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, first) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Notify did not make new content visible within 30s")
		}
		time.Sleep(time.Millisecond)
	}
}

func totalRequests(m *fusebridge.Metrics) uint64 {
	var n uint64
	for _, op := range fusebridge.Ops() {
		n += m.Requests(op)
	}
	return n
}

func snapshotOps(m *fusebridge.Metrics) map[fusebridge.Op]uint64 {
	out := map[fusebridge.Op]uint64{}
	for _, op := range fusebridge.Ops() {
		out[op] = m.Requests(op)
	}
	return out
}

// opsSince describes the requests served since before, by operation.
func opsSince(m *fusebridge.Metrics, before map[fusebridge.Op]uint64) string {
	var parts []string
	for _, op := range fusebridge.Ops() {
		if n := m.Requests(op) - before[op]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", op, n))
		}
	}
	return strings.Join(parts, ", ")
}

// TestLayoutUmount checks that every layout stops with the tools operators
// use. A tree without bounded files has no bind mount, whatever else it
// holds (per-open and per-caller files, knobs, links, dynamic directories):
// a plain umount(8) or fusermount3 -u stops it. A tree with bounded files
// has binds (one for a directory that holds only such files), and
// umount -R stops it. Either way Wait returns, Unmount reports no error and
// no mount is left.
func TestLayoutUmount(t *testing.T) {
	cases := []struct {
		name    string
		bounded bool
		tool    []string
	}{
		{"plain-umount", false, []string{"umount"}},
		{"plain-fusermount3", false, []string{"fusermount3", "-u"}},
		{"bounded-umount-R", true, []string{"umount", "-R"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := exec.LookPath(c.tool[0]); err != nil {
				testenv.Missing(t, c.tool[0]+" is not installed (apt-get install fuse3 mount)")
			}
			srv := mount(t, fusebridge.Options{})
			for _, p := range []string{"sys/kernel", "proc"} {
				if _, err := srv.MkdirAll(p, 0o555); err != nil {
					t.Fatal(err)
				}
			}
			for path, h := range map[string]any{
				"version":            text("1\n"),
				"sys/kernel/level":   handler.NewInt(3, 0, 7),
				"proc/whoami":        handler.PerCallerGenerated(func(context.Context) ([]byte, error) { return []byte("me\n"), nil }),
				"current":            handler.Link("version"),
				"sys/kernel/running": services{"sshd": "running"},
			} {
				if _, err := srv.Create(path, 0o444, h); err != nil {
					t.Fatal(err)
				}
			}
			if c.bounded {
				var gens atomic.Int64
				for _, p := range []string{"uptime", "sys/kernel/clock", "stat/cpu", "stat/mem"} {
					if dir := filepath.Dir(p); dir != "." {
						if _, err := srv.MkdirAll(dir, 0o555); err != nil {
							t.Fatal(err)
						}
					}
					if _, err := srv.Create(p, 0o444, clockFile(&gens, 0).MaxAge(time.Hour)); err != nil {
						t.Fatal(err)
					}
				}
			}
			mnt := srv.Mountpoint()
			mounts := testenv.MountsUnder(t, mnt)
			switch {
			case !c.bounded && len(mounts) != 1:
				t.Fatalf("a tree without bounded files has mounts %q, want only the directory", mounts)
			case c.bounded && srv.HandlersNoOpen() && len(mounts) != 4:
				// uptime and sys/kernel/clock (beside files that keep
				// OPEN) are bound one by one, stat (only bounded files)
				// as one.
				t.Errorf("a tree with bounded files has mounts %q, want the directory, uptime, sys/kernel/clock and stat", mounts)
			}
			for _, p := range []string{"version", "sys/kernel/level", "proc/whoami", "sys/kernel/running/sshd"} {
				if _, err := os.ReadFile(filepath.Join(mnt, p)); err != nil {
					t.Fatal(err)
				}
			}
			if out, err := exec.Command(c.tool[0], append(c.tool[1:], mnt)...).CombinedOutput(); err != nil {
				t.Fatalf("%s %s: %v: %s", strings.Join(c.tool, " "), mnt, err, out)
			}
			done := make(chan struct{})
			go func() { srv.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatalf("the server did not stop within 20s of %s", strings.Join(c.tool, " "))
			}
			if err := srv.Unmount(); err != nil {
				t.Errorf("Unmount after %s: %v", strings.Join(c.tool, " "), err)
			}
			if got := testenv.MountsUnder(t, mnt); len(got) != 0 {
				t.Errorf("mounts left after %s: %q", strings.Join(c.tool, " "), got)
			}
		})
	}
}

type atomicCounter struct{ n atomic.Int64 }
