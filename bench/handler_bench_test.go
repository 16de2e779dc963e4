package bench

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// The same work served twice, through ramproc's handler API and as raw
// go-fuse nodes, to price the API layer: a 1 MiB file read and written
// through the server (no page cache, no passthrough) and a generated file
// snapshotted at open.

const apiFileSize = 1 << 20

var genCounter atomic.Uint64

// genContent is the generated file's ~100 bytes, the same for both sides.
// The count has a fixed width: the sides take turns on one counter, and the
// smoke test compares the bytes each moved (with -count=3 one side's count
// reached 100 while the other's was 90).
func genContent() []byte {
	return fmt.Appendf(nil, "opens %010d\nunix_ns %d\nserved by the ramproc bench to compare the handler API\n",
		genCounter.Add(1), time.Now().UnixNano())
}

// memHandler is a handler.Reader/Writer/Getattrer over a byte slice.
type memHandler struct {
	mu   sync.RWMutex
	data []byte
}

func (h *memHandler) Read(ctx context.Context, f *handler.OpenFile, dst []byte, off int64) (int, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if off >= int64(len(h.data)) {
		return 0, nil
	}
	return copy(dst, h.data[off:]), nil
}

func (h *memHandler) Write(ctx context.Context, f *handler.OpenFile, src []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if end := off + int64(len(src)); end > int64(len(h.data)) {
		return 0, syscall.EFBIG // fixed size: both sides do no growing
	}
	return copy(h.data[off:], src), nil
}

func (h *memHandler) Getattr(ctx context.Context, a *handler.Attr) error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	a.Size = int64(len(h.data))
	a.Blocks = (a.Size + 511) / 512
	return nil
}

// rawMem is memHandler as a raw go-fuse node.
type rawMem struct {
	fs.Inode
	mu   sync.RWMutex
	data []byte
}

var (
	_ fs.NodeOpener    = (*rawMem)(nil)
	_ fs.NodeReader    = (*rawMem)(nil)
	_ fs.NodeWriter    = (*rawMem)(nil)
	_ fs.NodeGetattrer = (*rawMem)(nil)
)

func (n *rawMem) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (n *rawMem) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if off >= int64(len(n.data)) {
		return fuse.ReadResultData(nil), 0
	}
	k := copy(dest, n.data[off:])
	return fuse.ReadResultData(dest[:k]), 0
}

func (n *rawMem) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if end := off + int64(len(data)); end > int64(len(n.data)) {
		return 0, syscall.EFBIG
	}
	return uint32(copy(n.data[off:], data)), 0
}

func (n *rawMem) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.mu.RLock()
	defer n.mu.RUnlock()
	out.Mode = 0o666
	out.Size = uint64(len(n.data))
	out.Blocks = (out.Size + 511) / 512
	return 0
}

// rawGen is handler.Generated(genContent) as a raw go-fuse node: the
// content is made at open and kept in the file handle.
type rawGen struct{ fs.Inode }

type genHandle struct{ content []byte }

func (n *rawGen) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EACCES
	}
	// Nothing to flush at close, as fusebridge answers a read-only open:
	// without it every close(2) would be a FLUSH round trip here only.
	return &genHandle{content: genContent()}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
}

func (n *rawGen) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	c := fh.(*genHandle).content
	if off >= int64(len(c)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(c[off:]), 0
}

func (n *rawGen) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = 0o444
	return 0
}

// apiMounts mounts both sides and returns their directories.
func apiMounts(tb testing.TB) (handlerDir, rawDir string) {
	tb.Helper()
	testenv.RequireFUSE(tb)
	handlerDir = filepath.Join(tb.TempDir(), "handler")
	srv, err := fusebridge.Mount(handlerDir, fusebridge.Options{Passthrough: fusebridge.PassthroughOff})
	if err != nil {
		tb.Fatalf("fusebridge.Mount: %v", err)
	}
	tb.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			tb.Errorf("unmount %s: %v", handlerDir, err)
		}
	})
	if _, err := srv.Create("data", 0o666, &memHandler{data: make([]byte, apiFileSize)}); err != nil {
		tb.Fatal(err)
	}
	if _, err := srv.Create("gen", 0o444, handler.Generated(func(context.Context) ([]byte, error) {
		return genContent(), nil
	})); err != nil {
		tb.Fatal(err)
	}

	// The raw side with the mount options fusebridge uses, so only the
	// API layer differs.
	rawDir = tb.TempDir()
	hour := time.Hour
	root := &fs.Inode{}
	server, err := fs.Mount(rawDir, root, &fs.Options{
		EntryTimeout:    &hour,
		AttrTimeout:     &hour,
		NegativeTimeout: &hour,
		MountOptions: fuse.MountOptions{
			DirectMount:       true,
			FsName:            "rawgofuse",
			Name:              "ramproc-bench",
			DisableXAttrs:     true,
			MaxWrite:          1 << 20,
			Options:           []string{"default_permissions"},
			ExtraCapabilities: fuse.CAP_ATOMIC_O_TRUNC,
			DisableSplice:     true,
		},
		OnAdd: func(ctx context.Context) {
			root.AddChild("data", root.NewPersistentInode(ctx, &rawMem{data: make([]byte, apiFileSize)}, fs.StableAttr{Mode: fuse.S_IFREG}), false)
			root.AddChild("gen", root.NewPersistentInode(ctx, &rawGen{}, fs.StableAttr{Mode: fuse.S_IFREG}), false)
		},
	})
	if err != nil {
		tb.Fatalf("go-fuse mount: %v", err)
	}
	tb.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			tb.Errorf("unmount %s: %v", rawDir, err)
		}
	})
	return handlerDir, rawDir
}

// apiOps are the operations compared; each does one operation on dir
// (the fd is the data file opened O_RDWR) and returns the bytes moved.
var apiOps = []struct {
	name string
	op   func(dir string, fd int, buf []byte, i int) (int, error)
}{
	{"open-read100-close", func(dir string, fd int, buf []byte, i int) (int, error) {
		return openReadClose(filepath.Join(dir, "gen"), buf[:100])
	}},
	{"open-read-to-EOF-close", func(dir string, fd int, buf []byte, i int) (int, error) {
		return openReadToEOFClose(filepath.Join(dir, "gen"), buf[:128<<10])
	}},
	{"pread-4k", func(dir string, fd int, buf []byte, i int) (int, error) {
		return unix.Pread(fd, buf[:4096], int64(i*4096%apiFileSize))
	}},
	{"pwrite-4k", func(dir string, fd int, buf []byte, i int) (int, error) {
		return unix.Pwrite(fd, buf[:4096], int64(i*4096%apiFileSize))
	}},
}

// BenchmarkHandlerVsRaw reports ns/op of each operation through the
// handler API and through raw go-fuse nodes; the difference is the API's
// cost. Both servers run in the benchmark's process, so ns/op is the whole
// round trip: client syscall, kernel, server, reply, and allocs/op are the
// process's (the servers', and the one open(2) makes for its path).
// open-read-to-EOF-close is what cat does: OPEN, a READ with the content,
// a READ that finds EOF, and the asynchronous RELEASE.
func BenchmarkHandlerVsRaw(b *testing.B) {
	handlerDir, rawDir := apiMounts(b)
	buf, err := newBuffer(1)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(buf)
	for _, o := range apiOps {
		for _, side := range []struct{ name, dir string }{{"handler", handlerDir}, {"raw", rawDir}} {
			b.Run(o.name+"/"+side.name, func(b *testing.B) {
				fd, err := unix.Open(filepath.Join(side.dir, "data"), unix.O_RDWR|unix.O_CLOEXEC, 0)
				if err != nil {
					b.Fatal(err)
				}
				defer unix.Close(fd)
				i := 0
				b.ReportAllocs()
				for b.Loop() {
					if n, err := o.op(side.dir, fd, buf, i); err != nil || n <= 0 {
						b.Fatalf("%s: %d, %v", o.name, n, err)
					}
					i++
				}
			})
		}
	}
}

// TestHandlerVsRawSmoke runs every operation of the benchmark a few times
// on both sides and checks they do the same work.
func TestHandlerVsRawSmoke(t *testing.T) {
	handlerDir, rawDir := apiMounts(t)
	buf, err := newBuffer(1)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	for _, o := range apiOps {
		var got [2]int
		for k, dir := range []string{handlerDir, rawDir} {
			fd, err := unix.Open(filepath.Join(dir, "data"), unix.O_RDWR|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 10 {
				n, err := o.op(dir, fd, buf, i)
				if err != nil {
					t.Errorf("%s on %s: %v", o.name, dir, err)
				}
				got[k] = n
			}
			unix.Close(fd)
		}
		if got[0] != got[1] || got[0] <= 0 {
			t.Errorf("%s: handler side moved %d bytes, raw side %d", o.name, got[0], got[1])
		}
	}
	// Both generated files say the same kind of thing.
	for _, dir := range []string{handlerDir, rawDir} {
		n, err := openReadClose(filepath.Join(dir, "gen"), buf[:100])
		if err != nil || !bytes.HasPrefix(buf[:n], []byte("opens ")) {
			t.Errorf("%s/gen: %q, %v", dir, buf[:n], err)
		}
	}
}

// openReadToEOFClose opens path, reads it to EOF into buf and closes it,
// as cat does; it returns the bytes read.
func openReadToEOFClose(path string, buf []byte) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	total := 0
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, nil
		}
		total += n
	}
}
