package fusebridge_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// The footprint of a published file: the heap a server holds per file of
// a tree of bounded generated files once every file has been read, next to
// a plain go-fuse server of the same tree in the same process (issue 14;
// ramproc bench -workloads lib shows the servers' RSS on 100,000 files).

// footprintDirs spreads a footprint tree's files over directories, as the
// bench's tree does.
const footprintDirs = 100

func footprintName(i int) string { return fmt.Sprintf("tree/d%03d/f%06d", i%footprintDirs, i) }

// heapInUse is the live heap after two collections (the second empties
// what sync.Pools kept through the first).
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// perFileHeap publishes and reads files [0, n/2), takes the heap, then
// does the same for [n/2, n): the difference per file of the second half
// is what one more file costs, without what a server holds whatever its
// size (request buffers, its first directories).
func perFileHeap(tb testing.TB, n int, publish func(i int), path func(i int) string) float64 {
	tb.Helper()
	buf := make([]byte, 4096)
	half := func(from, to int) {
		for i := from; i < to; i++ {
			publish(i)
		}
		for i := from; i < to; i++ {
			fd, err := unix.Open(path(i), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				tb.Fatal(err)
			}
			k, err := unix.Read(fd, buf)
			unix.Close(fd)
			if err != nil || k == 0 {
				tb.Fatalf("read %s: %d bytes, %v", path(i), k, err)
			}
		}
	}
	half(0, n/2)
	before := heapInUse()
	half(n/2, n)
	return float64(int64(heapInUse())-int64(before)) / float64(n-n/2)
}

// libFootprint is perFileHeap for a fusebridge tree in the default layout,
// bounded files as the bench's (their bound long enough that none is
// regenerated while the test runs), on srv.
func libFootprint(tb testing.TB, srv *fusebridge.Server, n int) float64 {
	return perFileHeap(tb, n, func(i int) {
		name := footprintName(i)
		if i < footprintDirs {
			if _, err := srv.MkdirAll(filepath.Dir(name), 0o555); err != nil {
				tb.Fatal(err)
			}
		}
		content := []byte(name + "\n")
		g := handler.Generated(func(context.Context) ([]byte, error) { return content, nil })
		if _, err := srv.Create(name, 0o444, g.MaxAge(time.Hour)); err != nil {
			tb.Fatal(err)
		}
	}, func(i int) string { return filepath.Join(srv.Mountpoint(), footprintName(i)) })
}

// goFuseFootprint is perFileHeap for a plain go-fuse server of the same
// tree (fs.MemRegularFile nodes with the same bytes, as the bench's
// ServeGoFuseTree), mounted below dir.
func goFuseFootprint(tb testing.TB, dir string, n int) float64 {
	mnt := filepath.Join(dir, "gofuse")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		tb.Fatal(err)
	}
	root := &fs.Inode{}
	sec := time.Second
	srv, err := fs.Mount(mnt, root, &fs.Options{EntryTimeout: &sec, AttrTimeout: &sec,
		MountOptions: fuse.MountOptions{DirectMount: true, FsName: "gofuse-tree", Name: "ramproc-test"}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { srv.Unmount() })
	ctx := context.Background()
	top := root.NewPersistentInode(ctx, &fs.Inode{}, fs.StableAttr{Mode: fuse.S_IFDIR})
	root.AddChild("tree", top, false)
	dirs := make([]*fs.Inode, footprintDirs)
	now := time.Now()
	attr := fuse.Attr{Mode: 0o444}
	attr.SetTimes(&now, &now, &now)
	return perFileHeap(tb, n, func(i int) {
		d := i % footprintDirs
		if dirs[d] == nil {
			dirs[d] = top.NewPersistentInode(ctx, &fs.Inode{}, fs.StableAttr{Mode: fuse.S_IFDIR})
			top.AddChild(fmt.Sprintf("d%03d", d), dirs[d], false)
		}
		name := footprintName(i)
		f := &fs.MemRegularFile{Data: []byte(name + "\n"), Attr: attr}
		dirs[d].AddChild(filepath.Base(name), dirs[d].NewPersistentInode(ctx, f, fs.StableAttr{Mode: fuse.S_IFREG}), false)
	}, func(i int) string { return filepath.Join(mnt, footprintName(i)) })
}

// footprintLimit is the most heap per file the test lets a published file
// hold, as a multiple of go-fuse's: today's 1.37-1.47x (on 6,000 files;
// 1.5-1.8x before a directory's children were a table of entries and an
// entry found its twin instead of keeping it, 2.0-2.1x before the two
// connections' entries shared a core, 2.5x before issue 14's cuts) with
// room for the collector's noise, so that a regression fails. Issue 14's
// target is 1.5x of the server's RSS; see docs/bench.md for what is left
// per file.
const footprintLimit = 1.7

// TestEntryFootprint holds the heap per published, read file to
// footprintLimit times a plain go-fuse server's (about 820 B against
// 570 B), and counts the requests a
// cold read of a bounded file costs on the no-open connection: its LOOKUP
// and one READ (a GETATTR more, or an OPEN, would be a regression of the
// catall row of ramproc bench -workloads lib).
func TestEntryFootprint(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := mount(t, fusebridge.Options{})
	if !srv.HandlersNoOpen() {
		testenv.Missing(t, "bounded files are served by a no-open connection only on a mount made by root")
	}
	const n = 6000
	m := srv.Metrics()
	var before [3]uint64
	ops := []fusebridge.Op{fusebridge.OpLookup, fusebridge.OpGetattr, fusebridge.OpRead}
	for k, op := range ops {
		before[k] = m.Requests(op)
	}
	lib := libFootprint(t, srv, n)
	gofuse := goFuseFootprint(t, t.TempDir(), n)
	t.Logf("heap per published and read file: fusebridge %.0f B, go-fuse %.0f B (%.2fx)", lib, gofuse, lib/gofuse)
	if lib > footprintLimit*gofuse {
		t.Errorf("a published file holds %.0f bytes of heap, %.2fx go-fuse's %.0f; want at most %.1fx", lib, lib/gofuse, gofuse, footprintLimit)
	}
	// Each file was looked up and read once; the directories add a
	// lookup each.
	for k, op := range ops {
		got := float64(m.Requests(op)-before[k]) / n
		want := map[fusebridge.Op]float64{fusebridge.OpLookup: 1.02, fusebridge.OpGetattr: 0.01, fusebridge.OpRead: 1}[op]
		if got > want {
			t.Errorf("%v requests per cold read of a bounded file: %.3f, want at most %.2f", op, got, want)
		}
	}
}

// BenchmarkEntryFootprint reports the heap per published, read file of a
// 100,000-file tree and go-fuse's, and their ratio.
func BenchmarkEntryFootprint(b *testing.B) {
	const n = 100000
	for range b.N {
		b.StopTimer()
		testenv.RequireFUSE(b)
		srv, err := fusebridge.Mount(filepath.Join(b.TempDir(), "mnt"), fusebridge.Options{})
		if err != nil {
			b.Fatal(err)
		}
		lib := libFootprint(b, srv, n)
		srv.Unmount()
		gofuse := goFuseFootprint(b, b.TempDir(), n)
		b.ReportMetric(lib, "B/file")
		b.ReportMetric(gofuse, "B/file-gofuse")
		b.ReportMetric(lib/gofuse, "x-gofuse")
	}
}
