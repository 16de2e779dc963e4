package fusebridge

import (
	"bytes"
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ramproc/ramproc/handler"
)

// fileNode is the kernel's inode for one Entry. Every callback brackets the
// handler call with enter/exit so that removal can wait for it.
type fileNode struct {
	fs.Inode
	e *Entry
	// pages tracks what a no-open connection's kernel may cache of a file
	// that can be written (pagedrop.go); nil for one that cannot, which
	// no WRITE leaves stale pages of (24 bytes less per file of a large
	// tree).
	pages *pageState
}

// openFile is the FUSE file handle of one open(2).
type openFile struct {
	e *Entry
	f handler.OpenFile
	// cached: read from the kernel's page cache (pagecache.go).
	cached bool
	// direct: opened with FOPEN_DIRECT_IO; the READs that would fill
	// pages from it are refused (splice.go).
	direct bool
}

var (
	_ fs.NodeOpener          = (*fileNode)(nil)
	_ fs.NodeReader          = (*fileNode)(nil)
	_ fs.NodeWriter          = (*fileNode)(nil)
	_ fs.NodeLseeker         = (*fileNode)(nil)
	_ fs.NodeReleaser        = (*fileNode)(nil)
	_ fs.NodeFlusher         = (*fileNode)(nil)
	_ fs.NodeFsyncer         = (*fileNode)(nil)
	_ fs.NodeAllocater       = (*fileNode)(nil)
	_ fs.NodeGetattrer       = (*fileNode)(nil)
	_ fs.NodeSetattrer       = (*fileNode)(nil)
	_ fs.FilePassthroughFder = (*openFile)(nil)
)

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	e := n.e
	if e.srv().opts.NoOpen {
		// The kernel remembers ENOSYS for the connection: no OPEN or
		// RELEASE is sent again, and every file is cached as with
		// FOPEN_KEEP_CACHE. Callbacks then carry no file handle and use
		// the entry's shared open file.
		return nil, 0, syscall.ENOSYS
	}
	if !e.enter() {
		// The name was looked up before removal; a new open must fail
		// as if the lookup had come after.
		return nil, 0, syscall.ENOENT
	}
	defer e.exit()
	of := &openFile{e: e, f: handler.OpenFile{Flags: int(flags), Reopened: reopening(ctx)}}
	// A missing callback makes the file unreadable or unwritable at open,
	// as sysfs refuses to open an attribute without show() or store().
	if (of.f.Readable() && e.reader() == nil) || (of.f.Writable() && e.writer() == nil) {
		return nil, 0, syscall.EACCES
	}
	if op := e.opener(); op != nil {
		if err := op.Open(ctx, &of.f); err != nil {
			return nil, 0, handler.Errno(err)
		}
	}
	e.killPrivOpen(ctx, &of.f)
	tracked, sole := e.track(of)
	if !tracked {
		if r := e.releaser(); r != nil {
			r.Release(ctx, &of.f)
		}
		return nil, 0, syscall.ENOENT
	}
	// Generated content must reach every read(2), so it bypasses the page
	// cache, unless this open is given its snapshot's pages (cacheOpen
	// below); a file that changes only through this mount may keep its
	// pages, unless they are one caller's (handler.PerCaller).
	fl := uint32(fuse.FOPEN_DIRECT_IO)
	if of.f.Caching && !e.perCaller {
		fl = fuse.FOPEN_KEEP_CACHE
	}
	if !of.f.Writable() || e.writer() == nil {
		// Nothing to flush at close: no FLUSH request, not even the one
		// that teaches the kernel ENOSYS (see Flush). Writable files keep
		// the kernel's flush, which writes back pages dirtied through
		// mmap and reports their errors at close.
		fl |= fuse.FOPEN_NOFLUSH
	}
	if !sole {
		sole = n.waitSole(e, of) // pagecache.go
	}
	if n.cacheOpen(e, of, sole) {
		return of, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
	}
	if e.snapshotter() != nil && !e.perCaller {
		// Content made whole at open: the kernel may serve this
		// descriptor's reads from a memfd with it (perop.go).
		e.srv().perop.open(ctx, e, of)
	}
	of.direct = fl&fuse.FOPEN_DIRECT_IO != 0
	return of, fl, 0
}

// PassthroughFd is asked by go-fuse right after Open; a descriptor here
// makes the kernel serve read, write and mmap from it without the server.
func (of *openFile) PassthroughFd() (int, bool) {
	bf := of.e.backing()
	if bf == nil || !of.e.srv().passthrough.Load() {
		return -1, false
	}
	fd, ok := bf.BackingFile(&of.f)
	if r := of.e.srv().rs.rfs; ok && r != nil {
		r.keepBacking(of.e.ino, fd) // crash.go
	}
	return fd, ok
}

func (n *fileNode) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	e := n.e
	if !e.enter() {
		return nil, syscall.EIO
	}
	defer e.exit()
	reader := e.reader()
	if reader == nil {
		// The kernel reads through write-only descriptors too, to fill a
		// page cache page before a partial write; procfs answers EIO.
		return nil, syscall.EIO
	}
	if e.srv().opts.NoOpen {
		// Counted before the snapshot is taken: a WRITE that drops it
		// afterwards must see that this READ may cache its text
		// (pagedrop.go).
		n.pages.readStarting()
	}
	if of, ok := f.(*openFile); ok {
		if of.cached {
			return n.cacheRead(of, dest, off)
		}
		if of.direct && e.srv().preads.fills(ctx) {
			// A splice or a fault of a direct-I/O descriptor: its
			// content must not reach the page cache (splice.go).
			return nil, syscall.EINVAL
		}
	}
	of, sh, errno := n.handle(ctx, f)
	if errno != 0 {
		return nil, errno
	}
	defer n.unhandle(sh)
	nr, err := reader.Read(ctx, of, dest, off)
	if err != nil && nr == 0 {
		return nil, handler.Errno(err)
	}
	return fuse.ReadResultData(dest[:nr]), 0
}

func (n *fileNode) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	e := n.e
	if !e.enter() {
		return 0, syscall.EIO
	}
	defer e.exit()
	writer := e.writer()
	if writer == nil {
		return 0, syscall.EIO
	}
	of, sh, errno := n.handle(ctx, f)
	if errno != 0 {
		return 0, errno
	}
	nw, err := writer.Write(e.writeContext(ctx), of, data, off)
	n.unhandle(sh)
	if nw > 0 {
		if sh != nil && !e.exact.Load() {
			// A NoOpen mount serves content that is not byte-exact from
			// the kernel's cache: drop the snapshot, so that any READ
			// answered after this WRITE sees the new content, and the
			// pages the write may have left holding its bytes over the
			// old text before answering, so that no read(2) after
			// write(2) returns sees them (pagedrop.go).
			e.dropShared()
			n.dropWritten(off, len(data))
		}
		// A short count is a short write; the error is what the
		// caller's next write will get.
		return uint32(nw), 0
	}
	if sh != nil && !e.exact.Load() && bytes.IndexByte(data, 0) >= 0 {
		zeroedWrites.Add(1) // pagedrop.go
	}
	n.writebackFailed(ctx)
	if err == nil {
		// Zero bytes and no error would make write(2) return 0,
		// which callers retry forever.
		return 0, syscall.EIO
	}
	return 0, handler.Errno(err)
}

// handle returns the handler's open file for a callback: the descriptor's,
// or nil for path-based calls; on a NoOpen mount the entry's shared one,
// which the caller must pass to releaseShared (sh is nil otherwise).
func (n *fileNode) handle(ctx context.Context, f fs.FileHandle) (of *handler.OpenFile, sh *sharedFile, errno syscall.Errno) {
	if h, ok := f.(*openFile); ok {
		return &h.f, nil, 0
	}
	if !n.e.srv().opts.NoOpen {
		return nil, nil, 0
	}
	sh, errno = n.e.acquireShared(ctx)
	if errno != 0 {
		return nil, nil, errno
	}
	return &sh.f, sh, 0
}

func (n *fileNode) unhandle(sh *sharedFile) {
	if sh != nil {
		n.e.releaseShared(sh)
	}
}

// Lseek is only sent for SEEK_DATA and SEEK_HOLE. It must never answer
// ENOSYS: the kernel would remember that for the whole connection and stop
// asking for every file, including the RAM file that knows its holes.
func (n *fileNode) Lseek(ctx context.Context, f fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	e := n.e
	if !e.enter() {
		return 0, syscall.EIO
	}
	defer e.exit()
	w, err := handler.ParseWhence(int(whence))
	if err != nil {
		return 0, syscall.EINVAL
	}
	of, sh, errno := n.handle(ctx, f)
	if errno != 0 {
		return 0, errno
	}
	defer n.unhandle(sh)
	if ls := e.lseeker(); ls != nil {
		pos, err := ls.Lseek(ctx, of, int64(off), w)
		if err != nil {
			return 0, handler.Errno(err)
		}
		return uint64(pos), 0
	}
	// No Lseeker: the whole file is data, as generic_file_llseek has it.
	var a fuse.Attr
	if errno := e.attr(ctx, &a); errno != 0 {
		return 0, errno
	}
	if int64(off) < 0 || off >= a.Size {
		return 0, syscall.ENXIO
	}
	if w == handler.SeekHole {
		return a.Size, 0
	}
	return off, 0
}

// Flush answers ENOSYS, which the kernel remembers for the connection and
// then never sends FLUSH again: close(2) has nothing to report here (no
// handler buffers writes), and the round trip was a third of the cost of
// an open-read-close cycle.
func (n *fileNode) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno { return syscall.ENOSYS }

func (n *fileNode) Release(ctx context.Context, f fs.FileHandle) syscall.Errno {
	of := f.(*openFile)
	// Removal may have released it already; a handler sees one Release.
	if r := n.e.releaser(); n.e.untrack(of) && r != nil {
		r.Release(ctx, &of.f)
	}
	if of.cached {
		// After untrack: an open waiting for this one's end then finds
		// itself the only open (pagecache.go).
		n.cacheRelease(of)
	}
	return 0
}

func (n *fileNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	e := n.e
	if !e.enter() {
		return syscall.EIO
	}
	defer e.exit()
	fsyncer := e.fsyncer()
	if fsyncer == nil {
		return 0
	}
	of, sh, errno := n.handle(ctx, f)
	if errno != 0 {
		return errno
	}
	defer n.unhandle(sh)
	return handler.Errno(fsyncer.Fsync(ctx, of, flags&fsyncFdatasync != 0))
}

// fsyncFdatasync is FUSE_FSYNC_FDATASYNC in fuse_fsync_in.fsync_flags.
const fsyncFdatasync = 1

// Allocate answers EOPNOTSUPP, not ENOSYS, for handlers without Fallocate:
// ENOSYS would switch fallocate off for the whole connection.
func (n *fileNode) Allocate(ctx context.Context, f fs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	e := n.e
	if !e.enter() {
		return syscall.EIO
	}
	defer e.exit()
	allocator := e.allocator()
	if allocator == nil {
		return syscall.EOPNOTSUPP
	}
	of, sh, errno := n.handle(ctx, f)
	if errno != 0 {
		return errno
	}
	defer n.unhandle(sh)
	return handler.Errno(allocator.Fallocate(ctx, of, mode, int64(off), int64(size)))
}

func (n *fileNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	// A read(2) after a write asks for the attributes first, as the write
	// made them stale; it must not get to the pages before they are
	// dropped (pagedrop.go).
	n.waitDropped()
	e := n.e
	if !e.enter() {
		if pathGetattr(ctx) {
			// Without a file handle: a stat or fstat(2), or the
			// permission check of an open whose lookup came before the
			// removal. It succeeds, as on an unlinked tmpfs file (no
			// link, size 0), so the open goes on to OPEN and gets ENOENT
			// there, never this GETATTR's error; a read through a
			// descriptor opened before still gets EIO.
			e.removedAttr(&out.Attr)
			return 0
		}
		return syscall.EIO
	}
	defer e.exit()
	if of, ok := f.(*openFile); ok && of.cached {
		n.cacheRefresh(ctx, of)
	}
	ttl, errno := e.attrTTL(ctx, &out.Attr)
	out.SetTimeout(ttl)
	return errno
}

func (n *fileNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if errno, ok := n.e.selfNotified(ctx, in, out); ok { // notify.go
		return errno
	}
	e := n.e
	if !e.enter() {
		return syscall.EIO
	}
	defer e.exit()
	var sa handler.SetAttr
	if m, ok := in.GetMode(); ok {
		gm := handler.ModeFromUnix(m)
		sa.Mode = &gm
	}
	if u, ok := in.GetUID(); ok {
		sa.Uid = &u
	}
	if g, ok := in.GetGID(); ok {
		sa.Gid = &g
	}
	if sz, ok := in.GetSize(); ok {
		s := int64(sz)
		sa.Size = &s
	}
	if t, ok := in.GetATime(); ok {
		sa.Atime = &t
	}
	if t, ok := in.GetMTime(); ok {
		sa.Mtime = &t
	}
	if errno := e.killPrivSetattr(ctx, in, &sa); errno != 0 {
		return errno
	}
	if setter := e.setattrer(); setter != nil {
		of, sh, errno := n.handle(ctx, f)
		if errno != 0 {
			return errno
		}
		err := setter.Setattr(ctx, of, &sa)
		n.unhandle(sh)
		if err != nil {
			return handler.Errno(err)
		}
	} else {
		// Without a Setattrer the bridge keeps mode and ownership, like
		// procfs does, and the file cannot be truncated. On a NoOpen mount
		// a size change is ignored instead, as kernfs does: O_TRUNC comes
		// as a SETATTR there, and `echo 1 > knob` must work.
		if sa.Size != nil && !e.srv().opts.NoOpen {
			return syscall.EINVAL
		}
		if sa.Mode != nil {
			e.perm.Store(handler.UnixMode(*sa.Mode))
		}
		if sa.Uid != nil {
			e.uid.Store(*sa.Uid)
		}
		if sa.Gid != nil {
			e.gid.Store(*sa.Gid)
		}
	}
	ttl, errno := e.attrTTL(ctx, &out.Attr)
	out.SetTimeout(e.cacheSetattrTTL(ttl)) // pagecache.go
	return errno
}
