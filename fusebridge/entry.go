package fusebridge

import (
	"bytes"
	"context"
	"io/fs"
	"math"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ramproc/ramproc/handler"
)

// Entry is one published name: a file bound to a handler, a symbolic link,
// or a directory (Entry.Dir). It is the counterpart of the seed's
// proc_dir_entry.
//
// A file or link served on both connections of a split mount has an Entry
// on each (each connection's directory, tree walk and restart state are
// its own), but the two share one entryCore: the handler, the callbacks
// in flight, the open descriptors, the snapshot and the attributes the
// bridge keeps (which all belong to the file, not to a connection; the
// removal of a file removes it from both). That is 24 bytes of Entry per
// connection and 128 of core, where two whole entries and the handler's
// resolved interfaces were 416 (the lib-tree-rss row of ramproc bench
// -workloads lib). What is per connection stays in Entry, or is keyed by
// it: the directory, the twin, the descriptors' openFile and the claims
// of perop.go.
type Entry struct {
	// The state both connections' entries of one published file share;
	// a directory's is its own.
	*entryCore

	// parent is the entry's directory on its connection; its server
	// (Entry.srv) is the entry's.
	parent *Dir

	// gen is a dynamic child's handler.Child.Gen, set before it is linked.
	gen uint64
}

// srv is the server of the connection the entry is published on.
func (e *Entry) srv() *Server { return e.parent.srv }

// twin returns the same name on the second connection of a split mount
// (split.go), for an entry of the main one: for a file or a link the entry
// that shares its core in the twin of its directory, for a directory the
// entry that names the directory's twin; nil if there is none. Found, not
// kept: a pointer in every Entry was 8 bytes of each connection's entry
// of every file (issue 14's footprint), for the few calls that need it
// (removal, invalidation, notification, binds). Called with neither
// connection's mu held.
func (e *Entry) twin() *Entry {
	s := e.srv()
	s.mu.RLock()
	ct := e.parent.twin
	if e.dir != nil {
		ct = e.dir.twin
	}
	s.mu.RUnlock()
	if ct == nil {
		return nil
	}
	c := ct.srv
	c.mu.RLock()
	defer c.mu.RUnlock()
	if e.dir != nil {
		return ct.self
	}
	if ce := ct.children.get(e.name); ce != nil && ce.entryCore == e.entryCore {
		return ce
	}
	return nil
}

// entryCore is what an entry and its twin share. Its fields are laid out
// to fill 128 bytes, a size class of Go's allocator, with no slack (see
// the size checks below sharedFile).
type entryCore struct {
	// h is the handler itself (a link's Symlinker; nil for directories).
	// Its optional interfaces are asserted where a request needs them (a
	// few nanoseconds against a round trip of tens of microseconds):
	// resolved, each was 16 bytes per published file whatever the
	// handler implements, and a tree of 100,000 generated files paid 200
	// bytes a file for eleven of them, most nil.
	h any

	// maxAge is the freshness bound of a snapshot handler that states one
	// (handler.AgeBound); 0 for none.
	maxAge time.Duration

	name string
	ino  uint64
	// born (Unix nanoseconds) stands in for all three times of handlers
	// that keep none; an int64, not a time.Time, as it is 16 bytes less
	// for each of a large tree's entries.
	born int64
	kind kind
	// opensClosed is guarded by opensMu, bound by the main connection's
	// bindMu; kept together so that they share one word.
	opensClosed bool
	// bound is set while the twin is bind-mounted over this entry's path
	// (a file's own bind, or a whole directory's). Only the main
	// connection binds, and reads it, so its entry and its twin can share
	// it.
	bound bool
	// fixed is a dynamic directory's child that handler.Child.Fixed says
	// is always there: cached by the kernel as a static name is. Set
	// before the entry is linked.
	fixed bool
	// perCaller: content depends on the caller, never cached.
	perCaller bool
	// unknownSize: a streamed file, read with FOPEN_DIRECT_IO to its end.
	unknownSize bool
	// changer: the handler tells the bridge of every change
	// (handler.Changer), so a cache of it needs no bound.
	changer bool
	// sourced: a handler.SourceChanger, whose writes carry the core (the
	// same for an entry and its twin) as their source (notify.go).
	sourced bool

	// perm and owner are kept here for handlers without a Setattrer, so
	// chmod works on every entry, as it does on /proc files.
	perm atomic.Uint32
	uid  atomic.Uint32
	gid  atomic.Uint32
	// mark is a child of a per-caller dynamic directory's sweep state
	// (percaller.go): markSeen each time a handler's answer shows it.
	// (Beside the three above, it fills the word they leave half empty.)
	mark atomic.Uint32

	dir *Dir // kindDir: the directory this entry names (one core per connection)

	// life counts the callbacks running (enter, exit), plus lifeRemoved
	// once the entry is removed: removal waits for callbacks in flight to
	// finish (as proc_remove waits for in_use to drain) and callbacks that
	// start afterwards see lifeRemoved and fail with EIO, never touching a
	// handler that its owner has already torn down. (A counter rather
	// than a sync.RWMutex: 20 bytes less for each of a large tree's
	// entries; removals wait on one condition for all.) Shared by both
	// connections: the removal of either entry of a file (both are
	// removed together) waits for the callbacks of both, and a second
	// kill finds nothing left to do.
	life atomic.Int32

	// exact is set when the handler's Opener set Caching on its last
	// shared open file (sharedFile): its content changes only through
	// this mount, so the kernel's own write-through keeps the page cache
	// right and writes need no invalidation. (Here, in the four bytes
	// the fields around leave free, rather than in each snapshot.)
	exact atomic.Bool

	// opens lists the descriptors not yet released, so removal can release
	// them, as procfs's close_pdeo does on remove_proc_entry. It is made
	// at the first open: most entries of a large tree are never opened
	// through a handle. opensMu also guards shared: a connection either
	// opens (opens) or never does (shared), so one lock serves both.
	opensMu sync.Mutex
	opens   map[*openFile]struct{}

	// shared is the one open file of a no-open connection, where the
	// kernel sends no OPEN: created by the first callback that needs it,
	// dropped (and released once its last user is done) on invalidation.
	shared *sharedFile

	// notify is the change notification state (notify.go), made by the
	// first Notify or Changer: most entries never have one.
	notify atomic.Pointer[notifyState]
}

// sharedFile is an Entry's open file on a NoOpen mount. It is 48 bytes, a
// size class of Go's allocator (a bounded file of a large tree keeps one
// for as long as the kernel caches it): whether it was dropped is
// whether it is still the entry's shared one, and whether its content is
// byte-exact is the entry's (entryCore.exact).
type sharedFile struct {
	f handler.OpenFile
	// made is the mtime the kernel is shown (Unix nanoseconds): when it
	// was opened (Server.snapshotTime), or for a snapshot whose bytes are
	// those of the one it replaced, that one's made, so that the kernel
	// keeps the pages it holds (see renewSharedLocked).
	made int64
	// freshMs is when it was opened, in whole milliseconds after made
	// (sharedFile.fresh).
	freshMs uint32
	refs    int32 // callbacks using it; guarded by Entry.opensMu
}

// Sizes the footprint counts on (docs/design.md): a field more must find
// room, not take the next size class.
var (
	_ [0]struct{} = [unsafe.Sizeof(sharedFile{}) - 48]struct{}{}
	_ [0]struct{} = [unsafe.Sizeof(entryCore{}) - 128]struct{}{}
	_ [0]struct{} = [unsafe.Sizeof(Entry{}) - 24]struct{}{}
)

// fresh is when sh was opened (Unix nanoseconds), rounded down to a
// millisecond after made: for content with a freshness bound, the time
// its age counts from. Rounded down, the age is over-counted, never
// under: the bound holds.
func (sh *sharedFile) fresh() int64 { return sh.made + int64(sh.freshMs)*int64(time.Millisecond) }

// setFresh records t, a time at or after sh.made, as when sh was opened.
// A snapshot that kept its predecessor's made for longer than freshMs
// counts (49 days) shows t as its mtime instead: the kernel then drops
// the pages it holds once.
func (sh *sharedFile) setFresh(t int64) {
	ms := (t - sh.made) / int64(time.Millisecond)
	if ms > math.MaxUint32 {
		sh.made, ms = t, 0
	}
	sh.freshMs = uint32(ms)
}

// The handler's optional interfaces, nil where it has none.

func (o *entryCore) opener() handler.Opener     { i, _ := o.h.(handler.Opener); return i }
func (o *entryCore) reader() handler.Reader     { i, _ := o.h.(handler.Reader); return i }
func (o *entryCore) writer() handler.Writer     { i, _ := o.h.(handler.Writer); return i }
func (o *entryCore) releaser() handler.Releaser { i, _ := o.h.(handler.Releaser); return i }
func (o *entryCore) backing() handler.BackingFiler {
	i, _ := o.h.(handler.BackingFiler)
	return i
}
func (o *entryCore) lseeker() handler.Lseeker     { i, _ := o.h.(handler.Lseeker); return i }
func (o *entryCore) getattrer() handler.Getattrer { i, _ := o.h.(handler.Getattrer); return i }
func (o *entryCore) setattrer() handler.Setattrer { i, _ := o.h.(handler.Setattrer); return i }
func (o *entryCore) fsyncer() handler.Fsyncer     { i, _ := o.h.(handler.Fsyncer); return i }
func (o *entryCore) allocator() handler.Allocator { i, _ := o.h.(handler.Allocator); return i }
func (o *entryCore) sizer() handler.SnapshotSizer { i, _ := o.h.(handler.SnapshotSizer); return i }

// snapshotter is content made whole at open, which a read-only open may be
// served from a backing file of its own (perop.go); nil for handlers with
// a backing file of their own.
func (o *entryCore) snapshotter() handler.OpenSnapshotter {
	if o.backing() != nil {
		return nil
	}
	i, _ := o.h.(handler.OpenSnapshotter)
	return i
}

// symlink is a link entry's handler.
func (o *entryCore) symlink() handler.Symlinker { i, _ := o.h.(handler.Symlinker); return i }

// resolveFile sets the flags of a file handler's core from h.
func (o *entryCore) resolveFile(h any) {
	o.h = h
	if pc, ok := h.(handler.PerCaller); ok {
		o.perCaller = pc.PerCaller()
	}
	o.unknownSize = unknownSize(h)
	_, o.changer = h.(handler.Changer)
	// A bound is kept only where the bridge makes the snapshot itself
	// (a SnapshotSizer without Getattrer): it shows the kernel the
	// snapshot's size and time, which is what makes a bound hold.
	if ab, ok := h.(handler.AgeBound); ok && o.sizer() != nil && o.getattrer() == nil && ab.FreshFor() > 0 {
		o.maxAge = ab.FreshFor()
	}
	_, o.sourced = h.(handler.SourceChanger)
}

// DefaultMaxAge is the freshness bound of generated content that states
// none (a handler.Generated, not made with MaxAge) where the kernel caches
// it: on a NoOpen mount, and among the handler files of a NoOpenHandlers
// mount. Elsewhere such content is generated per open.
const DefaultMaxAge = time.Second

// ageBound is how long the kernel may serve a snapshot of e from its cache
// before the bridge makes a new one: 0 where it does not cache e's content
// (a connection that keeps OPEN generates it per open) or where every
// change drops the cache (handler.Changer, and content the handler marks
// byte-exact, which shares no snapshot).
func (e *Entry) ageBound() time.Duration {
	if !e.srv().opts.NoOpen || e.kind != kindFile {
		return 0
	}
	if e.maxAge > 0 {
		return e.maxAge
	}
	if e.sizer() != nil && e.getattrer() == nil && !e.changer && !e.perCaller {
		return DefaultMaxAge
	}
	return 0
}

// newEntry makes the entry of h (nil for a static directory); core, if not
// nil, is the state it shares with its twin on the other connection (a
// file's or a link's), already made.
func newEntry(s *Server, parent *Dir, name string, ino uint64, mode fs.FileMode, h any, k kind, core *entryCore) *Entry {
	e := &Entry{parent: parent}
	if core != nil {
		e.entryCore = core
		return e
	}
	e.entryCore = &entryCore{name: name, ino: ino, kind: k, born: time.Now().UnixNano()}
	switch k {
	case kindDir:
		e.dir = newDir(s, parent, name, ino, mode)
		e.dir.self = e
		e.dir.dyn, _ = h.(handler.DirHandler)
		if pc, ok := h.(handler.PerCaller); ok && e.dir.dyn != nil {
			e.dir.perCaller = pc.PerCaller()
		}
	case kindLink:
		e.h = h
	default:
		e.resolveFile(h)
	}
	e.perm.Store(handler.UnixMode(mode))
	e.uid.Store(s.uid)
	e.gid.Store(s.gid)
	return e
}

// timeout is how long the kernel may trust e's name and attributes: its
// directory's timeout for its children, or a static name's for a fixed
// child of a dynamic directory.
func (e *Entry) timeout() time.Duration {
	if e.fixed {
		return e.srv().opts.AttrTimeout
	}
	return e.parent.timeout()
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
	if e.backing() != nil || e.perCaller || e.unknownSize {
		return true
	}
	// In the default layout only content with a freshness bound is worth
	// a bind onto the no-open connection (split.go).
	return e.srv().freshOnly() && e.maxAge <= 0
}

// fresh reports a file with a freshness bound of its own (for the counts
// that decide the binds of the default layout, split.go).
func (e *Entry) fresh() bool {
	return e.kind == kindFile && e.maxAge > 0 && e.backing() == nil && !e.perCaller && !e.unknownSize
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
	ok, sub := e.srv().unlink(e)
	if !ok {
		return syscall.ENOENT
	}
	if ce := e.twin(); ce != nil {
		// Off the binds first, deepest first, so that lookups reach this
		// connection, which no longer knows the names. (Dropping the
		// dentry below would detach them too; an error means the
		// directory is already gone.)
		e.srv().unbindRemoved(append(sub[:len(sub):len(sub)], e))
		ce.Remove()
	}
	sub = append(sub, e)
	for _, c := range sub {
		c.kill()
	}
	if e.srv().opts.NoOpen {
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
		e.srv().rejoin(e.parent)
	}
	return nil
}

// kill waits for callbacks in flight, then releases open descriptors.
func (e *Entry) kill() {
	e.stopNotify() // notify.go
	e.life.Or(lifeRemoved)
	lifeMu.Lock()
	for e.life.Load() != lifeRemoved {
		lifeDone.Wait()
	}
	lifeMu.Unlock()
	e.dropShared()
	e.srv().pcs.drop(e.entryCore)

	e.opensMu.Lock()
	open := e.opens
	e.opens = nil
	e.opensClosed = true
	e.opensMu.Unlock()
	if r := e.releaser(); r != nil {
		for of := range open {
			r.Release(context.Background(), &of.f)
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
	if ce := e.twin(); ce != nil {
		if err := ce.Invalidate(); err != nil {
			return err
		}
	}
	off := int64(-1)
	if e.srv().opts.NoOpen {
		e.dropShared()
		off = 0
	} else if e.cacheStale() { // pagecache.go
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

// lifeRemoved is the bit of Entry.life that marks a removed entry.
const lifeRemoved = 1 << 30

// lifeMu and lifeDone wake the removals waiting for the last callback of
// their entry (kill).
var (
	lifeMu   sync.Mutex
	lifeDone = sync.NewCond(&lifeMu)
)

// enter marks a callback as running; false means the entry is gone.
func (e *Entry) enter() bool {
	for {
		v := e.life.Load()
		if v&lifeRemoved != 0 {
			return false
		}
		if e.life.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

func (e *Entry) exit() {
	if e.life.Add(-1) == lifeRemoved {
		// The last callback of a removed entry: its kill may be waiting.
		// (Under lifeMu, so that a kill between its check and its Wait
		// cannot miss it.)
		lifeMu.Lock()
		lifeDone.Broadcast()
		lifeMu.Unlock()
	}
}

// attr fills out from the bridge's defaults and the handler's Getattr.
func (e *Entry) attr(ctx context.Context, out *fuse.Attr) syscall.Errno {
	_, errno := e.attrTTL(ctx, out)
	return errno
}

// attrTTL is attr that also says how long the kernel may trust out: the
// timeout of e's directory, or for content with a freshness bound the time
// its snapshot has left, so that the first read after the bound asks for
// the attributes again (and regenerates the content: see freshShared).
func (e *Entry) attrTTL(ctx context.Context, out *fuse.Attr) (time.Duration, syscall.Errno) {
	ttl := e.timeout()
	if ga := e.getattrer(); ga != nil {
		return ttl, e.handlerAttr(ctx, ga, out)
	}
	// Not shared with handlerAttr: given to a handler, a escapes to the
	// heap, and here it stays on the stack (it was 128 bytes of garbage
	// per LOOKUP and GETATTR of every file).
	a := e.baseAttr()
	if size, cttl, ok := e.cacheAttr(); ok {
		// Served from the page cache (pagecache.go): the kernel reads no
		// further than this size.
		a.Size, a.Blocks = size, (size+511)/512
		ttl = min(ttl, cttl)
	} else if sz := e.sizer(); e.srv().opts.NoOpen && sz != nil {
		// The kernel caches the content and reads no further than the
		// size it knows, so the size must be the snapshot's.
		sh, errno := e.freshShared(ctx)
		if errno != 0 {
			return 0, errno
		}
		a.Size = sz.SnapshotSize(&sh.f)
		a.Blocks = (a.Size + 511) / 512
		if d := e.ageBound(); d > 0 {
			// The connection drops a file's pages when its mtime moves
			// (auto_inval_data, server.go): each snapshot of new bytes
			// has its own.
			a.Mtime = time.Unix(0, sh.made)
			a.Ctime = a.Mtime
			ttl = min(ttl, max(d-time.Duration(time.Now().UnixNano()-sh.fresh()), 0))
		}
		e.releaseShared(sh)
	} else if e.directOnly() {
		// Not 0, so that a splice asks the server (splice.go).
		a.Size = directSize
	}
	e.fillAttr(&a, 1, out)
	return ttl, 0
}

// handlerAttr is attrTTL's part for a handler that states its attributes.
func (e *Entry) handlerAttr(ctx context.Context, ga handler.Getattrer, out *fuse.Attr) syscall.Errno {
	a := e.baseAttr()
	if err := ga.Getattr(ctx, &a); err != nil {
		return handler.Errno(err)
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
		if l, ok := e.h.(handler.Link); ok {
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

// track adds of to the descriptors open; sole reports whether it is the
// only one.
func (e *Entry) track(of *openFile) (ok, sole bool) {
	e.opensMu.Lock()
	defer e.opensMu.Unlock()
	if e.opensClosed {
		return false, false
	}
	if e.opens == nil {
		e.opens = map[*openFile]struct{}{}
	}
	e.opens[of] = struct{}{}
	return true, len(e.opens) == 1
}

// openCount is the number of descriptors open.
func (e *Entry) openCount() int {
	e.opensMu.Lock()
	defer e.opensMu.Unlock()
	return len(e.opens)
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
	e.opensMu.Lock()
	defer e.opensMu.Unlock()
	if sh := e.shared; sh != nil {
		sh.refs++
		return sh, 0
	}
	sh, errno := e.openSharedLocked(ctx)
	if errno != 0 {
		return nil, errno
	}
	sh.refs = 1
	e.shared = sh
	return sh, 0
}

// openSharedLocked opens a new shared open file through the handler's
// Opener (for a snapshot handler, takes a snapshot); under opensMu, so
// that concurrent first readers share one generation.
func (e *Entry) openSharedLocked(ctx context.Context) (*sharedFile, syscall.Errno) {
	flags := syscall.O_RDWR
	switch {
	case e.writer() == nil:
		flags = syscall.O_RDONLY
	case e.reader() == nil:
		flags = syscall.O_WRONLY
	}
	sh := &sharedFile{f: handler.OpenFile{Flags: flags}}
	if op := e.opener(); op != nil {
		if err := op.Open(ctx, &sh.f); err != nil {
			return nil, handler.Errno(err)
		}
	}
	e.exact.Store(sh.f.Caching)
	sh.f.Caching = true
	sh.made = e.srv().snapshotTime()
	return sh, 0
}

// freshShared is acquireShared for the attributes: a snapshot older than
// e's freshness bound is replaced first (renewShared). The kernel asks for
// them (GETATTR) at the first read after the timeout attrTTL gave, which
// is when the snapshot reaches the bound; a new mtime then makes it drop
// the old pages before it reads. So the bound costs no timer, an idle file
// no work, and a hot one one regeneration per bound.
func (e *Entry) freshShared(ctx context.Context) (*sharedFile, syscall.Errno) {
	if d := e.ageBound(); d > 0 {
		e.opensMu.Lock()
		sh := e.shared
		if sh != nil && time.Now().UnixNano()-sh.fresh() >= int64(d) {
			return e.renewSharedLocked(ctx, sh) // unlocks
		}
		e.opensMu.Unlock()
	}
	return e.acquireShared(ctx)
}

// sameContentMax is the largest snapshot renewSharedLocked compares with
// the one it replaces; a larger one always shows a new mtime.
const sameContentMax = 64 << 10

// renewSharedLocked replaces old, e's shared open file, which has reached
// the freshness bound, by a new one, and returns it as acquireShared
// does; called under opensMu, which it releases. A new snapshot whose
// bytes are old's keeps old's mtime: the kernel then keeps the pages it
// caches, which hold those very bytes, and a reader of a file whose
// content has not changed pays the GETATTR that revalidates it, not a
// READ as well (half the requests of `find | xargs cat` run again over a
// tree of such files, the catall row of ramproc bench -workloads lib).
// The bound holds all the same: the bytes served are the ones just made.
func (e *Entry) renewSharedLocked(ctx context.Context, old *sharedFile) (*sharedFile, syscall.Errno) {
	sh, errno := e.openSharedLocked(ctx)
	if errno == 0 && e.sameContent(ctx, old, sh) {
		opened := sh.made
		sh.made = old.made
		sh.setFresh(opened)
	}
	e.shared = sh // nil if the handler failed: the next callback tries again
	// old is dropped now (no longer e.shared): released by its last user.
	last := old.refs == 0
	if sh != nil {
		sh.refs = 1
	}
	e.opensMu.Unlock()
	if r := e.releaser(); last && r != nil {
		r.Release(context.Background(), &old.f)
	}
	return sh, errno
}

// sameContent reports whether the snapshots a and b of e hold the same
// bytes (of at most sameContentMax; a larger one counts as changed).
func (e *Entry) sameContent(ctx context.Context, a, b *sharedFile) bool {
	sz := e.sizer()
	if sz == nil || e.reader() == nil {
		return false
	}
	n := sz.SnapshotSize(&a.f)
	if n != sz.SnapshotSize(&b.f) || n > sameContentMax {
		return false
	}
	ba, bb := make([]byte, n), make([]byte, n)
	return readFull(ctx, e.reader(), &a.f, ba) && readFull(ctx, e.reader(), &b.f, bb) && bytes.Equal(ba, bb)
}

// readFull reads len(buf) bytes of f from offset 0; false if it cannot.
func readFull(ctx context.Context, r handler.Reader, f *handler.OpenFile, buf []byte) bool {
	for got := 0; got < len(buf); {
		k, err := r.Read(ctx, f, buf[got:], int64(got))
		if err != nil || k <= 0 {
			return false
		}
		got += k
	}
	return true
}

// snapshotTime is the time of a new snapshot (Unix nanoseconds): now, or
// just after the last one this connection made if the clock has not moved
// on, so that a new snapshot always shows the kernel a new mtime (which is
// what makes it drop the old one's pages).
func (s *Server) snapshotTime() int64 {
	for {
		last := s.lastSnapshot.Load()
		t := max(time.Now().UnixNano(), last+1)
		if s.lastSnapshot.CompareAndSwap(last, t) {
			return t
		}
	}
}

func (e *Entry) releaseShared(sh *sharedFile) {
	e.opensMu.Lock()
	sh.refs--
	last := sh.refs == 0 && e.shared != sh // dropped, and unused
	e.opensMu.Unlock()
	if r := e.releaser(); last && r != nil {
		r.Release(context.Background(), &sh.f)
	}
}

// dropShared forgets the shared open file; the next callback opens a new
// one. It is released once no callback uses it.
func (e *Entry) dropShared() { e.dropSharedIf(nil) }

// dropSharedIf is dropShared if the shared open file is only (or any, for
// nil): of concurrent GETATTRs that find the same snapshot stale, one
// replaces it.
func (e *Entry) dropSharedIf(only *sharedFile) {
	e.opensMu.Lock()
	sh := e.shared
	if only != nil && sh != only {
		e.opensMu.Unlock()
		return
	}
	e.shared = nil
	last := false
	if sh != nil {
		last = sh.refs == 0
	}
	e.opensMu.Unlock()
	if r := e.releaser(); last && r != nil {
		r.Release(context.Background(), &sh.f)
	}
}
