package fusebridge

import (
	"context"
	"io/fs"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/handler"
)

// Entry is one published file: a name in the mount's directory bound to a
// handler. It is the counterpart of the seed's proc_dir_entry.
type Entry struct {
	srv  *Server
	name string
	ino  uint64
	// born stands in for all three times of handlers that keep none.
	born time.Time

	// The handler's optional interfaces, resolved once at Create so that no
	// FUSE operation pays for a type assertion.
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

	// perm and owner are kept here for handlers without a Setattrer, so
	// chmod works on every entry, as it does on /proc files.
	perm atomic.Uint32
	uid  atomic.Uint32
	gid  atomic.Uint32

	// life is read-held by every callback while it runs and write-held by
	// remove: removal waits for callbacks in flight to finish (as
	// proc_remove waits for in_use to drain) and callbacks that start
	// afterwards see removed and fail with EIO, never touching a handler
	// that its owner has already torn down.
	life    sync.RWMutex
	removed bool

	// opens lists the descriptors not yet released, so removal can release
	// them, as procfs's close_pdeo does on remove_proc_entry.
	opensMu sync.Mutex
	opens   map[*openFile]struct{}

	// shared is the one open file of a NoOpen mount, where the kernel
	// sends no OPEN: created by the first callback that needs it, dropped
	// (and released once its last user is done) on invalidation.
	sharedMu sync.Mutex
	shared   *sharedFile

	// twin is the same handler published on the no-open connection of a
	// NoOpenHandlers mount and bind-mounted over this entry's name.
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

func newEntry(s *Server, name string, ino uint64, mode fs.FileMode, h any) *Entry {
	e := &Entry{srv: s, name: name, ino: ino, born: time.Now(), opens: map[*openFile]struct{}{}}
	e.opener, _ = h.(handler.Opener)
	e.reader, _ = h.(handler.Reader)
	e.writer, _ = h.(handler.Writer)
	e.lseeker, _ = h.(handler.Lseeker)
	e.releaser, _ = h.(handler.Releaser)
	e.getattrer, _ = h.(handler.Getattrer)
	e.setattrer, _ = h.(handler.Setattrer)
	e.fsyncer, _ = h.(handler.Fsyncer)
	e.allocator, _ = h.(handler.Allocator)
	e.backing, _ = h.(handler.BackingFiler)
	e.sizer, _ = h.(handler.SnapshotSizer)
	e.perm.Store(handler.UnixMode(mode))
	e.uid.Store(s.uid)
	e.gid.Store(s.gid)
	return e
}

// Name returns the entry's file name.
func (e *Entry) Name() string { return e.name }

// Remove unpublishes the entry: new opens of its name fail with ENOENT,
// callbacks already running finish first, descriptors still open are
// released (the handler's Release runs for each), and any later operation
// on them fails with EIO. Remove returns once no callback of the handler is
// running, so the caller may then free what the handler uses. Descriptors
// that the kernel serves by passthrough (BackingFiler) keep reading and
// writing the backing file until they are closed: the kernel gives the
// server no way to revoke them.
func (e *Entry) Remove() error {
	if !e.srv.unlink(e) {
		return syscall.ENOENT
	}
	if ce := e.twin.Load(); ce != nil {
		// Off the bind first, so that lookups reach this connection,
		// which no longer knows the name. (Dropping the dentry below would
		// detach it too; an error means the directory is already gone.)
		unix.Unmount(filepath.Join(e.srv.mnt, e.name), unix.MNT_DETACH)
		ce.Remove()
	}
	e.kill()
	if e.srv.opts.NoOpen {
		// Descriptors opened before must get EIO, not the pages the
		// kernel cached for them.
		if n := e.srv.root.GetChild(e.name); n != nil {
			n.NotifyContent(0, 0)
		}
	}
	e.notifyRemoved() // notify.go: IN_DELETE_SELF for watchers
	e.srv.notifyGone(e.name)
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
	n := e.srv.root.GetChild(e.name)
	if n == nil {
		return nil // the kernel has not looked it up, so it caches nothing
	}
	if errno := n.NotifyContent(off, 0); errno != 0 && errno != syscall.ENOENT {
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
	a := handler.Attr{
		Mode:  handler.ModeFromUnix(e.perm.Load()),
		Uid:   e.uid.Load(),
		Gid:   e.gid.Load(),
		Atime: e.born,
		Mtime: e.born,
		Ctime: e.born,
	}
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
	*out = fuse.Attr{
		Ino:     e.ino,
		Size:    uint64(a.Size),
		Blocks:  uint64(a.Blocks),
		Mode:    syscall.S_IFREG | handler.UnixMode(a.Mode),
		Nlink:   1,
		Owner:   fuse.Owner{Uid: a.Uid, Gid: a.Gid},
		Blksize: 4096,
	}
	out.SetTimes(&a.Atime, &a.Mtime, &a.Ctime)
	return 0
}

func (e *Entry) track(of *openFile) bool {
	e.opensMu.Lock()
	defer e.opensMu.Unlock()
	if e.opens == nil {
		return false
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
