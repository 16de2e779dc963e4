package fusebridge_test

import (
	"context"
	"path/filepath"
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

// BenchmarkOpenReadClose prices one open+read-to-EOF+close of a file made
// per open, through a real mount, in time and in allocations (the
// process's: the server's and the one the client's open(2) makes for the
// path): the library's Generated and PerCallerGenerated files beside a
// plain go-fuse file answering the same requests (OPEN, a READ with the
// content, a READ that finds EOF, RELEASE) with no layer in between. The
// difference is the bridge's part of a request (`ramproc bench
// -workloads lib` gives the same split against libfuse's hello_ll).
func BenchmarkOpenReadClose(b *testing.B) {
	testenv.RequireFUSE(b)
	content := []byte("about a hundred bytes of generated text, as a /proc file of one line has ....................\n")
	gen := func(context.Context) ([]byte, error) { return content, nil }
	loop := func(b *testing.B, path string) {
		buf := make([]byte, 128<<10)
		b.ReportAllocs()
		for b.Loop() {
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			for {
				n, err := unix.Read(fd, buf)
				if err != nil {
					b.Fatal(err)
				}
				if n == 0 {
					break
				}
			}
			unix.Close(fd)
		}
	}
	for _, c := range []struct {
		name string
		opts fusebridge.Options
		h    any
	}{
		{"Generated", fusebridge.Options{}, handler.Generated(gen)},
		{"PerCaller", fusebridge.Options{}, handler.PerCallerGenerated(gen)},
		{"Generated-PerOpenPassthrough", fusebridge.Options{PerOpenPassthrough: true}, handler.Generated(gen)},
	} {
		b.Run(c.name, func(b *testing.B) {
			srv, err := fusebridge.Mount(filepath.Join(b.TempDir(), "mnt"), c.opts)
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Unmount()
			if _, err := srv.Create("f", 0o444, c.h); err != nil {
				b.Fatal(err)
			}
			loop(b, filepath.Join(srv.Mountpoint(), "f"))
		})
	}
	b.Run("go-fuse", func(b *testing.B) {
		mnt := b.TempDir()
		root := &fs.Inode{}
		hour := time.Hour // the bridge's timeouts: no LOOKUP or GETATTR per open
		srv, err := fs.Mount(mnt, root, &fs.Options{
			EntryTimeout: &hour,
			AttrTimeout:  &hour,
			MountOptions: fuse.MountOptions{DirectMount: true, DisableSplice: true},
			OnAdd: func(ctx context.Context) {
				root.AddChild("f", root.NewPersistentInode(ctx, &perOpenFile{gen: gen}, fs.StableAttr{Mode: fuse.S_IFREG}), false)
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		defer srv.Unmount()
		loop(b, filepath.Join(mnt, "f"))
	})
}

// perOpenFile is a plain go-fuse file made per open, read with direct
// I/O, with nothing at close: what the bridge does for a Generated file.
type perOpenFile struct {
	fs.Inode
	gen func(context.Context) ([]byte, error)
}

func (f *perOpenFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	b, _ := f.gen(ctx)
	return snapshotFile(b), fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
}

type snapshotFile []byte

func (s snapshotFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(s)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(s[off:min(int(off)+len(dest), len(s))]), 0
}
