// Package handler is the typed handler API of ramproc: the Go counterpart of
// the kernel's struct proc_ops.
//
// A handler is any Go value. It supports exactly the operations whose small
// interface it implements (Opener, Reader, Writer, Lseeker, Releaser,
// Getattrer, Setattrer, Fsyncer, Allocator, BackingFiler); a missing method
// plays the role of a NULL function pointer in proc_ops and the FUSE bridge
// (package fusebridge) answers with the errno a user of such a file would
// expect:
//
//   - no Reader: open(O_RDONLY/O_RDWR) fails with EACCES, as sysfs does for an
//     attribute without show();
//   - no Writer: open(O_WRONLY/O_RDWR) fails with EACCES (sysfs: no store());
//   - no Lseeker: SEEK_DATA/SEEK_HOLE treat the whole file as data, which is
//     the kernel's generic_file_llseek behaviour;
//   - no Setattrer: chmod is kept by the bridge, O_TRUNC is ignored (as for
//     /proc and /sys files) and truncate(2) fails with EINVAL;
//   - no Allocator: fallocate(2) fails with EOPNOTSUPP;
//   - no Fsyncer: fsync(2) succeeds (there is nothing to flush).
//
// (On a mount that answers OPEN with ENOSYS, fusebridge.Options.NoOpen, and
// for the handler files of a fusebridge.Options.NoOpenHandlers mount, the
// kernel never reports opens: a missing Reader or Writer then fails the
// read(2) or write(2) with EIO, and size changes to a file without
// Setattrer are ignored, as on sysfs.)
//
// Besides files, a tree has symbolic links (Symlinker: Link, LinkFunc,
// SelfLink) and dynamic directories (DirHandler, whose Child values are
// produced on demand), and a file may declare that its content depends on
// the caller (PerCaller, PerCallerGenerated; CallerOf says who calls).
//
// Handlers return errors; an error that is (or wraps) a syscall.Errno is sent
// to the caller as that errno, any other error becomes EIO. Every callback
// may be called concurrently from several goroutines.
package handler

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"time"
)

// OpenFile is the state of one open(2) of an entry: the Go counterpart of
// struct file. The bridge creates it, passes the same pointer to every
// callback made through that file descriptor, and drops it after Release.
type OpenFile struct {
	// Flags are the open(2) flags as the kernel passed them (O_ACCMODE,
	// O_APPEND, O_TRUNC, O_DIRECT, O_SYNC, ...).
	Flags int

	// Private is free for the handler, like file->private_data: Open may
	// store per-descriptor state here (a snapshot of generated content,
	// a cursor, ...).
	Private any

	// Caching, when set by Open, lets the kernel keep the file's pages in
	// its page cache across opens and serve reads from it. Set it only for
	// files whose content changes solely through this mount (like the RAM
	// file); leave it unset for generated content, which must be produced
	// afresh on every read(2), as /proc does.
	Caching bool

	// Reopened is set by the bridge when it opens the file itself on
	// behalf of a descriptor that was opened before a restart (a new
	// server process adopting the mount opens again every descriptor the
	// kernel holds): ctx's caller is then the server, not whoever holds
	// the descriptor. A handler whose content depends on the caller takes
	// it at the first read instead; the snapshot handlers (Generated,
	// PerCallerGenerated) do.
	Reopened bool
}

// Readable reports whether the file was opened for reading.
func (f *OpenFile) Readable() bool {
	acc := f.Flags & syscall.O_ACCMODE
	return acc == syscall.O_RDONLY || acc == syscall.O_RDWR
}

// Writable reports whether the file was opened for writing.
func (f *OpenFile) Writable() bool {
	acc := f.Flags & syscall.O_ACCMODE
	return acc == syscall.O_WRONLY || acc == syscall.O_RDWR
}

// Opener is called for every open(2). It may reject the open with an errno,
// honour flags such as O_TRUNC, and set f.Private or f.Caching.
type Opener interface {
	Open(ctx context.Context, f *OpenFile) error
}

// Reader serves read(2) and pread(2): it fills dst with the bytes at offset
// off and returns how many it filled. Returning fewer than len(dst) bytes
// means end of file (0 at or past the end).
type Reader interface {
	Read(ctx context.Context, f *OpenFile, dst []byte, off int64) (int, error)
}

// Writer serves write(2) and pwrite(2): it stores src at offset off. For a
// file opened with O_APPEND the kernel has already moved off to the end of
// the file. A short count is a short write; a count of 0 with a nil error
// is not allowed (return an errno such as ENOSPC instead).
type Writer interface {
	Write(ctx context.Context, f *OpenFile, src []byte, off int64) (int, error)
}

// Lseeker answers the seeks that depend on the file's content:
// SEEK_DATA and SEEK_HOLE. The kernel resolves SEEK_SET, SEEK_CUR and
// SEEK_END itself from the file size that Getattr reports.
type Lseeker interface {
	Lseek(ctx context.Context, f *OpenFile, off int64, whence Whence) (int64, error)
}

// Releaser is called once when the last descriptor sharing f is closed.
type Releaser interface {
	Release(ctx context.Context, f *OpenFile)
}

// Getattrer fills in the attributes that the handler owns (usually Size,
// Blocks and the times). The bridge has already filled Mode and the
// ownership; a handler that stores its own mode may overwrite it.
type Getattrer interface {
	Getattr(ctx context.Context, a *Attr) error
}

// Setattrer applies chmod(2), truncate(2)/ftruncate(2) and utimensat(2).
// f is the open file for ftruncate and futimens, nil for path-based calls.
// Only the fields of in that are non-nil are to be changed. Afterwards
// the bridge calls Getattr to report the new attributes.
//
// in.Mode also carries the clearing of the setuid and setgid bits that a
// write, truncate, open(O_TRUNC), fallocate or chown by the caller implies
// (the bridge computes it as tmpfs would, also for an open(O_TRUNC), which
// then comes as a Setattr with only Mode): a handler that keeps its own mode
// applies Mode as given.
type Setattrer interface {
	Setattr(ctx context.Context, f *OpenFile, in *SetAttr) error
}

// Fsyncer serves fsync(2) and fdatasync(2).
type Fsyncer interface {
	Fsync(ctx context.Context, f *OpenFile, datasync bool) error
}

// Allocator serves fallocate(2). mode holds the FALLOC_FL_* flags.
type Allocator interface {
	Fallocate(ctx context.Context, f *OpenFile, mode uint32, off, length int64) error
}

// BackingFiler is the zero-cost path: a handler whose bytes already live in
// a real file (a memfd, a tmpfs file) returns that file's descriptor, and
// the kernel then serves read(2), write(2) and mmap(2) on this open file
// directly from it (FUSE passthrough), without calling Reader or Writer.
// Returning ok == false, or running without the privilege that
// passthrough needs, falls back to the Reader and Writer callbacks, so a
// BackingFiler must implement those too.
type BackingFiler interface {
	BackingFile(f *OpenFile) (fd int, ok bool)
}

// OpenSnapshotter is implemented by read-only handlers whose Open takes the
// whole content of the descriptor at once (Generated): OpenSnapshot returns
// what Open took, or ok == false where it took none (OpenFile.Reopened: the
// first read takes it). A bridge may then serve every read(2) of that
// descriptor from a copy of those bytes without calling Read, so that
// open+read+close costs the server one request: fusebridge gives them to
// the kernel's page cache with the OPEN reply (and for a re-read takes a
// new snapshot through a short-lived open of its own, see Generated), or
// with Options.PerOpenPassthrough to a passthrough backing file made at
// open (whose descriptor reads the same bytes until it is closed). The
// returned slice must not be modified afterwards.
//
// PerCallerGenerated does not implement it: where the kernel serves one
// descriptor from a backing file, it maps that file for an mmap(2) of any
// other descriptor of the file open at the same time (see fusebridge).
type OpenSnapshotter interface {
	OpenSnapshot(f *OpenFile) (b []byte, ok bool)
}

// SnapshotSizer is implemented by handlers whose content is a snapshot that
// Open takes (Generated, Value): SnapshotSize reports the snapshot's length.
// A bridge that lets the kernel cache content across opens
// (fusebridge.Options.NoOpen, NoOpenHandlers) reports it as the file's size, because the
// kernel reads no further than the size it knows.
type SnapshotSizer interface {
	SnapshotSize(f *OpenFile) int64
}

// Attr is a file's attributes as stat(2) reports them.
type Attr struct {
	Mode   fs.FileMode // permission bits only; the bridge adds the file type
	Size   int64
	Blocks int64 // 512-byte units, as st_blocks
	Atime  time.Time
	Mtime  time.Time
	Ctime  time.Time
	Uid    uint32
	Gid    uint32
}

// SetAttr lists the attribute changes of one setattr request; nil fields
// are left alone.
type SetAttr struct {
	Mode  *fs.FileMode
	Uid   *uint32
	Gid   *uint32
	Size  *int64
	Atime *time.Time
	Mtime *time.Time
}

// Whence is the origin of an lseek(2): a typed form of SEEK_SET, SEEK_CUR,
// SEEK_END, SEEK_DATA and SEEK_HOLE.
type Whence int

// The lseek(2) origins, with Linux's numbers.
const (
	SeekSet  Whence = 0
	SeekCur  Whence = 1
	SeekEnd  Whence = 2
	SeekData Whence = 3
	SeekHole Whence = 4
)

// ParseWhence converts a raw lseek whence into a Whence. Anything that is
// not one of the five Linux origins is EINVAL, as lseek(2) says.
func ParseWhence(raw int) (Whence, error) {
	if raw < int(SeekSet) || raw > int(SeekHole) {
		return 0, syscall.EINVAL
	}
	return Whence(raw), nil
}

func (w Whence) String() string {
	switch w {
	case SeekSet:
		return "SEEK_SET"
	case SeekCur:
		return "SEEK_CUR"
	case SeekEnd:
		return "SEEK_END"
	case SeekData:
		return "SEEK_DATA"
	case SeekHole:
		return "SEEK_HOLE"
	}
	return fmt.Sprintf("Whence(%d)", int(w))
}

// Errno maps a handler's error to the errno the caller of the syscall
// sees: nil is 0, an error wrapping a syscall.Errno is that errno, the
// context's cancellation (the kernel sent INTERRUPT because the caller got
// a signal) is EINTR, and anything else is EIO, so a handler bug never
// reaches the caller as a misleading success.
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.Canceled) {
		return syscall.EINTR
	}
	return syscall.EIO
}

// UnixMode converts the permission, setuid, setgid and sticky bits of an
// fs.FileMode to their stat(2) form (the low 12 bits of st_mode).
func UnixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= syscall.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		u |= syscall.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		u |= syscall.S_ISVTX
	}
	return u
}

// ModeFromUnix is the inverse of UnixMode: it reads the low 12 bits of a
// stat(2) st_mode into an fs.FileMode.
func ModeFromUnix(u uint32) fs.FileMode {
	m := fs.FileMode(u & 0o777)
	if u&syscall.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if u&syscall.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if u&syscall.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}
