package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The baseline server's file names, the same as ramproc's.
const (
	baselineDataName = "ramfile"
	baselineGenName  = "stats"
)

// ServeBaseline mounts the baseline file system on mountpoint and serves it
// until ctx is done, then unmounts it. The baseline is what a go-fuse user
// writes without ramproc: the data file is go-fuse's own fs.MemRegularFile
// (mode 0666, FOPEN_KEEP_CACHE, go-fuse's default mount options and 1 s
// entry and attribute timeouts), and "stats" is a raw go-fuse node that
// generates about 100 bytes of counters on every read (FOPEN_DIRECT_IO),
// the raw equivalent of ramproc's -stats file.
//
// Once mounted it prints the data file's absolute path on out, one line,
// which is ramproc mount's protocol too. It mounts with DirectMount, so it
// needs root and no fusermount.
func ServeBaseline(ctx context.Context, mountpoint string, out io.Writer) error {
	mnt, err := filepath.Abs(mountpoint)
	if err != nil {
		return err
	}
	now := time.Now()
	attr := fuse.Attr{Mode: 0o666, Owner: fuse.Owner{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}}
	attr.SetTimes(&now, &now, &now)
	data := &fs.MemRegularFile{Attr: attr}
	gen := &genFile{start: now}
	root := &fs.Inode{}
	sec := time.Second
	opts := &fs.Options{
		EntryTimeout: &sec,
		AttrTimeout:  &sec,
		MountOptions: fuse.MountOptions{
			DirectMount: true,
			FsName:      "memfile",
			Name:        "ramproc-bench",
		},
		OnAdd: func(ctx context.Context) {
			root.AddChild(baselineDataName, root.NewPersistentInode(ctx, data, fs.StableAttr{Mode: fuse.S_IFREG}), false)
			root.AddChild(baselineGenName, root.NewPersistentInode(ctx, gen, fs.StableAttr{Mode: fuse.S_IFREG}), false)
		},
	}
	server, err := fs.Mount(mnt, root, opts)
	if err != nil {
		return fmt.Errorf("mount baseline on %s: %w", mnt, err)
	}
	if _, err := fmt.Fprintln(out, filepath.Join(mnt, baselineDataName)); err != nil {
		server.Unmount()
		return err
	}
	served := make(chan struct{})
	go func() {
		server.Wait()
		close(served)
	}()
	select {
	case <-served:
		return nil // unmounted from outside
	case <-ctx.Done():
	}
	if err := server.Unmount(); err != nil {
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	<-served
	return nil
}

// genFile is a generated file written against raw go-fuse: every read
// formats the current counters, like a /proc file.
type genFile struct {
	fs.Inode
	start time.Time
	reads atomic.Uint64
}

var (
	_ fs.NodeOpener    = (*genFile)(nil)
	_ fs.NodeReader    = (*genFile)(nil)
	_ fs.NodeGetattrer = (*genFile)(nil)
)

func (g *genFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EACCES
	}
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

// content is about 100 bytes of live counters.
func (g *genFile) content() []byte {
	n := g.reads.Add(1)
	return fmt.Appendf(nil, "reads %d\nuptime_ns %d\npid %d\nserver go-fuse raw node (ramproc bench baseline)\n",
		n, time.Since(g.start).Nanoseconds(), os.Getpid())
}

func (g *genFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	c := g.content()
	if off >= int64(len(c)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(c[off:]), 0
}

func (g *genFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = 0o444
	out.Size = 0 // like /proc: the size is unknown until read
	out.Uid = uint32(os.Getuid())
	out.Gid = uint32(os.Getgid())
	t := g.start
	out.SetTimes(&t, &t, &t)
	return 0
}
