package fusebridge_test

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// fixedProc is a dynamic directory like /proc: a fixed "meminfo" beside
// per-process names ("1").
type fixedProc struct{}

func (fixedProc) Lookup(ctx context.Context, name string) (handler.Child, error) {
	switch name {
	case "meminfo":
		return handler.Child{Name: name, Mode: 0o444, Node: text("MemTotal: 1 kB\n"), Fixed: true}, nil
	case "1":
		return handler.Child{Name: name, Mode: 0o444, Node: text("init\n")}, nil
	}
	return handler.Child{}, syscall.ENOENT
}

func (p fixedProc) List(ctx context.Context) ([]handler.Child, error) {
	a, _ := p.Lookup(ctx, "meminfo")
	b, _ := p.Lookup(ctx, "1")
	return []handler.Child{a, b}, nil
}

// TestRoundTrips counts, with the bridge's own counters, the requests one
// open+read-to-EOF+close costs for each kind of file, so that a regression
// fails: a bounded file none (cached); content made per open OPEN, one
// READ with the content and one that finds EOF (direct I/O: the kernel
// cannot know the size of what is made at open), and the asynchronous
// RELEASE; no FLUSH (FOPEN_NOFLUSH), no LOOKUP for a static name or a
// fixed child of a dynamic directory, a LOOKUP and a GETATTR for any other
// child of a dynamic directory. With Options.PerOpenPassthrough, a
// Generated file made per open costs OPEN and RELEASE only (read from a
// backing file made at OPEN), a per-caller file as before.
func TestRoundTrips(t *testing.T) {
	t.Run("forwarded", func(t *testing.T) { testRoundTrips(t, false) })
	t.Run("PerOpenPassthrough", func(t *testing.T) { testRoundTrips(t, true) })
}

func testRoundTrips(t *testing.T, perOpen bool) {
	srv := mount(t, fusebridge.Options{PerOpenPassthrough: perOpen})
	if perOpen && !srv.Passthrough() {
		testenv.Missing(t, "needs FUSE passthrough (root, Linux >= 6.9)")
	}
	if _, err := srv.MkdirAll("sys", 0o555); err != nil {
		t.Fatal(err)
	}
	var gens atomicCounter
	files := map[string]any{
		"sys/gen":     text("hello\n"),
		"sys/caller":  handler.PerCallerGenerated(func(context.Context) ([]byte, error) { return []byte("me\n"), nil }),
		"sys/bounded": clockFile(&gens.n, 0).MaxAge(time.Hour),
		"proc":        fixedProc{},
	}
	for p, h := range files {
		if _, err := srv.Create(p, 0o555, h); err != nil {
			t.Fatal(err)
		}
	}
	perOpenCost := map[fusebridge.Op]uint64{fusebridge.OpOpen: 1, fusebridge.OpRead: 2, fusebridge.OpRelease: 1}
	// A child that is not fixed has attributes that expire at once, so
	// default_permissions' check asks for them again after the lookup.
	withLookup := map[fusebridge.Op]uint64{fusebridge.OpLookup: 1, fusebridge.OpGetattr: 1, fusebridge.OpOpen: 1, fusebridge.OpRead: 2, fusebridge.OpRelease: 1}
	generated, childLookup := perOpenCost, withLookup
	if perOpen {
		generated = map[fusebridge.Op]uint64{fusebridge.OpOpen: 1, fusebridge.OpRelease: 1}
		childLookup = map[fusebridge.Op]uint64{fusebridge.OpLookup: 1, fusebridge.OpGetattr: 1, fusebridge.OpOpen: 1, fusebridge.OpRelease: 1}
	}
	cases := []struct {
		path string
		want map[fusebridge.Op]uint64
	}{
		{"sys/gen", generated},
		{"sys/caller", perOpenCost},
		{"proc/meminfo", generated},
		{"proc/1", childLookup},
		{"sys/bounded", nil},
	}
	if !srv.HandlersNoOpen() {
		cases = cases[:len(cases)-1] // generated per open without the no-open connection
	}
	m := srv.Metrics()
	const rounds = 50
	for _, c := range cases {
		name := filepath.Join(srv.Mountpoint(), c.path)
		cycle := func() {
			fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatalf("open %s: %v", c.path, err)
			}
			buf := make([]byte, 128<<10)
			for {
				n, err := unix.Read(fd, buf)
				if err != nil {
					t.Fatalf("read %s: %v", c.path, err)
				}
				if n == 0 {
					break
				}
			}
			unix.Close(fd)
			if perOpen {
				// An open made before the RELEASE of the one before is
				// served through the server (its inode still has that
				// one's backing file): the counts would depend on timing.
				settle(t, m)
			}
		}
		// Warm: the first walk looks the names up, the first READ of a
		// cached file fills the page cache.
		cycle()
		cycle()
		settle(t, m)
		before := snapshotOps(m)
		for range rounds {
			cycle()
		}
		settle(t, m)
		for _, op := range fusebridge.Ops() {
			got := m.Requests(op) - before[op]
			if want := c.want[op] * rounds; got != want {
				t.Errorf("%s: %d open+read+close cost %s; want per cycle %v", c.path, rounds, opsSince(m, before), c.want)
				break
			}
		}
	}
}

// settle waits until every RELEASE the kernel sends after close(2)
// (asynchronously) has been served.
func settle(t *testing.T, m *fusebridge.Metrics) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for m.OpenHandles() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d file handles still open 30s after close", m.OpenHandles())
		}
		time.Sleep(time.Millisecond)
	}
}
