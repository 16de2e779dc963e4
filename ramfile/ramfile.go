// Package ramfile is the RAM file: a handler (package handler) that behaves
// exactly like a regular file on tmpfs, because its bytes live in kernel
// shared memory (package bytestore) and every callback is the matching
// syscall on that memory.
//
// It is written only against the public handler API, as any Go program's
// own file would be. On a mount with FUSE passthrough the kernel serves
// read, write and mmap from the store directly (handler.BackingFiler), and
// the callbacks below only see open, truncate, fallocate, SEEK_DATA/
// SEEK_HOLE and attributes; without passthrough every read and write comes
// through Read and Write.
package ramfile

import (
	"context"
	"math"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/handler"
)

// File is the RAM file handler. All methods are safe for concurrent use.
type File struct {
	store *bytestore.Store
	wb    writeback

	// priv is set while the store's mode has setuid or setgid: only then
	// do the store's own writes need watching (see keepPriv).
	priv atomic.Bool
}

var (
	_ handler.Opener       = (*File)(nil)
	_ handler.Reader       = (*File)(nil)
	_ handler.Writer       = (*File)(nil)
	_ handler.Lseeker      = (*File)(nil)
	_ handler.Getattrer    = (*File)(nil)
	_ handler.Setattrer    = (*File)(nil)
	_ handler.Allocator    = (*File)(nil)
	_ handler.Fsyncer      = (*File)(nil)
	_ handler.BackingFiler = (*File)(nil)
)

// New returns a RAM file keeping its bytes in store. The caller keeps
// ownership of store and closes it after the file is removed or unmounted.
func New(store *bytestore.Store) *File { return &File{store: store} }

// Open applies O_TRUNC (delivered inside OPEN, atomically) and lets the
// kernel cache pages: nothing but this mount changes the store.
func (f *File) Open(ctx context.Context, of *handler.OpenFile) error {
	if of.Flags&syscall.O_TRUNC != 0 {
		if err := f.keepPriv(func() error { return f.store.Truncate(0) }); err != nil {
			return err
		}
		f.wb.reset()
	}
	of.Caching = true
	return nil
}

// Read is pread(2) on the store.
func (f *File) Read(ctx context.Context, of *handler.OpenFile, dst []byte, off int64) (int, error) {
	return f.store.ReadAt(dst, off)
}

// Write is pwrite(2) on the store. For O_APPEND descriptors the kernel has
// already set off to its size of the file, which is exact: every size
// change goes through this mount, under the kernel's inode lock.
func (f *File) Write(ctx context.Context, of *handler.OpenFile, src []byte, off int64) (n int, err error) {
	write := func() (int, error) {
		if isWriteback(ctx) {
			return f.writeBack(src, off)
		}
		n, err := f.store.WriteAt(src, off)
		if n > 0 {
			f.wb.forget(off, int64(n))
		}
		return n, err
	}
	if !f.priv.Load() {
		return write()
	}
	err = f.keepPriv(func() error {
		n, err = write()
		return err
	})
	return n, err
}

// Fsync marks the end of a writeback episode: the kernel sends FSYNC only
// once every page it wrote back was stored (a failed writeback fails
// fsync(2) and msync(2) before that), so what writeback stored up to now
// was reported as stored and is never given up (see writeback.go).
func (f *File) Fsync(ctx context.Context, of *handler.OpenFile, datasync bool) error {
	f.wb.reset()
	return nil
}

// keepPriv runs op, a change of the store's content, and restores the
// setuid and setgid bits if the store's own write cleared them. The kernel
// has already cleared them as tmpfs would, for the caller, in a SETATTR
// before the WRITE (package fusebridge); the store is written with this
// process's credentials, and a server without CAP_FSETID (an unprivileged
// mount) would otherwise lose the bits on a write by root.
func (f *File) keepPriv(op func() error) error {
	if !f.priv.Load() {
		return op()
	}
	before, err := f.store.Stat()
	if err != nil {
		return err
	}
	opErr := op()
	after, err := f.store.Stat()
	if err == nil && after.Mode&0o7777 != before.Mode&0o7777 {
		if err := f.store.Chmod(before.Mode & 0o7777); err != nil {
			return err
		}
	}
	return opErr
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the store's real holes.
func (f *File) Lseek(ctx context.Context, of *handler.OpenFile, off int64, whence handler.Whence) (int64, error) {
	return f.store.Seek(off, int(whence))
}

// Getattr reports the store's own stat: size, blocks, mode, owner and
// times are exactly what tmpfs keeps for the same history of syscalls.
func (f *File) Getattr(ctx context.Context, a *handler.Attr) error {
	st, err := f.store.Stat()
	if err != nil {
		return err
	}
	a.Mode = handler.ModeFromUnix(st.Mode)
	f.priv.Store(st.Mode&(syscall.S_ISUID|syscall.S_ISGID) != 0)
	a.Uid, a.Gid = st.Uid, st.Gid
	a.Size = st.Size
	a.Blocks = st.Blocks
	a.Atime = timespec(st.Atim)
	a.Mtime = timespec(st.Mtim)
	a.Ctime = timespec(st.Ctim)
	return nil
}

// Setattr applies chmod, chown, truncate and utimensat to the store, in the
// order the kernel's notify_change would.
func (f *File) Setattr(ctx context.Context, of *handler.OpenFile, in *handler.SetAttr) error {
	if in.Mode != nil {
		m := handler.UnixMode(*in.Mode)
		if err := f.store.Chmod(m); err != nil {
			return err
		}
		f.priv.Store(m&(syscall.S_ISUID|syscall.S_ISGID) != 0)
	}
	if in.Uid != nil || in.Gid != nil {
		uid, gid := -1, -1
		if in.Uid != nil {
			uid = int(*in.Uid)
		}
		if in.Gid != nil {
			gid = int(*in.Gid)
		}
		if err := unix.Fchown(f.store.Fd(), uid, gid); err != nil {
			return err
		}
	}
	if in.Size != nil {
		if err := f.keepPriv(func() error { return f.store.Truncate(*in.Size) }); err != nil {
			return err
		}
		f.wb.forget(*in.Size, math.MaxInt64-*in.Size)
	}
	if in.Atime != nil || in.Mtime != nil {
		return f.store.SetTimes(in.Atime, in.Mtime)
	}
	return nil
}

// Fallocate is fallocate(2) on the store.
func (f *File) Fallocate(ctx context.Context, of *handler.OpenFile, mode uint32, off, length int64) error {
	err := f.keepPriv(func() error { return f.store.Fallocate(mode, off, length) })
	if err == nil {
		f.wb.forget(off, length)
	}
	return err
}

// BackingFile hands the store to the kernel for passthrough, unless the
// store enforces a capacity in user space (an unprivileged memfd with a
// size limit): then every write must come through Write to be counted.
func (f *File) BackingFile(of *handler.OpenFile) (int, bool) {
	if !f.store.KernelEnforced() {
		return -1, false
	}
	return f.store.Fd(), true
}

func timespec(ts unix.Timespec) time.Time { return time.Unix(ts.Sec, ts.Nsec) }
