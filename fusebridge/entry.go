package fusebridge

import (
	"context"
	"io/fs"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ramproc/ramproc/handler"
)

// Entry is one published name: a file bound to a handler, a symbolic link,
// or a directory (Entry.Dir). It is the counterpart of the seed's
// proc_dir_entry.
type Entry struct {
	// The handler's optional interfaces, resolved once at Create so that no
	// FUSE operation pays for a type assertion; shared with the twin.
	*fileOps

	srv    *Server
	parent *Dir
	name   string
	ino    uint64
	// born (Unix nanoseconds) stands in for all three times of handlers
	// that keep none; an int64, not a time.Time, as it is 16 bytes less
	// for each of a large tree's entries.
	born int64
	kind kind
	// removed is guarded by life, opensClosed by opensMu, bound by
	// srv.bindMu; kept together so that they share one word.
	removed     bool
	opensClosed bool
	// bound is set while the twin is bind-mounted over this entry's path
	// (a file's own bind, or a whole directory's).
	bound bool
	// mark is a child of a per-caller dynamic directory's sweep state
	// (percaller.go): markSeen each time a handler's answer shows it.
	mark atomic.Uint32

	dir  *Dir              // kindDir: the directory this entry names
	link handler.Symlinker // kindLink

	// perm and owner are kept here for handlers without a Setattrer, so
	// chmod works on every entry, as it does on /proc files.
	perm atomic.Uint32
	uid  atomic.Uint32
	gid  atomic.Uint32

	// gen is a dynamic child's handler.Child.Gen, set before it is linked.
	gen uint64

	// life is read-held by every callback while it runs and write-held by
	// remove: removal waits for callbacks in flight to finish (as
	// proc_remove waits for in_use to drain) and callbacks that start
	// afterwards see removed and fail with EIO, never touching a handler
	// that its owner has already torn down.
	life sync.RWMutex

	// opens lists the descriptors not yet released, so removal can release
	// them, as procfs's close_pdeo does on remove_proc_entry. It is made
	// at the first open: most entries of a large tree are never opened
	// through a handle.
	opensMu sync.Mutex
	opens   map[*openFile]struct{}

	// shared is the one open file of a NoOpen mount, where the kernel
	// sends no OPEN: created by the first callback that needs it, dropped
	// (and released once its last user is done) on invalidation.
	sharedMu sync.Mutex
	shared   *sharedFile

	// twin is the same handler published on the no-open connection of a
	// NoOpenHandlers mount (split.go).
	twin atomic.Pointer[Entry]

	notify notifyState // change notification (notify.go)
}

// sharedFile is an Entry's open file on a NoOpen mount.
type sharedFile struct {
	of openFile
	// exact is set when the handler's Opener set Caching: its content
	// changes only through this mount, so the kernel's own write-through
	// keeps the page cache right and writes need no invalidation.
	exact   bool
	refs    int // callbacks using it; guarded by Entry.sharedMu
	dropped bool
}

// fileOps is a file handler's interfaces, resolved once.
type fileOps struct {
	opener    handler.Opener
	reader    handler.Reader
	writer    handler.Writer
	lseeker   handler.Lseeker
	releaser  handler.Releaser
	getattrer handler.Getattrer
	setattrer handler.Setattrer
	fsyncer   handler.Fsyncer
	allocator handler.Allocator
	backing   handler.BackingFiler
	sizer     handler.SnapshotSizer

	// perCaller: content depends on the caller, never cached.
	perCaller bool
	// unknownSize: a streamed file, read with FOPEN_DIRECT_IO to its end.
	unknownSize bool
	// sourced: a handler.SourceChanger, whose writes carry the fileOps (the
	// same for an entry and its twin) as their source (notify.go).
	sourced bool
}

// noOps serves directories and links, which have no file operations.
var noOps = &fileOps{}

func resolveOps(h any) *fileOps {
	o := &fileOps{}
	o.opener, _ = h.(handler.Opener)
	o.reader, _ = h.(handler.Reader)
	o.writer, _ = h.(handler.Writer)
	o.lseeker, _ = h.(handler.Lseeker)
	o.releaser, _ = h.(handler.Releaser)
	o.getattrer, _ = h.(handler.Getattrer)
	o.setattrer, _ = h.(handler.Setattrer)
	o.fsyncer, _ = h.(handler.Fsyncer)
	o.allocator, _ = h.(handler.Allocator)
	o.backing, _ = h.(handler.BackingFiler)
	o.sizer, _ = h.(handler.SnapshotSizer)
	if pc, ok := h.(handler.PerCaller); ok {
		o.perCaller = pc.PerCaller()
	}
	o.unknownSize = unknownSize(h)
	_, o.sourced = h.(handler.SourceChanger)
	return o
}

// newEntry makes the entry of h (nil for a static directory); ops, if not
// nil, are h's interfaces already resolved (a twin shares its original's).
func newEntry(s *Server, parent *Dir, name string, ino uint64, mode fs.FileMode, h any, k kind, ops *fileOps) *Entry {
	e := &Entry{srv: s, parent: parent, name: name, ino: ino, kind: k, born: time.Now().UnixNano()}
	switch k {
	case kindDir:
		e.fileOps = noOps
		e.dir = newDir(s, parent, name, ino, mode)
		e.dir.self = e
		e.dir.dyn, _ = h.(handler.DirHandler)
		if pc, ok := h.(handler.PerCaller); ok && e.dir.dyn != nil {
			e.dir.perCaller = pc.PerCaller()
		}
	case kindLink:
		e.fileOps = noOps
		e.link = h.(handler.Symlinker)
	default:
		if ops == nil {
			ops = resolveOps(h)
		}
		e.fileOps = ops
	}
	e.perm.Store(handler.UnixMode(mode))
	e.uid.Store(s.uid)
	e.gid.Store(s.gid)
	return e
}

// pins reports whether the entry must be served by a connection that keeps
// OPEN: a passthrough file, content that must not be cached, or a dynamic
// directory (see split.go).
func (e *Entry) pins() bool {
	switch e.kind {
	case kindDir:
		return e.dir.dyn != nil
	case kindLink:
		return false
	}
	return e.backing != nil || e.perCaller || e.unknownSize
}

// Name returns the entry's file name.
func (e *Entry) Name() string { return e.name }

// Remove unpublishes the entry (for a directory, its whole subtree): new
// lookups of its name fail with ENOENT, callbacks already running finish
// first, descriptors still open are released (the handler's Release runs
// for each), and any later operation on them fails with EIO. Remove
// returns once no callback of the handler is running, so the caller may
// then free what the handler uses. Descriptors that the kernel serves by
// passthrough (BackingFiler) keep reading and writing the backing file
// until they are closed: the kernel gives the server no way to revoke them.
func (e *Entry) Remove() error {
	e.primeDentry() // notify.go: for the IN_DELETE_SELF of notifyRemoved
	ok, sub := e.srv.unlink(e)
	if !ok {
		return syscall.ENOENT
	}
	if ce := e.twin.Load(); ce != nil {
		// Off the binds first, deepest first, so that lookups reach this
		// connection, which no longer knows the names. (Dropping the
		// dentry below would detach them too; an error means the
		// directory is already gone.)
		e.srv.unbindRemoved(append(sub[:len(sub):len(sub)], e))
		ce.Remove()
	}
	sub = append(sub, e)
	for _, c := range sub {
		c.kill()
	}
	if e.srv.opts.NoOpen {
		// Descriptors opened before must get EIO, not the pages the
		// kernel cached for them.
		for _, c := range sub {
			if c.kind != kindFile {
				continue
			}
			if n := c.inode(); n != nil {
				n.NotifyContent(0, 0)
			}
		}
	}
	e.notifyRemoved() // notify.go: IN_DELETE_SELF for watchers
	e.parent.notifyGone(e.name)
	if e.pins() {
		e.srv.rejoin(e.parent)
	}
	return nil
}

// kill waits for callbacks in flight, then releases open descriptors.
func (e *Entry) kill() {
	e.stopNotify() // notify.go
	e.life.Lock()
	e.removed = true
	e.life.Unlock()
	e.dropShared()

	e.opensMu.Lock()
	open := e.opens
	e.opens = nil
	e.opensClosed = true
	e.opensMu.Unlock()
	if e.releaser != nil {
		for of := range open {
			e.releaser.Release(context.Background(), &of.f)
		}
	}
}

// Invalidate tells the kernel to forget the attributes (size, times) it
// caches for the entry. Handlers whose attributes change by themselves,
// not through a syscall on the mount, call it after each change.
//
// On a NoOpen mount, and for the handler entries of a NoOpenHandlers
// mount, it also drops the entry's snapshot (a Generated file is
// generated afresh at the next read or stat) and the kernel's cached pages:
// there, content is served from the kernel's cache until this is called.
func (e *Entry) Invalidate() error {
	if ce := e.twin.Load(); ce != nil {
		if err := ce.Invalidate(); err != nil {
			return err
		}
	}
	off := int64(-1)
	if e.srv.opts.NoOpen {
		e.dropShared()
		off = 0
	}
	n := e.inode()
	if n == nil {
		return nil // the kernel has not looked it up, so it caches nothing
	}
	errno := syscall.Errno(0)
	if fn, ok := n.Operations().(*fileNode); ok && off == 0 {
		errno = fn.dropPages() // pagedrop.go: also records it
	} else {
		errno = n.NotifyContent(off, 0)
	}
	if errno != 0 && errno != syscall.ENOENT {
		return errno
	}
	return nil
}

// enter marks a callback as running; false means the entry is gone.
func (e *Entry) enter() bool {
	e.life.RLock()
	if e.removed {
		e.life.RUnlock()
		return false
	}
	return true
}

func (e *Entry) exit() { e.life.RUnlock() }

// attr fills out from the bridge's defaults and the handler's Getattr.
func (e *Entry) attr(ctx context.Context, out *fuse.Attr) syscall.Errno {
	a := e.baseAttr()
	if e.getattrer != nil {
		if err := e.getattrer.Getattr(ctx, &a); err != nil {
			return handler.Errno(err)
		}
	} else if e.srv.opts.NoOpen && e.sizer != nil {
		// The kernel caches the content and reads no further than the
		// size it knows, so the size must be the snapshot's.
		sh, errno := e.acquireShared(ctx)
		if errno != 0 {
			return errno
		}
		a.Size = e.sizer.SnapshotSize(&sh.of.f)
		a.Blocks = (a.Size + 511) / 512
		e.releaseShared(sh)
	}
	e.fillAttr(&a, 1, out)
	return 0
}

// baseAttr is what the entry itself knows of its attributes, without its
// handler: mode, owner, and its birth for the times.
func (e *Entry) baseAttr() handler.Attr {
	born := time.Unix(0, e.born)
	return handler.Attr{
		Mode:  handler.ModeFromUnix(e.perm.Load()),
		Uid:   e.uid.Load(),
		Gid:   e.gid.Load(),
		Atime: born,
		Mtime: born,
		Ctime: born,
	}
}

// removedAttr fills out the attributes of a removed entry for a GETATTR
// by path, without its handler (which may be torn down): what baseAttr
// knows, size 0, and no link, as fstat(2) shows an unlinked tmpfs file.
func (e *Entry) removedAttr(out *fuse.Attr) {
	a := e.baseAttr()
	e.fillAttr(&a, 0, out)
}

// fillAttr turns a into the kernel's form.
func (e *Entry) fillAttr(a *handler.Attr, nlink uint32, out *fuse.Attr) {
	typ := uint32(syscall.S_IFREG)
	if e.kind == kindLink {
		typ = syscall.S_IFLNK
		if l, ok := e.link.(handler.Link); ok {
			a.Size = int64(len(l)) // as tmpfs; computed targets say 0, as /proc/self
		}
	}
	*out = fuse.Attr{
		Ino:     e.ino,
		Size:    uint64(a.Size),
		Blocks:  uint64(a.Blocks),
		Mode:    typ | handler.UnixMode(a.Mode),
		Nlink:   nlink,
		Owner:   fuse.Owner{Uid: a.Uid, Gid: a.Gid},
		Blksize: 4096,
	}
	out.SetTimes(&a.Atime, &a.Mtime, &a.Ctime)
}

func (e *Entry) track(of *openFile) bool {
	e.opensMu.Lock()
	defer e.opensMu.Unlock()
	if e.opensClosed {
		return false
	}
	if e.opens == nil {
		e.opens = map[*openFile]struct{}{}
	}
	e.opens[of] = struct{}{}
	return true
}

// untrack reports whether of was still open, i.e. whether the caller must
// release it (removal may have done so already).
func (e *Entry) untrack(of *openFile) bool {
	e.opensMu.Lock()
	defer e.opensMu.Unlock()
	if _, ok := e.opens[of]; !ok {
		return false
	}
	delete(e.opens, of)
	return true
}

// acquireShared returns the entry's shared open file (NoOpen), opening it
// through the handler's Opener if there is none; releaseShared must follow.
func (e *Entry) acquireShared(ctx context.Context) (*sharedFile, syscall.Errno) {
	e.sharedMu.Lock()
	defer e.sharedMu.Unlock()
	if sh := e.shared; sh != nil {
		sh.refs++
		return sh, 0
	}
	flags := syscall.O_RDWR
	switch {
	case e.writer == nil:
		flags = syscall.O_RDONLY
	case e.reader == nil:
		flags = syscall.O_WRONLY
	}
	sh := &sharedFile{of: openFile{e: e, f: handler.OpenFile{Flags: flags}}}
	if e.opener != nil {
		// Under sharedMu: concurrent first readers share one generation.
		if err := e.opener.Open(ctx, &sh.of.f); err != nil {
			return nil, handler.Errno(err)
		}
	}
	sh.exact = sh.of.f.Caching
	sh.of.f.Caching = true
	sh.refs = 1
	e.shared = sh
	return sh, 0
}

func (e *Entry) releaseShared(sh *sharedFile) {
	e.sharedMu.Lock()
	sh.refs--
	last := sh.refs == 0 && sh.dropped
	e.sharedMu.Unlock()
	if last && e.releaser != nil {
		e.releaser.Release(context.Background(), &sh.of.f)
	}
}

// dropShared forgets the shared open file; the next callback opens a new
// one. It is released once no callback uses it.
func (e *Entry) dropShared() {
	e.sharedMu.Lock()
	sh := e.shared
	e.shared = nil
	last := false
	if sh != nil {
		sh.dropped = true
		last = sh.refs == 0
	}
	e.sharedMu.Unlock()
	if last && e.releaser != nil {
		e.releaser.Release(context.Background(), &sh.of.f)
	}
}
