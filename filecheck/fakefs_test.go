package filecheck_test

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/filecheck"
	"github.com/ramproc/ramproc/internal/testenv"
)

// A FUSE file server for the tests: one RAM file that imitates a tmpfs file
// (sparse pages, fallocated pages that are holes to SEEK_DATA, st_blocks
// counting pages), with switches that break it on purpose.

const pageSize = 4096

// breakage selects deliberate bugs.
type breakage struct {
	// seedModule behaves as the seed's Rust proc file does: a write at
	// offset 0 discards the file first, a write before EOF discards
	// everything after its offset, a write past EOF is EINVAL, SEEK_DATA
	// acts as SEEK_SET and SEEK_HOLE returns the size, and there is no
	// fallocate.
	seedModule bool
	// dirtyTail makes truncation to a size inside a page forget to zero
	// the rest of that page, so that growing the file again brings the
	// old bytes back instead of zeros (whole pages are dropped properly).
	dirtyTail bool
	// directIO answers every OPEN with FOPEN_DIRECT_IO, as a server of
	// generated content does: read(2) and write(2) go to the server, but
	// on Linux 6.18 sendfile(2) and splice(2) still read the page cache
	// (which writes through the kernel keep current).
	directIO bool
	// sizeZero has GETATTR say size 0 whatever the file holds, as /proc
	// files do; with directIO read(2) still returns every byte, and
	// sendfile(2) none (busybox cat prints nothing).
	sizeZero bool
}

type page struct {
	buf      *[pageSize]byte // nil for a fallocated page never written
	uptodate bool            // written (data); false: fallocated (a hole)
}

type memFile struct {
	fs.Inode
	brk breakage

	// While hang is set, writes wait for unhang to close.
	hang   atomic.Bool
	unhang chan struct{}

	mu           sync.Mutex
	pages        map[int64]*page
	size         int64
	mode         uint32
	mtime, ctime time.Time
}

var (
	_ fs.NodeOpener    = (*memFile)(nil)
	_ fs.NodeReader    = (*memFile)(nil)
	_ fs.NodeWriter    = (*memFile)(nil)
	_ fs.NodeGetattrer = (*memFile)(nil)
	_ fs.NodeSetattrer = (*memFile)(nil)
	_ fs.NodeLseeker   = (*memFile)(nil)
	_ fs.NodeAllocater = (*memFile)(nil)
	_ fs.NodeFsyncer   = (*memFile)(nil)
	_ fs.NodeFlusher   = (*memFile)(nil)
)

func newMemFile(b breakage) *memFile {
	now := time.Now()
	return &memFile{brk: b, pages: map[int64]*page{}, mode: 0o644, mtime: now, ctime: now, unhang: make(chan struct{})}
}

func (f *memFile) touch() {
	now := time.Now()
	f.mtime, f.ctime = now, now
}

func (f *memFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if f.brk.directIO {
		return nil, fuse.FOPEN_DIRECT_IO, 0
	}
	return nil, 0, 0
}

func (f *memFile) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

func (f *memFile) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return 0
}

func (f *memFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off >= f.size {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), f.size)
	out := dest[:end-off]
	clear(out)
	for pos := off; pos < end; {
		idx, in := pos/pageSize, pos%pageSize
		n := min(pageSize-in, end-pos)
		if p := f.pages[idx]; p != nil && p.buf != nil {
			copy(out[pos-off:pos-off+n], p.buf[in:in+n])
		}
		pos += n
	}
	return fuse.ReadResultData(out), 0
}

// writeAt stores data at off, allocating pages.
func (f *memFile) writeAt(data []byte, off int64) {
	for pos := off; pos < off+int64(len(data)); {
		idx, in := pos/pageSize, pos%pageSize
		n := min(pageSize-in, off+int64(len(data))-pos)
		p := f.pages[idx]
		if p == nil {
			p = &page{}
			f.pages[idx] = p
		}
		if p.buf == nil {
			p.buf = new([pageSize]byte)
		}
		p.uptodate = true
		copy(p.buf[in:in+n], data[pos-off:pos-off+n])
		pos += n
	}
	f.size = max(f.size, off+int64(len(data)))
}

func (f *memFile) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if f.hang.Load() {
		<-f.unhang
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.brk.seedModule {
		switch {
		case off > f.size:
			return 0, syscall.EINVAL
		case off < f.size:
			f.truncate(off) // offset 0 discards everything
		}
	}
	f.writeAt(data, off)
	if len(data) > 0 {
		f.touch()
	}
	return uint32(len(data)), 0
}

// truncate sets the size as tmpfs does: pages past the end go, and the
// tail of the last page is zeroed.
func (f *memFile) truncate(size int64) {
	if size < f.size {
		last := (size + pageSize - 1) / pageSize
		for idx := range f.pages {
			if idx >= last {
				delete(f.pages, idx)
			}
		}
		if p := f.pages[size/pageSize]; size%pageSize != 0 && p != nil && p.buf != nil && !f.brk.dirtyTail {
			clear(p.buf[size%pageSize:])
		}
	}
	f.size = size
}

func (f *memFile) fillAttr(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | f.mode
	a.Size = uint64(f.size)
	if f.brk.sizeZero {
		a.Size = 0
	}
	a.Blocks = uint64(len(f.pages)) * pageSize / 512
	a.Blksize = pageSize
	a.Nlink = 1
	a.SetTimes(nil, &f.mtime, &f.ctime)
}

func (f *memFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fillAttr(&out.Attr)
	return 0
}

func (f *memFile) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if size, ok := in.GetSize(); ok {
		f.truncate(int64(size))
		f.touch()
	}
	if mode, ok := in.GetMode(); ok {
		f.mode = mode & 0o7777
		f.ctime = time.Now()
	}
	if mt, ok := in.GetMTime(); ok {
		f.mtime = mt
		f.ctime = time.Now()
	}
	f.fillAttr(&out.Attr)
	return 0
}

func (f *memFile) Lseek(ctx context.Context, fh fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := int64(off)
	if f.brk.seedModule {
		if whence == 3 { // SEEK_DATA as SEEK_SET
			return off, 0
		}
		return uint64(f.size), 0
	}
	if o < 0 || o >= f.size {
		return 0, syscall.ENXIO
	}
	isData := func(idx int64) bool { p := f.pages[idx]; return p != nil && p.uptodate }
	if whence == 3 { // SEEK_DATA: the first written page at or after o
		best := int64(-1)
		for idx, p := range f.pages {
			if p.uptodate && idx >= o/pageSize && idx*pageSize < f.size && (best < 0 || idx < best) {
				best = idx
			}
		}
		if best < 0 {
			return 0, syscall.ENXIO
		}
		return uint64(max(o, best*pageSize)), 0
	}
	idx := o / pageSize // SEEK_HOLE: the first page at or after o that is not data
	for isData(idx) {
		idx++
	}
	return uint64(min(max(o, idx*pageSize), f.size)), 0
}

func (f *memFile) Allocate(ctx context.Context, fh fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.brk.seedModule {
		return syscall.EOPNOTSUPP
	}
	o, end := int64(off), int64(off+size)
	switch mode {
	case 0, unix.FALLOC_FL_KEEP_SIZE:
		for idx := o / pageSize; idx*pageSize < end; idx++ {
			switch p := f.pages[idx]; {
			case p == nil:
				f.pages[idx] = &page{}
			case !p.uptodate:
				// tmpfs: fallocating a page fallocated before
				// initializes it, and it turns into data.
				p.buf, p.uptodate = new([pageSize]byte), true
			}
		}
		if mode == 0 && end > f.size {
			f.size = end
		}
	case unix.FALLOC_FL_KEEP_SIZE | unix.FALLOC_FL_PUNCH_HOLE:
		for pos := o; pos < end; {
			idx, in := pos/pageSize, pos%pageSize
			n := min(pageSize-in, end-pos)
			if n == pageSize {
				delete(f.pages, idx)
			} else if p := f.pages[idx]; p != nil && p.buf != nil {
				clear(p.buf[in : in+n])
			}
			pos += n
		}
	default:
		return syscall.EOPNOTSUPP
	}
	f.touch()
	return 0
}

type fakeRoot struct {
	fs.Inode
	file *memFile
}

func (r *fakeRoot) OnAdd(ctx context.Context) {
	ch := r.NewPersistentInode(ctx, r.file, fs.StableAttr{Mode: syscall.S_IFREG})
	r.AddChild("file", ch, false)
}

// mountFakeAt serves a fresh memFile with the given breakage on dir.
func mountFakeAt(dir string, b breakage) (*fuse.Server, *memFile, error) {
	zero := time.Duration(0)
	root := &fakeRoot{file: newMemFile(b)}
	srv, err := fs.Mount(dir, root, &fs.Options{
		MountOptions: fuse.MountOptions{DirectMountStrict: true, FsName: "filecheck-fake", Name: "filecheck"},
		AttrTimeout:  &zero,
		EntryTimeout: &zero,
	})
	return srv, root.file, err
}

// mountFake serves a memFile with the given breakage on a temporary
// directory and returns the file's path. The server runs in this process;
// the checker does its mmap and multi-process work in child processes.
func mountFake(t *testing.T, b breakage) string {
	t.Helper()
	testenv.RequireFUSE(t)
	dir := t.TempDir()
	server, _, err := mountFakeAt(dir, b)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return filepath.Join(dir, "file")
}

// fakeChecks are the checks the fake server is held to: all but the
// permission checks, which need a server that keeps owners and checks
// permissions as the RAM file and tmpfs do (default_permissions, chown,
// setuid clearing); the fake only serves the data.
var fakeChecks = regexp.MustCompile(`^(seed|semantics|random|concurrency|capacity)\b`)

func fakeCheckCount() int {
	n := 0
	for _, name := range filecheck.Names() {
		if fakeChecks.MatchString(name) {
			n++
		}
	}
	return n
}

// runAll runs every check with a fixed seed and logs the report.
func runAll(t *testing.T, path string) *filecheck.Report {
	t.Helper()
	return runConfig(t, filecheck.Config{Path: path, Ops: 1000, Seed: 1, ShrinkTimeout: 5 * time.Second, Run: fakeChecks})
}

// requireFailures checks that exactly the checks in fail failed and all
// others passed (seed/reload and capacity/mmap-beyond are skipped).
func requireFailures(t *testing.T, rep *filecheck.Report, fail ...string) {
	t.Helper()
	want := map[string]filecheck.Status{"seed/reload": filecheck.Skip, "capacity/mmap-beyond": filecheck.Skip}
	for _, f := range fail {
		want[f] = filecheck.Fail
	}
	for _, res := range rep.Results {
		w, ok := want[res.Name]
		if !ok {
			w = filecheck.Pass
		}
		if res.Status != w {
			t.Errorf("%s: %s, want %s (%s)", res.Name, res.Status, w, res.Reason)
		}
	}
	if rep.Failed != len(fail) || rep.Skipped != 2 || rep.Passed != fakeCheckCount()-len(fail)-2 {
		t.Errorf("summary %q does not add up to %d failures", rep.Summary(), len(fail))
	}
}

// requireDiff checks the first difference a failed check reports.
func requireDiff(t *testing.T, rep *filecheck.Report, name, call, file, oracle string) {
	t.Helper()
	res := rep.Result(name)
	if res == nil || res.FirstDiff == nil {
		t.Errorf("%s: no first difference reported: %+v", name, res)
		return
	}
	d := res.FirstDiff
	if !strings.Contains(d.Call, call) || !strings.Contains(d.File, file) || !strings.Contains(d.Oracle, oracle) {
		t.Errorf("%s: first difference %q, want call ~%q, file ~%q, oracle ~%q", name, d, call, file, oracle)
	}
}

// TestFakeFaithful: a careful FUSE server passes every check, so the
// checks demand nothing a FUSE file cannot do (and the kernel's FUSE layer
// in between does not trip them).
func TestFakeFaithful(t *testing.T) {
	path := mountFake(t, breakage{})
	rep, err := filecheck.Run(context.Background(), filecheck.Config{Path: path, Ops: 1000, Seed: 1, Run: fakeChecks})
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	requireAllPass(t, rep, "seed/reload", "capacity/mmap-beyond")
}

// TestFakeSeedModule: a server that behaves as the seed's Rust module does
// fails exactly the checks that touch its deviations, at the step that
// shows them, and passes the rest.
func TestFakeSeedModule(t *testing.T) {
	rep := runAll(t, mountFake(t, breakage{seedModule: true}))
	requireFailures(t, rep,
		"seed/open-options",         // open(O_RDWR) and write "XY" at 0 empties the file
		"seed/write-seek-overwrite", // overwriting the middle cuts the tail
		"seed/concurrent-writes",    // writers that start past EOF get EINVAL
		"semantics/open-trunc",      // a write past EOF (after O_TRUNC elsewhere)
		"semantics/open-append",     // a write through a second fd at 0 truncates
		"semantics/open-creat",      // overwriting "keep me" with "KEEP" cuts it
		"semantics/access-mode",     // the same
		"semantics/pread-pwrite",    // pwrite past EOF: EINVAL
		"semantics/hole",            // no holes
		"semantics/seek",            // write after seeking past EOF: EINVAL
		"semantics/seek-hole",       // SEEK_DATA as SEEK_SET
		"semantics/ftruncate",       // write past EOF after a shrink
		"semantics/fallocate",       // no fallocate
		"semantics/fstat",           // sparse write: EINVAL
		"semantics/times",           // fallocate fails
		"semantics/mmap",            // pwrite in the middle cuts what the mapping wrote
		"semantics/edge-offsets",    // writes near the maximal offset
		"semantics/edge-lengths",    // the 16 MiB write at 1000 cuts the file
		"semantics/o-direct",        // a write in the middle cuts the tail
		"semantics/splice-read",     // overwriting the start empties the rest
		"random",                    // fallocate, at op 2
		"concurrency/pwrite",        // stripes past EOF
	)
	requireDiff(t, rep, "seed/write-seek-overwrite", "fstat(check fd) [size]", "size=110", "size=1000")
	requireDiff(t, rep, "semantics/hole", "pwrite(fd1, 1 bytes \"X\", 10000)", "EINVAL", "1")
	requireDiff(t, rep, "semantics/fallocate", "fallocate(fd1, 0, 0, 10000)", "ENOTSUP", "0")
	requireDiff(t, rep, "semantics/seek-hole", "SEEK_DATA", "EINVAL", "ENXIO")
	if r := rep.Result("random"); r == nil || !strings.Contains(r.Reason, "seed 1:") || len(r.Details) < 2 {
		t.Errorf("random: the failure does not give the seed and the shrunk sequence: %+v", r)
	}
}

// TestFakeDirtyTail: a server that leaves stale bytes past a truncation
// inside a page is caught by the checks that shrink and regrow a file.
func TestFakeDirtyTail(t *testing.T) {
	rep := runAll(t, mountFake(t, breakage{dirtyTail: true}))
	requireFailures(t, rep,
		"semantics/open-append", // ftruncate 2 then 10000
		"semantics/ftruncate",   // ftruncate 5000 then 10000
		"semantics/mmap",        // ftruncate 4000 then 10000, seen through the mapping
		"semantics/splice-read", // ftruncate 5000 then a write at 9000
		"random",
	)
	requireDiff(t, rep, "semantics/ftruncate", "pread(fd1, 10000, 0)", "from byte 5000", "5000×'\\x00'")
	r := rep.Result("random")
	if r == nil || len(r.Details) < 3 || len(r.Details) > 12 {
		t.Errorf("random: want a shrunk sequence of a few operations: %+v", r)
	}
}

// spliceCheck selects the check of sendfile, splice and copy_file_range.
var spliceCheck = regexp.MustCompile(`^semantics/splice-read$`)

// runSplice runs semantics/splice-read alone on path.
func runSplice(t *testing.T, path string) *filecheck.Report {
	t.Helper()
	return runConfig(t, filecheck.Config{Path: path, Run: spliceCheck})
}

// TestFakeDirectIOSizeZero: the deviation found on Linux 6.18. A file
// opened with FOPEN_DIRECT_IO whose size shows 0 gives every byte to
// read(2) and none to sendfile(2): semantics/splice-read must fail at the
// first sendfile of a file that holds something (the one byte of the
// second size; its pread just before passes).
func TestFakeDirectIOSizeZero(t *testing.T) {
	rep := runSplice(t, mountFake(t, breakage{directIO: true, sizeZero: true}))
	requireDiff(t, rep, "semantics/splice-read", "sendfile(pipe, fd4, NULL, 101)", `0, 0 bytes`, `1, 1 bytes, from byte 0: "B"`)
}

// TestFakeDirectIOFaithful: FOPEN_DIRECT_IO alone is no deviation. With
// its size right, a direct-I/O file is spliced from a page cache that every
// write(2), truncation and hole punched through the kernel keeps current,
// and the check passes it: it flags what a reader would see, not how the
// file is served.
func TestFakeDirectIOFaithful(t *testing.T) {
	rep := runSplice(t, mountFake(t, breakage{directIO: true}))
	requireAllPass(t, rep)
	if rep.Passed != 1 {
		t.Errorf("%s, want semantics/splice-read to pass", rep.Summary())
	}
}
