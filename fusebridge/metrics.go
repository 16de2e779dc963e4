package fusebridge

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Op names a FUSE operation, as counted by Metrics.
type Op int

// The operations Metrics counts; every other request is counted as OpOther.
const (
	OpLookup Op = iota
	OpForget
	OpGetattr
	OpSetattr
	OpOpen
	OpCreate
	OpRead
	OpWrite
	OpRelease
	OpFlush
	OpFsync
	OpLseek
	OpFallocate
	OpOpendir
	OpReaddir
	OpReleasedir
	OpStatfs
	OpAccess
	OpXattr
	OpNamespace
	OpOther
	opCount
)

var opNames = [opCount]string{
	OpLookup: "lookup", OpForget: "forget", OpGetattr: "getattr", OpSetattr: "setattr",
	OpOpen: "open", OpCreate: "create", OpRead: "read", OpWrite: "write",
	OpRelease: "release", OpFlush: "flush", OpFsync: "fsync", OpLseek: "lseek",
	OpFallocate: "fallocate", OpOpendir: "opendir", OpReaddir: "readdir",
	OpReleasedir: "releasedir", OpStatfs: "statfs", OpAccess: "access",
	OpXattr: "xattr", OpNamespace: "namespace", OpOther: "other",
}

// String returns the operation's lower-case name ("read", "xattr" for the
// four extended-attribute requests, "namespace" for mknod, mkdir, unlink,
// rmdir, rename, link and symlink).
func (o Op) String() string {
	if o < 0 || o >= opCount {
		return "other"
	}
	return opNames[o]
}

// Ops lists every operation Metrics counts, in a fixed order.
func Ops() []Op {
	list := make([]Op, opCount)
	for i := range list {
		list[i] = Op(i)
	}
	return list
}

// maxErrno bounds the errno table; Linux's errnos are all below it.
const maxErrno = 256

// Metrics counts what a mount's FUSE connections serve: requests by
// operation, failed requests by errno, the bytes read and written through
// this process (passthrough I/O never reaches it) and the file handles
// open. Counting is a few atomic additions per request. The zero value is
// ready to use; every method is safe for concurrent use.
type Metrics struct {
	requests     [opCount]atomic.Uint64
	errors       [maxErrno]atomic.Uint64
	bytesRead    atomic.Uint64
	bytesWritten atomic.Uint64
	openHandles  atomic.Int64
	cachedOpens  atomic.Uint64
}

// Requests returns the number of requests of operation op served so far.
func (m *Metrics) Requests(op Op) uint64 {
	if op < 0 || op >= opCount {
		return 0
	}
	return m.requests[op].Load()
}

// Errors returns the failed requests by errno (only errnos seen).
func (m *Metrics) Errors() map[syscall.Errno]uint64 {
	out := map[syscall.Errno]uint64{}
	for i := range m.errors {
		if n := m.errors[i].Load(); n > 0 {
			out[syscall.Errno(i)] = n
		}
	}
	return out
}

// BytesRead returns the bytes served by READ requests.
func (m *Metrics) BytesRead() uint64 { return m.bytesRead.Load() }

// BytesWritten returns the bytes accepted by WRITE requests.
func (m *Metrics) BytesWritten() uint64 { return m.bytesWritten.Load() }

// CachedOpens returns the opens of content made per open that were read
// from the kernel's page cache, given the snapshot at OPEN (the only open of
// their file at the time; the others are read through READ requests).
func (m *Metrics) CachedOpens() uint64 { return m.cachedOpens.Load() }

// OpenHandles returns the file handles opened (OPEN, CREATE) and not yet
// released. A no-open connection has none: it never opens.
func (m *Metrics) OpenHandles() int64 { return m.openHandles.Load() }

func (m *Metrics) count(op Op, st fuse.Status) {
	m.requests[op].Add(1)
	if st != fuse.OK {
		e := int(st)
		if e < 0 || e >= maxErrno {
			e = maxErrno - 1
		}
		m.errors[e].Add(1)
	}
}

// Metrics returns the counters of s's connections (Options.Metrics, or
// the server's own when that was nil).
func (s *Server) Metrics() *Metrics { return s.opts.Metrics }

// The thread ids of callers whose GETATTR in progress carries no file
// handle (stat, fstat, the permission check of an open), process-wide: a
// thread has one synchronous request at a time, and thread ids are unique.
// Each id has a slot of its own in pathGetattrSlots (its value modulo the
// size) while it is free, which costs a compare-and-swap and a store per
// GETATTR and no allocation; ids that find their slot taken by another
// thread's request go to pathGetattrMore. (A sync.Map alone cost 190 ns
// and two allocations per GETATTR: 2% of a round trip, on the request a
// cached bounded file costs once per bound.)
var (
	pathGetattrSlots [256]atomic.Uint32
	pathGetattrMore  sync.Map // uint32 -> struct{}
	pathGetattrMoreN atomic.Int32
)

// markPathGetattr records that thread pid's GETATTR carries no file
// handle, until unmarkPathGetattr(pid, slotted) with what it returned.
func markPathGetattr(pid uint32) (slotted bool) {
	if pid != 0 && pathGetattrSlots[pid%uint32(len(pathGetattrSlots))].CompareAndSwap(0, pid) {
		return true
	}
	pathGetattrMoreN.Add(1)
	pathGetattrMore.Store(pid, struct{}{})
	return false
}

func unmarkPathGetattr(pid uint32, slotted bool) {
	if slotted {
		pathGetattrSlots[pid%uint32(len(pathGetattrSlots))].Store(0)
		return
	}
	pathGetattrMore.Delete(pid)
	pathGetattrMoreN.Add(-1)
}

// pathGetattr reports whether the GETATTR of ctx carries no file handle.
func pathGetattr(ctx context.Context) bool {
	c, ok := ctx.(*fuse.Context)
	if !ok {
		return false
	}
	pid := c.Caller.Pid
	if pid != 0 && pathGetattrSlots[pid%uint32(len(pathGetattrSlots))].Load() == pid {
		return true
	}
	if pathGetattrMoreN.Load() == 0 {
		return false
	}
	_, found := pathGetattrMore.Load(pid)
	return found
}

// countingFS is the RawFileSystem go-fuse serves: go-fuse's own, with each
// request counted, and STATFS answered for every node as tmpfs would.
// Embedding keeps every method not overridden here as it was.
type countingFS struct {
	fuse.RawFileSystem
	m   *Metrics
	srv *Server
}

func (s *Server) wrapRawFS(fs fuse.RawFileSystem) fuse.RawFileSystem {
	if s.opts.Metrics == nil {
		s.opts.Metrics = new(Metrics)
	}
	return &countingFS{RawFileSystem: fs, m: s.opts.Metrics, srv: s}
}

func (c *countingFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	st := c.RawFileSystem.Lookup(cancel, h, name, out)
	if st == fuse.OK && out.NodeId == 0 {
		// A negative entry: ENOENT to the caller, cached by the kernel.
		c.m.count(OpLookup, fuse.ENOENT)
		return st
	}
	c.m.count(OpLookup, st)
	return st
}

func (c *countingFS) Forget(nodeid, nlookup uint64) {
	c.RawFileSystem.Forget(nodeid, nlookup)
	c.m.count(OpForget, fuse.OK)
}

func (c *countingFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if in.Flags()&fuse.FUSE_GETATTR_FH == 0 {
		// No file handle (stat, fstat, an open's permission check), not
		// a read's refresh through a descriptor: go-fuse hides which (it
		// lends the handler any open file of the node), and a removed
		// entry answers the two differently (fileNode.Getattr).
		pid := in.Caller.Pid
		defer unmarkPathGetattr(pid, markPathGetattr(pid))
	}
	st := c.RawFileSystem.GetAttr(cancel, in, out)
	c.m.count(OpGetattr, st)
	return st
}

func (c *countingFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	st := c.RawFileSystem.SetAttr(cancel, in, out)
	c.m.count(OpSetattr, st)
	return st
}

func (c *countingFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	st := c.RawFileSystem.Mknod(cancel, in, name, out)
	c.m.count(OpNamespace, st)
	return st
}

func (c *countingFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	st := c.RawFileSystem.Mkdir(cancel, in, name, out)
	c.m.count(OpNamespace, st)
	return st
}

func (c *countingFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	st := c.RawFileSystem.Unlink(cancel, h, name)
	c.m.count(OpNamespace, st)
	return st
}

func (c *countingFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	st := c.RawFileSystem.Rmdir(cancel, h, name)
	c.m.count(OpNamespace, st)
	return st
}

func (c *countingFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	st := c.RawFileSystem.Rename(cancel, in, oldName, newName)
	c.m.count(OpNamespace, st)
	return st
}

func (c *countingFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	st := c.RawFileSystem.Link(cancel, in, name, out)
	c.m.count(OpNamespace, st)
	return st
}

func (c *countingFS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	st := c.RawFileSystem.Symlink(cancel, h, target, name, out)
	c.m.count(OpNamespace, st)
	return st
}

func (c *countingFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	st := c.RawFileSystem.Access(cancel, in)
	c.m.count(OpAccess, st)
	return st
}

func (c *countingFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	n, st := c.RawFileSystem.GetXAttr(cancel, h, attr, dest)
	c.m.count(OpXattr, st)
	return n, st
}

func (c *countingFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	n, st := c.RawFileSystem.ListXAttr(cancel, h, dest)
	c.m.count(OpXattr, st)
	return n, st
}

func (c *countingFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	st := c.RawFileSystem.SetXAttr(cancel, in, attr, data)
	c.m.count(OpXattr, st)
	return st
}

func (c *countingFS) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	st := c.RawFileSystem.RemoveXAttr(cancel, h, attr)
	c.m.count(OpXattr, st)
	return st
}

func (c *countingFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	st := c.RawFileSystem.Create(cancel, in, name, out)
	c.m.count(OpCreate, st)
	if st == fuse.OK {
		c.m.openHandles.Add(1)
	}
	return st
}

func (c *countingFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	st := c.RawFileSystem.Open(cancel, in, out)
	c.m.count(OpOpen, st)
	if st == fuse.OK {
		c.m.openHandles.Add(1)
	}
	return st
}

func (c *countingFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if c.srv.preads.start(cancel, in) { // splice.go
		defer c.srv.preads.done(cancel)
	}
	res, st := c.RawFileSystem.Read(cancel, in, buf)
	c.m.count(OpRead, st)
	if st == fuse.OK && res != nil {
		c.m.bytesRead.Add(uint64(res.Size()))
	}
	return res, st
}

func (c *countingFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	st := c.RawFileSystem.Lseek(cancel, in, out)
	c.m.count(OpLseek, st)
	return st
}

func (c *countingFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	c.RawFileSystem.Release(cancel, in)
	c.m.count(OpRelease, fuse.OK)
	c.m.openHandles.Add(-1)
}

// Writev is what go-fuse calls for WRITE; Write only when Writev answers
// ENOSYS, so each WRITE is counted exactly once.
func (c *countingFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	n, st := c.RawFileSystem.Writev(cancel, in, data)
	if st != fuse.ENOSYS {
		c.wrote(n, st)
	}
	return n, st
}

func (c *countingFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	n, st := c.RawFileSystem.Write(cancel, in, data)
	c.wrote(n, st)
	return n, st
}

func (c *countingFS) wrote(n uint32, st fuse.Status) {
	c.m.count(OpWrite, st)
	if st == fuse.OK {
		c.m.bytesWritten.Add(uint64(n))
	}
}

func (c *countingFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	st := c.RawFileSystem.Flush(cancel, in)
	c.m.count(OpFlush, st)
	return st
}

func (c *countingFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	st := c.RawFileSystem.Fsync(cancel, in)
	c.m.count(OpFsync, st)
	return st
}

func (c *countingFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	st := c.RawFileSystem.Fallocate(cancel, in)
	c.m.count(OpFallocate, st)
	return st
}

func (c *countingFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	st := c.RawFileSystem.OpenDir(cancel, in, out)
	c.m.count(OpOpendir, st)
	return st
}

func (c *countingFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	st := c.RawFileSystem.ReadDir(cancel, in, out)
	c.m.count(OpReaddir, st)
	return st
}

func (c *countingFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	st := c.RawFileSystem.ReadDirPlus(cancel, in, out)
	c.m.count(OpReaddir, st)
	return st
}

func (c *countingFS) ReleaseDir(in *fuse.ReleaseIn) {
	c.RawFileSystem.ReleaseDir(in)
	c.m.count(OpReleasedir, fuse.OK)
}

// StatFs answers for every node, not only the root: df and statfs(2) on
// the RAM file itself report the mount's space as on tmpfs.
func (c *countingFS) StatFs(cancel <-chan struct{}, in *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	c.srv.fillStatfs(out)
	c.m.count(OpStatfs, fuse.OK)
	return fuse.OK
}

func (c *countingFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	b, st := c.RawFileSystem.Readlink(cancel, h)
	c.m.count(OpOther, st)
	return b, st
}

func (c *countingFS) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	st := c.RawFileSystem.Statx(cancel, in, out)
	c.m.count(OpGetattr, st)
	return st
}
