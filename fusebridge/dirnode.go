package fusebridge

import (
	"context"
	"encoding/binary"
	"sort"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ramproc/ramproc/handler"
)

// dirNode is the kernel's inode for one Dir. Names are published only
// through the Go API, so every namespace change from a syscall fails with
// the errno that /proc gives for it (measured on /proc: creating a name is
// ENOENT, unlinking a file or link EPERM and a directory EISDIR, rmdir of a
// directory EPERM and of anything else ENOTDIR; an existing name is EEXIST,
// which the kernel answers itself).
type dirNode struct {
	fs.Inode
	d *Dir
}

var (
	_ fs.NodeLookuper       = (*dirNode)(nil)
	_ fs.NodeOpendirHandler = (*dirNode)(nil)
	_ fs.NodeGetattrer      = (*dirNode)(nil)
	_ fs.NodeSetattrer      = (*dirNode)(nil)
	_ fs.NodeCreater        = (*dirNode)(nil)
	_ fs.NodeMkdirer        = (*dirNode)(nil)
	_ fs.NodeMknoder        = (*dirNode)(nil)
	_ fs.NodeSymlinker      = (*dirNode)(nil)
	_ fs.NodeLinker         = (*dirNode)(nil)
	_ fs.NodeRenamer        = (*dirNode)(nil)
	_ fs.NodeUnlinker       = (*dirNode)(nil)
	_ fs.NodeRmdirer        = (*dirNode)(nil)
	_ fs.FileReaddirenter   = (*dirHandle)(nil)
	_ fs.FileSeekdirer      = (*dirHandle)(nil)
	_ fs.FileLookuper       = (*dirHandle)(nil)
	_ fs.FileReleasedirer   = (*dirHandle)(nil)
	_ fs.NodeReadlinker     = (*linkNode)(nil)
	_ fs.NodeGetattrer      = (*linkNode)(nil)
)

// The bridge sets every entry and attribute timeout itself (go-fuse's
// defaults would turn a zero into the mount's long timeout): the mount's
// AttrTimeout for static names, zero for the children of a dynamic
// directory, so that every path walk and stat(2) asks its handler, as
// /proc/<pid> revalidates. A failed lookup in a dynamic directory carries a
// nonzero timeout only so that go-fuse does not turn it into a cached
// negative entry; the kernel caches no error.

// timeout is how long the kernel may trust the names and attributes of
// the children of d.
func (d *Dir) timeout() time.Duration {
	if d.dyn != nil {
		return 0
	}
	return d.srv.opts.AttrTimeout
}

// attrTimeout is how long the kernel may trust d's own attributes.
func (d *Dir) attrTimeout() time.Duration {
	if d.parent == nil {
		return d.srv.opts.AttrTimeout
	}
	return d.self.timeout()
}

func (n *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	d := n.d
	var e *Entry
	if d.dyn != nil {
		if d.isRemoved() {
			return nil, syscall.ENOENT
		}
		var errno syscall.Errno
		if e, errno = d.dynLookup(ctx, name); errno != 0 {
			// A nonzero timeout keeps go-fuse from caching the miss as a
			// negative entry: a child may appear at any time.
			out.SetEntryTimeout(time.Nanosecond)
			return nil, errno
		}
	} else if e = d.lookupKernel(name); e == nil {
		fn := d.onMiss.Load()
		if fn == nil {
			return nil, syscall.ENOENT
		}
		d.resolve(ctx, *fn, name)
		if e = d.lookupKernel(name); e == nil {
			// As in a dynamic directory: no negative entry, so that the
			// name is asked again (Dir.OnMiss).
			out.SetEntryTimeout(time.Nanosecond)
			return nil, syscall.ENOENT
		}
	}
	return n.child(ctx, e, out)
}

// child returns the kernel inode of e, a child of n, with its attributes.
func (n *dirNode) child(ctx context.Context, e *Entry, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	out.SetEntryTimeout(e.timeout())
	out.SetAttrTimeout(e.timeout())
	// Each Entry has its own inode number, so a name published again after
	// removal is a new inode to the kernel, never the old one revived.
	switch e.kind {
	case kindDir:
		if e.dir.isRemoved() {
			return nil, syscall.ENOENT
		}
		e.dir.attr(&out.Attr)
		return n.NewInode(ctx, &dirNode{d: e.dir}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: e.ino}), 0
	case kindLink:
		if !e.enter() {
			return nil, syscall.ENOENT
		}
		defer e.exit()
		if errno := e.attr(ctx, &out.Attr); errno != 0 {
			return nil, errno
		}
		return n.NewInode(ctx, &linkNode{e: e}, fs.StableAttr{Mode: syscall.S_IFLNK, Ino: e.ino}), 0
	}
	if !e.enter() {
		return nil, syscall.ENOENT
	}
	defer e.exit()
	ttl, errno := e.attrTTL(ctx, &out.Attr)
	if errno != 0 {
		return nil, errno
	}
	out.SetAttrTimeout(ttl)
	fn := &fileNode{e: e}
	if e.writer() != nil {
		fn.pages = new(pageState)
	}
	return n.NewInode(ctx, fn, fs.StableAttr{Mode: syscall.S_IFREG, Ino: e.ino}), 0
}

// attr fills out a directory's attributes.
func (d *Dir) attr(out *fuse.Attr) {
	nlink := uint32(2)
	if d.dyn == nil {
		d.srv.mu.RLock()
		nlink += uint32(d.subdirs)
		d.srv.mu.RUnlock()
	}
	out.Ino = d.ino
	out.Mode = syscall.S_IFDIR | d.perm
	out.Nlink = nlink
	out.Owner = fuse.Owner{Uid: d.srv.uid, Gid: d.srv.gid}
	out.Blksize = 4096
	out.SetTimes(&d.born, &d.born, &d.born)
}

func (n *dirNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.d.attr(&out.Attr)
	out.SetTimeout(n.d.attrTimeout())
	return 0
}

// Setattr: chmod, chown and utimes of a /proc directory are EPERM.
func (n *dirNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

// OpendirHandle starts a listing. A removed directory (a process's working
// directory, say) lists nothing: ENOENT, as a dead /proc/<pid> gives.
func (n *dirNode) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.d.isRemoved() {
		return nil, 0, syscall.ENOENT
	}
	return &dirHandle{n: n}, 0, 0
}

// dirHandle is one open directory. Its offsets are cookies, not indexes:
// "." is 1, ".." is 2, and a child's is its inode number plus 2, and the
// listing is ordered by inode number. A child keeps its inode number while
// it exists, so a listing resumed at a cookie (the next getdents(2) after a
// small buffer filled, or seekdir(3) to a telldir(3) value) continues right
// after the last child returned, whatever came and went in between: a child
// that stayed is listed exactly once (xfstests generic/257).
type dirHandle struct {
	n    *dirNode
	pos  uint64   // the cookie of the last entry returned
	list []*Entry // the children after pos, ordered by inode number
	have bool     // list is loaded
	last *Entry   // the entry Readdirent returned last, for Lookup
	// listed counts the children returned since the listing began at
	// its start, for Lookup (plusFirst).
	listed int
}

// plusFirst is how many children at the start of a listing a no-open
// connection's READDIRPLUS looks up whether or not the kernel knows them:
// about what the kernel's first READDIRPLUS reply to a getdents(2) of 32
// KiB holds, which is what it asks for with READDIRPLUS_AUTO, and a small
// directory's all. Past them a listing looks up only the children the
// kernel knows (Lookup).
const plusFirst = 200

func (h *dirHandle) load(ctx context.Context) syscall.Errno {
	d := h.n.d
	var list []*Entry
	if d.dyn != nil {
		var errno syscall.Errno
		if list, errno = d.dynList(ctx); errno != 0 {
			return errno
		}
	} else {
		list = d.sortedChildren()
	}
	i := sort.Search(len(list), func(i int) bool { return list[i].ino+2 > h.pos })
	h.list, h.have = list[i:], true
	return 0
}

func (h *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	d := h.n.d
	switch h.pos {
	case 0:
		h.pos, h.last = 1, nil
		return &fuse.DirEntry{Name: ".", Ino: d.ino, Mode: syscall.S_IFDIR, Off: 1}, 0
	case 1:
		ino := d.ino
		if d.parent != nil {
			ino = d.parent.ino
		}
		h.pos, h.last = 2, nil
		return &fuse.DirEntry{Name: "..", Ino: ino, Mode: syscall.S_IFDIR, Off: 2}, 0
	}
	if !h.have {
		if errno := h.load(ctx); errno != 0 {
			return nil, errno
		}
	}
	for len(h.list) > 0 {
		e := h.list[0]
		h.list = h.list[1:]
		if d.perCaller {
			if e = d.relink(e); e == nil {
				continue // retired since the listing was taken
			}
		} else if !d.srv.linked(e) {
			continue // removed since the listing was taken
		}
		h.pos, h.last = e.ino+2, e
		h.listed++
		return &fuse.DirEntry{Name: e.name, Ino: e.ino, Mode: e.typeBits(), Off: h.pos}, 0
	}
	return nil, 0
}

// Seekdir moves to a cookie (0 rewinds); the children are listed afresh.
func (h *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	h.pos, h.have, h.list, h.last = off, false, nil, nil
	h.listed = 0
	if off > 0 {
		h.listed = plusFirst // resumed: not the start of a listing
	}
	return 0
}

// Lookup serves READDIRPLUS for the entry just listed, without asking a
// dynamic directory's handler again.
//
// A no-open connection asks for READDIRPLUS at every batch (server.go),
// so that a listing revalidates, in one round trip per batch, the files
// the kernel caches: a bounded file's attributes then come with the time
// its snapshot has left (regenerated if it is older than the bound), and
// a read soon after sends nothing, where it would send a GETATTR (find |
// xargs cat over a tree of bounded files, run again). A child the kernel
// does not know yet is looked up only among the first plusFirst of a
// listing, as with READDIRPLUS_AUTO: past them an error leaves its entry
// without a node ID, which the kernel skips (fs/fuse/readdir.c), so that
// ls -R or find of a tree never read makes no inode and generates no
// content per name; reading such a file costs its LOOKUP.
func (h *dirHandle) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if h.listed > plusFirst && h.n.d.srv.opts.NoOpen && h.n.GetChild(name) == nil {
		return nil, syscall.ENOENT
	}
	if e := h.last; e != nil && e.name == name {
		if d := h.n.d; !d.perCaller || d.relink(e) != nil {
			return h.n.child(ctx, e, out)
		}
	}
	return h.n.Lookup(ctx, name, out)
}

func (h *dirHandle) Releasedir(ctx context.Context, releaseFlags uint32) {}

// dirPlusTTL is a no-open connection's file system with READDIRPLUS replies
// whose attribute timeouts count from the start of the request. Each entry's
// timeout is the time its snapshot has left when it is looked up (and
// maybe regenerated), but the kernel counts it from the reply, which waits
// for every later entry of the batch: with a handler that takes 5 ms, the
// first of 200 entries would be trusted a second longer than its bound.
type dirPlusTTL struct{ fuse.RawFileSystem }

func (d dirPlusTTL) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	start := time.Now()
	st := d.RawFileSystem.ReadDirPlus(cancel, in, out)
	if st == fuse.OK {
		shortenAttrTimeouts(out.Bytes(), time.Since(start))
	}
	return st
}

// shortenAttrTimeouts takes by off the attribute timeout of every entry of
// a READDIRPLUS reply that has a node ID (a fuse_direntplus: a
// fuse_entry_out, then a fuse_dirent and its name, padded to 8 bytes).
func shortenAttrTimeouts(buf []byte, by time.Duration) {
	entryOut := int(unsafe.Sizeof(fuse.EntryOut{}))
	secs := int(unsafe.Offsetof(fuse.EntryOut{}.AttrValid))
	nsecs := int(unsafe.Offsetof(fuse.EntryOut{}.AttrValidNsec))
	for len(buf) >= entryOut+direntSize {
		if binary.NativeEndian.Uint64(buf) != 0 {
			ttl := time.Duration(binary.NativeEndian.Uint64(buf[secs:]))*time.Second + time.Duration(binary.NativeEndian.Uint32(buf[nsecs:]))
			ttl = max(ttl-by, 0)
			binary.NativeEndian.PutUint64(buf[secs:], uint64(ttl/time.Second))
			binary.NativeEndian.PutUint32(buf[nsecs:], uint32(ttl%time.Second))
		}
		namelen := int(binary.NativeEndian.Uint32(buf[entryOut+16:]))
		buf = buf[min(len(buf), (entryOut+direntSize+namelen+7)&^7):]
	}
}

// typeBits is the S_IFMT part of the entry's mode.
func (e *Entry) typeBits() uint32 {
	switch e.kind {
	case kindDir:
		return syscall.S_IFDIR
	case kindLink:
		return syscall.S_IFLNK
	}
	return syscall.S_IFREG
}

func (n *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.ENOENT
}

func (n *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.ENOENT
}

func (n *dirNode) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.ENOENT
}

func (n *dirNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.ENOENT
}

func (n *dirNode) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.ENOENT
}

func (n *dirNode) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.ENOENT
}

// existing returns the kind of the child name, looking it up in a dynamic
// directory's handler; ok is false if there is none.
func (n *dirNode) existing(ctx context.Context, name string) (k kind, ok bool) {
	d := n.d
	if d.dyn != nil {
		if d.isRemoved() {
			return 0, false
		}
		e, errno := d.dynLookup(ctx, name)
		if errno != 0 {
			return 0, false
		}
		return e.kind, true
	}
	e := d.lookupEntry(name)
	if e == nil {
		return 0, false
	}
	return e.kind, true
}

func (n *dirNode) Unlink(ctx context.Context, name string) syscall.Errno {
	k, ok := n.existing(ctx, name)
	switch {
	case !ok:
		return syscall.ENOENT
	case k == kindDir:
		return syscall.EISDIR
	}
	return syscall.EPERM
}

func (n *dirNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	k, ok := n.existing(ctx, name)
	switch {
	case !ok:
		return syscall.ENOENT
	case k != kindDir:
		return syscall.ENOTDIR
	}
	return syscall.EPERM
}

// inode returns the kernel inode of d on its connection, if the kernel
// knows it (nil otherwise: then it caches nothing about d's names).
func (d *Dir) inode() *fs.Inode {
	if d.parent == nil {
		return &d.srv.root.Inode
	}
	p := d.parent.inode()
	if p == nil {
		return nil
	}
	return p.GetChild(d.name)
}

// inode returns the kernel inode of e, or nil if the kernel does not know it.
func (e *Entry) inode() *fs.Inode {
	p := e.parent.inode()
	if p == nil {
		return nil
	}
	return p.GetChild(e.name)
}

// notifyGone drops the kernel's cached dentry (positive or negative) for
// name in d, so its next lookup reaches the server.
func (d *Dir) notifyGone(name string) {
	p := d.inode()
	if p == nil {
		return
	}
	if errno := p.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
		d.srv.log.Debug("entry invalidation failed", "name", d.entryPath(name), "errno", errno)
	}
}

// linkNode is the kernel's inode for a symbolic link's Entry.
type linkNode struct {
	fs.Inode
	e *Entry
}

// Readlink asks the handler for the target, for this caller: the kernel
// does not cache link targets on this mount (no FUSE_CACHE_SYMLINKS), so
// a computed link is asked at every path walk.
func (n *linkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	e := n.e
	if !e.enter() {
		return nil, syscall.ENOENT
	}
	defer e.exit()
	target, err := e.symlink().Readlink(ctx)
	if err != nil {
		return nil, handler.Errno(err)
	}
	return []byte(target), 0
}

func (n *linkNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	e := n.e
	if !e.enter() {
		return syscall.ENOENT
	}
	defer e.exit()
	out.SetTimeout(e.parent.timeout())
	return e.attr(ctx, &out.Attr)
}
