package fusebridge_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// The 100,000-file tree of issue 8: 100 directories of 1,000 generated
// files each, on a passthrough mount with free opens (NoOpenHandlers).
const (
	treeDirs  = 100
	treeFiles = 1000
)

func treeMount(tb testing.TB) *fusebridge.Server {
	tb.Helper()
	testenv.RequireFUSE(tb)
	srv, err := fusebridge.Mount(filepath.Join(tb.TempDir(), "mnt"), fusebridge.Options{NoOpenHandlers: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { srv.Unmount() })
	if !srv.HandlersNoOpen() {
		testenv.Missing(tb, "needs FUSE passthrough (root, Linux >= 6.9)")
	}
	return srv
}

// content100 is 100 bytes of generated content.
var content100 = handler.Generated(func(context.Context) ([]byte, error) {
	return bytes.Repeat([]byte("x"), 99), nil
})

func publishTree(tb testing.TB, srv *fusebridge.Server) {
	tb.Helper()
	for i := range treeDirs {
		d, err := srv.Root().Mkdir(fmt.Sprintf("d%03d", i), 0o555)
		if err != nil {
			tb.Fatal(err)
		}
		for j := range treeFiles {
			if _, err := d.Create("f"+strconv.Itoa(j), 0o444, content100); err != nil {
				tb.Fatal(err)
			}
		}
	}
}

// TestTree100k publishes the tree and counts its mounts: one bind per
// directory, none per file (fs.mount-max is 100,000, so a bind per file
// could not publish it at all). The times are BenchmarkTree's.
func TestTree100k(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := treeMount(t)
	publishTree(t, srv)
	mnt := srv.Mountpoint()
	binds := len(testenv.MountsUnder(t, mnt)) - 1
	if binds > treeDirs {
		t.Errorf("%d bind mounts for %d directories", binds, treeDirs)
	}
	if got := readAt(t, filepath.Join(mnt, "d042/f999")); len(got) != 99 {
		t.Errorf("d042/f999 = %q", got)
	}
	ents, err := os.ReadDir(filepath.Join(mnt, "d099"))
	if err != nil || len(ents) != treeFiles {
		t.Errorf("readdir d099: %d entries, %v", len(ents), err)
	}
	if devOf(t, filepath.Join(mnt, "d000/f0")) == devOf(t, mnt) {
		t.Error("the tree's files are on the main connection")
	}
}

func rssKB(tb testing.TB) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	_, rest, _ := bytes.Cut(b, []byte("VmRSS:"))
	f := strings.Fields(string(rest))
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// BenchmarkTree measures, for the 100,000-file tree on a fresh mount each
// time: publishing it, `ls -R` of it cold, stat(2) of every file cold
// (on another fresh mount, so that ls's READDIRPLUS did not warm it), the
// bind mounts, and the server's RSS growth for the entries (this process
// is the server).
func BenchmarkTree(b *testing.B) {
	for range b.N {
		b.StopTimer()
		rss0 := rssKB(b)
		srv := treeMount(b)
		t0 := time.Now()
		publishTree(b, srv)
		publish := time.Since(t0)
		b.ReportMetric(publish.Seconds(), "s-publish")
		b.ReportMetric(float64(len(testenv.MountsUnder(b, srv.Mountpoint()))-1), "binds")
		b.ReportMetric((rssKB(b)-rss0)/1024, "MB-rss-published")

		t0 = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, "ls", "-R", srv.Mountpoint()).Output()
		cancel()
		lsR := time.Since(t0)
		if err != nil || bytes.Count(out, []byte("\n")) < treeDirs*treeFiles {
			b.Fatalf("ls -R: %d lines, %v", bytes.Count(out, []byte("\n")), err)
		}
		b.ReportMetric(lsR.Seconds(), "s-ls-R")
		b.ReportMetric((rssKB(b)-rss0)/1024, "MB-rss-listed")
		srv.Unmount()

		srv = treeMount(b)
		publishTree(b, srv)
		mnt := srv.Mountpoint()
		paths := make([]string, 0, treeDirs*treeFiles)
		for i := range treeDirs {
			for j := range treeFiles {
				paths = append(paths, fmt.Sprintf("%s/d%03d/f%d", mnt, i, j))
			}
		}
		var st unix.Stat_t
		t0 = time.Now()
		for _, p := range paths {
			if err := unix.Stat(p, &st); err != nil || st.Size != 99 {
				b.Fatalf("stat %s: size %d, %v", p, st.Size, err)
			}
		}
		b.ReportMetric(time.Since(t0).Seconds(), "s-stat-all")
		srv.Unmount()
		b.StartTimer()
	}
}

// openRead100 is the measured operation: open, read up to 100 bytes, close.
func openRead100(b *testing.B, path string, buf []byte) {
	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	if n, err := unix.Read(fd, buf); err != nil || n == 0 {
		b.Fatalf("read %s: %d, %v", path, n, err)
	}
	unix.Close(fd)
}

// pairedRatio runs op on the tmpfs path and on the ramproc path in
// alternating rounds and reports both mean times and the median over the
// rounds of tmpfs's time over ramproc's (1 means as fast as tmpfs; the
// median resists the other jobs of a shared machine).
func pairedRatio(b *testing.B, tmpfsPath, ramPath string) {
	buf := make([]byte, 100)
	const round = 200
	var tTmpfs, tRam time.Duration
	var ratios []float64
	b.ResetTimer()
	for done := 0; done < b.N; done += round {
		n := min(round, b.N-done)
		t0 := time.Now()
		for range n {
			openRead100(b, tmpfsPath, buf)
		}
		t1 := time.Now()
		for range n {
			openRead100(b, ramPath, buf)
		}
		t2 := time.Now()
		tTmpfs += t1.Sub(t0)
		tRam += t2.Sub(t1)
		ratios = append(ratios, float64(t1.Sub(t0))/float64(t2.Sub(t1)))
	}
	sort.Float64s(ratios)
	b.ReportMetric(float64(tTmpfs.Nanoseconds())/float64(b.N), "ns/op-tmpfs")
	b.ReportMetric(float64(tRam.Nanoseconds())/float64(b.N), "ns/op-ramproc")
	b.ReportMetric(ratios[len(ratios)/2], "x-tmpfs")
}

// tmpfsFile makes the tmpfs side of a comparison: a 99-byte file at rel
// below a fresh tmpfs, at the same depth as the ramproc file (each path
// component costs a lookup step).
func tmpfsFile(b *testing.B, rel string) string {
	p := filepath.Join(testenv.Tmpfs(b, "size=1m"), rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(p, bytes.Repeat([]byte("x"), 99), 0o444); err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkTreeOpenRead is open+read 100 B+close of a generated file in
// the 100,000-file tree, next to the same on a tmpfs file (target: >= 0.9x).
func BenchmarkTreeOpenRead(b *testing.B) {
	srv := treeMount(b)
	publishTree(b, srv)
	if _, err := srv.Create("flat", 0o444, content100); err != nil {
		b.Fatal(err)
	}
	b.Run("tree", func(b *testing.B) {
		pairedRatio(b, tmpfsFile(b, "mnt/d050/f500"), filepath.Join(srv.Mountpoint(), "d050/f500"))
	})
	// A file of the top directory, bound by itself: the flat layout.
	b.Run("flat", func(b *testing.B) {
		pairedRatio(b, tmpfsFile(b, "mnt/flat"), filepath.Join(srv.Mountpoint(), "flat"))
	})
}

// rxCounter counts the requests a Debug mount logs.
type rxCounter struct{ n atomic.Int64 }

func (c *rxCounter) Enabled(context.Context, slog.Level) bool { return true }
func (c *rxCounter) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "rx ") {
		c.n.Add(1)
	}
	return nil
}
func (c *rxCounter) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *rxCounter) WithGroup(string) slog.Handler      { return c }

// BenchmarkPerCallerOpenRead is open+read 100 B+close of a per-caller file
// in the tree, next to tmpfs, and the requests each such cycle costs
// (counted on a second, debug-logging mount).
func BenchmarkPerCallerOpenRead(b *testing.B) {
	srv := treeMount(b)
	pc := handler.PerCallerGenerated(func(ctx context.Context) ([]byte, error) {
		c, _ := handler.CallerOf(ctx)
		return fmt.Appendf(nil, "pid %d\n", c.Tid), nil
	})
	if _, err := srv.MkdirAll("a/b", 0o555); err != nil {
		b.Fatal(err)
	}
	if _, err := srv.Create("a/b/me", 0o444, pc); err != nil {
		b.Fatal(err)
	}
	// Round trips, on a separate mount that logs every request.
	count := &rxCounter{}
	dsrv, err := fusebridge.Mount(filepath.Join(b.TempDir(), "dbg"), fusebridge.Options{NoOpenHandlers: true, Debug: true, Logger: slog.New(count)})
	if err != nil {
		b.Fatal(err)
	}
	defer dsrv.Unmount()
	if _, err := dsrv.Create("me", 0o444, pc); err != nil {
		b.Fatal(err)
	}
	dpath := filepath.Join(dsrv.Mountpoint(), "me")
	buf := make([]byte, 100)
	openRead100(b, dpath, buf) // the lookup, and FLUSH's one ENOSYS
	time.Sleep(50 * time.Millisecond)
	const cycles = 200
	before := count.n.Load()
	for range cycles {
		openRead100(b, dpath, buf)
	}
	time.Sleep(50 * time.Millisecond) // RELEASE is sent after close returns
	requests := float64(count.n.Load()-before) / cycles

	pairedRatio(b, tmpfsFile(b, "mnt/a/b/me"), filepath.Join(srv.Mountpoint(), "a/b/me"))
	b.ReportMetric(requests, "requests/cycle")
}
