package fusebridge

import (
	"encoding/binary"
	"sync"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// This file is the thin fuse.RawFileSystem layer that makes a connection
// restartable (Options.Restartable; handover.go does the restart itself).
//
// go-fuse's fs bridge panics on a node ID or file handle it did not issue,
// and issues file handles of its own choosing. So, between go-fuse's
// server and its bridge, this layer
//
//   - records what the kernel holds: every node ID with its lookup count
//     and the name it was looked up by, every open file handle with its
//     node and open flags, and the passthrough backing ID each handle was
//     given;
//   - gives the kernel file handles of its own, (epoch << 32) | the
//     bridge's handle, where the epoch counts restarts: a handle of this
//     process costs no table look-up, and a handle inherited from an
//     earlier process (another epoch) is mapped to the handle the bridge
//     gave when the handle was opened again here;
//   - answers for nodes the new process could not find again (a vanished
//     dynamic child): ESTALE, and their FORGETs are swallowed;
//   - is a gate: close waits for every request in the bridge to finish
//     and holds every new one before it reaches the bridge, unanswered,
//     which is the clean point at which the state is handed over.
//
// Node IDs need no mapping: a restartable mount uses go-fuse's
// ExternalNodeID, so a node's ID is its inode number, which the new
// process gives the same path again (Server.inheritIno).
type restartFS struct {
	fuse.RawFileSystem // what go-fuse's bridge serves, with counting

	// gate is held for reading by each request in the bridge and for
	// writing while the state is taken; a handed-over connection keeps
	// it closed for good.
	gate sync.RWMutex

	epoch uint64 // restarts before this process, the high half of fh

	mu        sync.Mutex
	nodes     map[uint64]*nodeRec   // node ID -> what the kernel holds
	handles   map[uint64]*handleRec // kernel fh -> open handle
	inherited map[uint64]uint64     // kernel fh of an earlier epoch -> bridge fh
	orphans   map[uint64]uint64     // node ID -> lookups of a node not found again
	// backing maps a node to the passthrough backing ID an earlier
	// process gave the kernel for it. It is given to every later open of
	// the node instead of the bridge's own: while a descriptor uses one
	// backing file the kernel refuses another on the inode (EBUSY). It
	// stays registered for the connection's life, so it is always valid.
	backing map[uint64]int32

	// After a crash (crash.go): strict is set on a connection adopted
	// without its predecessor's tables; crash is the record a keeper
	// holds, keepIDs gives each node a backing ID of its own (on devFd).
	strict   bool
	reopenMu sync.Mutex
	crash    *crashLog
	keepIDs  bool
	devFd    int

	// perop is the connection's per-open passthrough layer (perop.go):
	// its backing IDs are one claim's, never given to the node's later
	// opens by this layer.
	perop *peropFS
}

// nodeRec is one node the kernel holds: looked up n times (not yet
// forgotten), last as name in parent.
type nodeRec struct {
	parent uint64
	name   string
	n      uint64
}

// handleRec is one open file handle of the kernel.
type handleRec struct {
	node    uint64
	flags   uint32
	dir     bool
	backing int32 // the backing ID the kernel was given, 0 for none
	own     int32 // the bridge's backing ID for it, if not that one
	orphan  bool  // its node was not found again: every request fails
	// perOpen: backing is this descriptor's own (content made per open,
	// perop.go), never to be given to another open of the node.
	perOpen bool
}

func newRestartFS(inner fuse.RawFileSystem) *restartFS {
	return &restartFS{
		RawFileSystem: inner,
		nodes:         map[uint64]*nodeRec{},
		handles:       map[uint64]*handleRec{},
		inherited:     map[uint64]uint64{},
		orphans:       map[uint64]uint64{},
		backing:       map[uint64]int32{},
	}
}

func (r *restartFS) enter() { r.gate.RLock() }
func (r *restartFS) exit()  { r.gate.RUnlock() }

// stale reports whether node is one the new process could not find again.
func (r *restartFS) stale(node uint64) bool {
	if node == fuse.FUSE_ROOT_ID {
		return false
	}
	r.mu.Lock()
	_, ok := r.orphans[node]
	if r.strict && !ok {
		// After a crash the kernel may hold node IDs the bridge never
		// issued (a vanished dynamic child); go-fuse would panic on one.
		_, known := r.nodes[node]
		ok = !known
	}
	r.mu.Unlock()
	return ok
}

// kernelFh is the handle the kernel gets for the bridge's fh.
func (r *restartFS) kernelFh(fh uint64) uint64 { return r.epoch<<32 | fh }

// bridgeFh maps a kernel handle to the bridge's; ok is false for a handle
// whose node was not found again.
func (r *restartFS) bridgeFh(kfh uint64) (uint64, bool) {
	if kfh == 0 {
		return 0, true // no handle: a no-open connection's, or a path's
	}
	if kfh>>32 == r.epoch {
		return kfh & 0xffffffff, true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	fh, ok := r.inherited[kfh]
	return fh, ok
}

func (r *restartFS) looked(parent uint64, name string, node uint64) {
	if node == 0 || node == fuse.FUSE_ROOT_ID {
		return
	}
	r.mu.Lock()
	n := r.nodes[node]
	if n == nil {
		n = &nodeRec{}
		r.nodes[node] = n
	}
	n.parent, n.name = parent, name
	n.n++
	r.mu.Unlock()
}

// opened records a handle the bridge gave and returns the kernel's.
func (r *restartFS) opened(node uint64, flags uint32, dir bool, out *fuse.OpenOut) {
	kfh := r.kernelFh(out.Fh)
	h := &handleRec{node: node, flags: flags, dir: dir, backing: out.BackingID}
	h.perOpen = out.BackingID != 0 && r.perop != nil && r.perop.passthrough(out.Fh)
	r.mu.Lock()
	if id, ok := r.backing[node]; ok && out.BackingID != 0 && id != out.BackingID && !h.perOpen {
		h.own, h.backing, out.BackingID = out.BackingID, id, id
	}
	r.handles[kfh] = h
	r.mu.Unlock()
	out.Fh = kfh
}

// released forgets a handle.
func (r *restartFS) released(kfh uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.handles, kfh)
	delete(r.inherited, kfh)
}

// gated runs op inside the gate.
func (r *restartFS) gated(op func() fuse.Status) fuse.Status {
	r.enter()
	defer r.exit()
	return op()
}

// made runs op, which makes or finds name in parent, and records the
// lookup its reply gives the kernel.
func (r *restartFS) made(parent uint64, name string, out *fuse.EntryOut, op func() fuse.Status) fuse.Status {
	if r.stale(parent) {
		return fuse.Status(syscall.ESTALE)
	}
	return r.gated(func() fuse.Status {
		st := op()
		if st == fuse.OK {
			r.looked(parent, name, out.NodeId)
		}
		return st
	})
}

// onNode runs op on node, which fails with ESTALE if node was not found
// again, with the optional handle *fh (there when *flags has bit) mapped
// to the bridge's, or dropped if its node was not found again.
func (r *restartFS) onNode(node uint64, fh *uint64, flags *uint32, bit uint32, op func() fuse.Status) fuse.Status {
	if r.stale(node) {
		return fuse.Status(syscall.ESTALE)
	}
	return r.gated(func() fuse.Status {
		if fh == nil || *flags&bit == 0 {
			return op()
		}
		kfh, kflags := *fh, *flags
		bfh, ok := r.bridgeFh(kfh)
		if !ok {
			*flags &^= bit
			bfh = 0
		}
		*fh = bfh
		defer func() { *fh, *flags = kfh, kflags }()
		return op()
	})
}

func (r *restartFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	return r.made(h.NodeId, name, out, func() fuse.Status { return r.RawFileSystem.Lookup(cancel, h, name, out) })
}

func (r *restartFS) Forget(nodeid, nlookup uint64) {
	r.mu.Lock()
	if left, ok := r.orphans[nodeid]; ok {
		if left <= nlookup {
			delete(r.orphans, nodeid)
		} else {
			r.orphans[nodeid] = left - nlookup
		}
		r.mu.Unlock()
		return
	}
	n := r.nodes[nodeid]
	if n != nil {
		if n.n <= nlookup {
			delete(r.nodes, nodeid)
			if r.strict {
				// After a crash the kernel's count is unknown and may be
				// larger than the bridge's, on which go-fuse would panic;
				// the kernel forgets a node whole when it evicts it.
				nlookup = n.n
			}
		} else {
			n.n -= nlookup
		}
	}
	strict := r.strict
	r.mu.Unlock()
	if strict && n == nil {
		return // a node the bridge never issued
	}
	// Not gated: a FORGET has no reply, so one held would be lost.
	r.RawFileSystem.Forget(nodeid, nlookup)
}

func (r *restartFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	return r.onNode(in.NodeId, &in.Fh_, &in.Flags_, fuse.FUSE_GETATTR_FH, func() fuse.Status { return r.RawFileSystem.GetAttr(cancel, in, out) })
}

func (r *restartFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	return r.onNode(in.NodeId, &in.Fh, &in.Valid, fuse.FATTR_FH, func() fuse.Status { return r.RawFileSystem.SetAttr(cancel, in, out) })
}

func (r *restartFS) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	return r.onNode(in.NodeId, &in.Fh, &in.GetattrFlags, fuse.FUSE_GETATTR_FH, func() fuse.Status { return r.RawFileSystem.Statx(cancel, in, out) })
}

func (r *restartFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	return r.made(in.NodeId, name, out, func() fuse.Status { return r.RawFileSystem.Mknod(cancel, in, name, out) })
}

func (r *restartFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	return r.made(in.NodeId, name, out, func() fuse.Status { return r.RawFileSystem.Mkdir(cancel, in, name, out) })
}

func (r *restartFS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	return r.made(h.NodeId, name, out, func() fuse.Status { return r.RawFileSystem.Symlink(cancel, h, target, name, out) })
}

func (r *restartFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	return r.made(in.NodeId, name, out, func() fuse.Status { return r.RawFileSystem.Link(cancel, in, name, out) })
}

func (r *restartFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return r.onNode(h.NodeId, nil, nil, 0, func() fuse.Status { return r.RawFileSystem.Unlink(cancel, h, name) })
}

func (r *restartFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return r.onNode(h.NodeId, nil, nil, 0, func() fuse.Status { return r.RawFileSystem.Rmdir(cancel, h, name) })
}

func (r *restartFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	return r.onNode(in.NodeId, nil, nil, 0, func() fuse.Status { return r.RawFileSystem.Rename(cancel, in, oldName, newName) })
}

func (r *restartFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) (b []byte, st fuse.Status) {
	st = r.onNode(h.NodeId, nil, nil, 0, func() fuse.Status {
		b, st = r.RawFileSystem.Readlink(cancel, h)
		return st
	})
	return b, st
}

func (r *restartFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	return r.onNode(in.NodeId, nil, nil, 0, func() fuse.Status { return r.RawFileSystem.Access(cancel, in) })
}

func (r *restartFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	return r.made(in.NodeId, name, &out.EntryOut, func() fuse.Status {
		st := r.RawFileSystem.Create(cancel, in, name, out)
		if st == fuse.OK {
			r.opened(out.NodeId, in.Flags, false, &out.OpenOut)
		}
		return st
	})
}

func (r *restartFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return r.open(in, out, false, func() fuse.Status { return r.RawFileSystem.Open(cancel, in, out) })
}

func (r *restartFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return r.open(in, out, true, func() fuse.Status { return r.RawFileSystem.OpenDir(cancel, in, out) })
}

// open runs op, an OPEN or OPENDIR, and records the handle it gives.
func (r *restartFS) open(in *fuse.OpenIn, out *fuse.OpenOut, dir bool, op func() fuse.Status) fuse.Status {
	return r.onNode(in.NodeId, nil, nil, 0, func() fuse.Status {
		st := op()
		if st == fuse.OK {
			r.opened(in.NodeId, in.Flags, dir, out)
		}
		return st
	})
}

// withFh runs op with in's handle mapped to the bridge's, or answers EIO
// for a handle whose node was not found again. After a crash, a handle of
// the dead process is opened again on node with flags (crash.go).
func (r *restartFS) withFh(node uint64, flags uint32, dir bool, fh *uint64, op func() fuse.Status) fuse.Status {
	r.gate.RLock()
	defer r.gate.RUnlock()
	kfh := *fh
	bfh, ok := r.bridgeFh(kfh)
	if !ok && r.strict {
		bfh, ok = r.reopen(node, flags, dir, kfh)
	}
	if !ok {
		return fuse.EIO
	}
	*fh = bfh
	st := op()
	*fh = kfh
	return st
}

func (r *restartFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (res fuse.ReadResult, st fuse.Status) {
	st = r.withFh(in.NodeId, in.Flags, false, &in.Fh, func() fuse.Status {
		res, st = r.RawFileSystem.Read(cancel, in, buf)
		return st
	})
	return res, st
}

func (r *restartFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (n uint32, st fuse.Status) {
	st = r.withFh(in.NodeId, in.Flags, false, &in.Fh, func() fuse.Status {
		n, st = r.RawFileSystem.Write(cancel, in, data)
		return st
	})
	return n, st
}

func (r *restartFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (n uint32, st fuse.Status) {
	st = r.withFh(in.NodeId, in.Flags, false, &in.Fh, func() fuse.Status {
		n, st = r.RawFileSystem.Writev(cancel, in, data)
		return st
	})
	return n, st
}

func (r *restartFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	return r.withFh(in.NodeId, 0, false, &in.Fh, func() fuse.Status { return r.RawFileSystem.Lseek(cancel, in, out) })
}

func (r *restartFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return r.withFh(in.NodeId, 0, false, &in.Fh, func() fuse.Status { return r.RawFileSystem.Flush(cancel, in) })
}

func (r *restartFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return r.withFh(in.NodeId, 0, false, &in.Fh, func() fuse.Status { return r.RawFileSystem.Fsync(cancel, in) })
}

func (r *restartFS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return r.withFh(in.NodeId, 0, true, &in.Fh, func() fuse.Status { return r.RawFileSystem.FsyncDir(cancel, in) })
}

func (r *restartFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	return r.withFh(in.NodeId, 0, false, &in.Fh, func() fuse.Status { return r.RawFileSystem.Fallocate(cancel, in) })
}

func (r *restartFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.withFh(in.NodeId, 0, true, &in.Fh, func() fuse.Status { return r.RawFileSystem.ReadDir(cancel, in, out) })
}

func (r *restartFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	// Counted inside the gate: the state must not be taken between the
	// reply's lookups and their count.
	return r.withFh(in.NodeId, 0, true, &in.Fh, func() fuse.Status {
		st := r.RawFileSystem.ReadDirPlus(cancel, in, out)
		if st == fuse.OK {
			r.countDirPlus(in.NodeId, out.Bytes())
		}
		return st
	})
}

// direntSize is struct fuse_dirent without its name: ino, off, namelen,
// type.
const direntSize = 24

// countDirPlus counts the lookups a READDIRPLUS reply gives the kernel:
// one for every entry with a node ID but "." and "..", which the kernel
// skips without a FORGET (fs/fuse/readdir.c, fuse_direntplus_link).
func (r *restartFS) countDirPlus(parent uint64, buf []byte) {
	entryOut := int(unsafe.Sizeof(fuse.EntryOut{}))
	for len(buf) >= entryOut+direntSize {
		node := binary.NativeEndian.Uint64(buf)
		namelen := int(binary.NativeEndian.Uint32(buf[entryOut+16:]))
		rec := entryOut + direntSize + namelen
		if rec > len(buf) {
			return
		}
		name := string(buf[entryOut+direntSize : rec])
		if name != "." && name != ".." {
			r.looked(parent, name, node)
		}
		buf = buf[min(len(buf), (rec+7)&^7):]
	}
}

func (r *restartFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	kfh := in.Fh
	r.enter()
	defer r.exit()
	bfh, ok := r.bridgeFh(kfh)
	r.released(kfh)
	if !ok {
		return // its node was not found again: the bridge never had it
	}
	c := *in
	c.Fh = bfh
	r.RawFileSystem.Release(cancel, &c)
}

func (r *restartFS) ReleaseDir(in *fuse.ReleaseIn) {
	kfh := in.Fh
	r.enter()
	defer r.exit()
	bfh, ok := r.bridgeFh(kfh)
	r.released(kfh)
	if !ok {
		return
	}
	c := *in
	c.Fh = bfh
	r.RawFileSystem.ReleaseDir(&c)
}

func (r *restartFS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (n uint32, st fuse.Status) {
	r.enter()
	defer r.exit()
	c := *in
	var ok1, ok2 bool
	c.FhIn, ok1 = r.bridgeFh(in.FhIn)
	c.FhOut, ok2 = r.bridgeFh(in.FhOut)
	if !ok1 || !ok2 {
		return 0, fuse.EIO
	}
	return r.RawFileSystem.CopyFileRange(cancel, &c)
}

func (r *restartFS) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	return r.withFh(in.NodeId, 0, false, &in.Fh, func() fuse.Status { return r.RawFileSystem.Ioctl(cancel, in, inbuf, out, outbuf) })
}

func (r *restartFS) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	return r.withFh(in.NodeId, 0, false, &in.Fh, func() fuse.Status { return r.RawFileSystem.GetLk(cancel, in, out) })
}

func (r *restartFS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return r.withFh(in.NodeId, 0, false, &in.Fh, func() fuse.Status { return r.RawFileSystem.SetLk(cancel, in) })
}

func (r *restartFS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return r.withFh(in.NodeId, 0, false, &in.Fh, func() fuse.Status { return r.RawFileSystem.SetLkw(cancel, in) })
}

func (r *restartFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (n uint32, st fuse.Status) {
	st = r.gated(func() fuse.Status {
		n, st = r.RawFileSystem.GetXAttr(cancel, h, attr, dest)
		return st
	})
	return n, st
}

func (r *restartFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (n uint32, st fuse.Status) {
	st = r.gated(func() fuse.Status {
		n, st = r.RawFileSystem.ListXAttr(cancel, h, dest)
		return st
	})
	return n, st
}

func (r *restartFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	return r.gated(func() fuse.Status { return r.RawFileSystem.SetXAttr(cancel, in, attr, data) })
}

func (r *restartFS) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	return r.gated(func() fuse.Status { return r.RawFileSystem.RemoveXAttr(cancel, h, attr) })
}

func (r *restartFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	return r.gated(func() fuse.Status { return r.RawFileSystem.StatFs(cancel, h, out) })
}
