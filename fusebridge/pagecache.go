package fusebridge

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ramproc/ramproc/handler"
)

// This file serves content made per open (a Generated without a freshness
// bound, not per caller) from the kernel's page cache, so that
// open+read+close costs OPEN alone, where FOPEN_DIRECT_IO costs OPEN, a READ
// and a READ only to learn EOF (the kernel cannot know the size of what is
// made at open). The snapshot the handler took at OPEN is given to the
// kernel before the reply (FUSE_NOTIFY_STORE), with its size, and the reply
// says FOPEN_KEEP_CACHE: the reads of the descriptor are answered from
// those pages, and EOF from that size.
//
// The page cache is one per inode, so this is done only for an open that is
// the inode's only one (sole: no other descriptor of it is open, as far as
// the server knows; a RELEASE not yet answered counts as open, and an open
// that finds only the cached descriptor open waits a moment for its
// RELEASE, which a loop of open+read+close has sent just before): every other
// open is read with FOPEN_DIRECT_IO from its own snapshot, as before, and
// never reads those pages. A new snapshot therefore never changes pages a
// descriptor is reading. (The exception, which no reader of /proc-style
// files does: a descriptor opened while the cached one is open that maps
// the file MAP_PRIVATE fills the pages with its own snapshot, which the
// cached one may then read.)
//
// The kernel's size for the inode (i_size) must be the snapshot's, and the
// kernel takes it from the attributes the server answers (LOOKUP, GETATTR,
// READDIRPLUS, SETATTR), from a store (which only ever grows it, and then
// to exactly the store's end) and from a READ answered short (which
// shrinks it, unless the inode's attribute version moved meanwhile: any
// other answer or notification moves it, so that is no way to rely on).
// So every attribute answer of such an entry shows pageCache.size, the
// length of the longest snapshot stored, and only a snapshot at least
// that long is given to the page cache: i_size is never more than that
// (answers show it, stores reach at most it, READs only shrink), so the
// store makes it exactly the snapshot's length. (An answer racing it,
// asked before the store, is dropped by the kernel, whose attribute
// version a growing store moves.) A shorter snapshot is read with
// FOPEN_DIRECT_IO, as before: shrinking i_size reliably would take an
// answer of the kernel's that nothing overtakes, and a test with
// Entry.Invalidate in a loop showed zeros read past a shorter snapshot's
// end when one did. A snapshot of the same size as the last costs no
// request, a longer one a GETATTR (the store drops the kernel's idea of
// the size until it asks again).
//
// Re-reads. A Generated descriptor that reads from offset 0 again gets a
// new snapshot (seq_file). A cached read sends no request and tells the
// server no offset; but one that reaches the end of the file asks the kernel
// for the size, which asks the server (GETATTR with the descriptor's handle)
// once the attributes have expired. Such an entry's attributes expire when
// the cached descriptor's snapshot is rereadAge old, and that GETATTR then
// makes a new snapshot and stores it (the reader is inside the GETATTR,
// not reading pages). So a descriptor kept open and read again from offset
// 0 (top's way with /proc/stat) reads content at most rereadAge old; one
// that reads a file in pieces for longer than that may get the pieces of
// two snapshots, as a reader of a file with a freshness bound may (the
// GETATTR cannot tell a re-read from offset 0 from the last pieces of a
// first read). A read that stays below the size the descriptor saw (a
// pread of fewer bytes than the file holds) does not ask, and keeps its
// snapshot, also after Entry.Notify, which drops the pages and the
// attributes (the READs that fill the pages again answer from the same
// snapshot: a READ tells the server no reader's offset, only a page's, so
// a new snapshot made there could be read beside pieces of the old); the
// next read that reaches the end gets a new one.
//
// One limit: a descriptor read by two threads at once while its snapshot
// is renewed. The store renews the pages in place and sets the new i_size
// before it copies them (fuse_notify_store), and the kernel's read takes a
// batch of pages before it looks at i_size: a read by the other thread
// that took the old pages then reads them up to the new size, pieces of
// two snapshots and zeros past the older one's end (TestPageCacheStorm
// with two threads reading its descriptor failed so in about one run of
// twenty; dropping the pages before the store does not help, as the
// reader holds them). No order of notifications avoids it; procfs
// serializes the reads of one descriptor, and /proc's readers (top, free,
// vmstat) read each of theirs from one thread.
//
// A SETATTR answer is the one the kernel takes without that version check
// (fuse_do_setattr): answered just before a longer snapshot is stored, it
// would set the older size, and truncate the page that holds it. So no
// snapshot is stored while Entry.Notify's utimensat(2) is under way
// (sendMu, held by notifyNow; stores only try it), and such an entry's
// SETATTR answers expire at once. (A chmod or touch by a user racing an
// open that stores a longer snapshot is not covered: the next store
// mends the page.)
//
// Left to FOPEN_DIRECT_IO, each for its reason: a mount that is
// Restartable (a new process knows nothing of the kernel's pages) or uses
// PerOpenPassthrough (perop.go) or NoOpen (which caches everything with a
// bound); content over maxCachedOpen (kept in memory while the descriptor
// is open); a handler that states its own attributes or takes writes; a
// child of a dynamic directory that is not Fixed, whose attributes expire
// at once (each cached read would ask for them).

// rereadAge is how old a cached descriptor's snapshot may be when it is
// read again to the end (see above): DefaultMaxAge, the bound of content
// the kernel caches that states none.
const rereadAge = DefaultMaxAge

// maxCachedOpen is the largest snapshot served from the page cache.
const maxCachedOpen = 128 << 10

// pageCache is what the server knows of the kernel's page cache of one
// entry served from it; made at its first cached open, dropped when the
// entry is removed.
type pageCache struct {
	// sendMu is held by a store (which waits for the locks of the pages
	// it fills) and by Entry.Notify (see above); stores only try it, and
	// a READ never takes it: the kernel holds the pages a READ fills
	// locked until it is answered, so a READ waiting for a store that
	// waits for its pages would never be answered.
	sendMu sync.Mutex

	mu sync.Mutex
	// size is the size every attribute answer shows: the longest snapshot
	// stored, never less than the kernel's i_size (see above).
	size int64
	// holder is the descriptor read from the pages, nil if none; c is its
	// snapshot (what the pages hold), made at made (Unix nanoseconds; 0
	// after Entry.Invalidate).
	holder *openFile
	c      []byte
	made   int64
	// released, when not nil, is closed at the holder's RELEASE, for the
	// opens that wait for it (waitSole); noWait (Unix nanoseconds) is
	// until when opens do not wait, set when a wait was in vain.
	released chan struct{}
	noWait   int64
	// node is the kernel's inode of the entry.
	node *fileNode
}

// pageCaches maps the entries with a pageCache to it.
type pageCaches struct {
	// used is set at the first pageCache made: until then (a server
	// whose files are all bounded, per caller or RAM) the attribute
	// answers and removals of every file skip the lock and the map.
	used atomic.Bool
	mu   sync.RWMutex
	m    map[*entryCore]*pageCache
}

// pageCacheable reports whether e's content made per open may be served
// from the page cache (see above).
func (e *Entry) pageCacheable() bool {
	o := &e.srv().opts
	return !o.NoOpen && !o.PerOpenPassthrough && !o.Restartable && e.kind == kindFile &&
		!e.perCaller && !e.unknownSize && e.writer() == nil && e.getattrer() == nil &&
		e.snapshotter() != nil && e.timeout() > 0
}

// pageCacheOf returns e's pageCache, nil if it has none.
func (s *Server) pageCacheOf(e *Entry) *pageCache {
	if !s.pcs.used.Load() {
		return nil
	}
	s.pcs.mu.RLock()
	pc := s.pcs.m[e.entryCore]
	s.pcs.mu.RUnlock()
	return pc
}

// make returns the pageCache of n's entry, made if it has none.
func (p *pageCaches) make(n *fileNode) *pageCache {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := n.e.entryCore
	pc := p.m[o]
	if pc == nil {
		if p.m == nil {
			p.m = map[*entryCore]*pageCache{}
			p.used.Store(true)
		}
		// Until now every answer showed size 0 (content made per open has
		// none where it is read with FOPEN_DIRECT_IO): that is the
		// kernel's.
		pc = &pageCache{node: n}
		p.m[o] = pc
	}
	return pc
}

// drop forgets the pageCache of a removed entry, and drops its pages from
// the kernel's cache: a descriptor opened before gets EIO, not them.
func (p *pageCaches) drop(o *entryCore) {
	if !p.used.Load() {
		return
	}
	p.mu.Lock()
	pc := p.m[o]
	delete(p.m, o)
	p.mu.Unlock()
	if pc != nil {
		pc.node.NotifyContent(0, 0)
	}
}

// cacheOpen serves the open of of (tracked; the only open of e when sole)
// from the page cache if it can, and reports whether it did.
func (n *fileNode) cacheOpen(e *Entry, of *openFile, sole bool) bool {
	if !sole || of.f.Writable() || of.f.Reopened || !e.pageCacheable() {
		return false
	}
	snap, ok := e.snapshotter().OpenSnapshot(&of.f)
	if !ok || len(snap) > maxCachedOpen {
		return false
	}
	pc := e.srv().pcs.make(n)
	if !pc.sendMu.TryLock() {
		return false // Entry.Notify under way (see notifyNow)
	}
	defer pc.sendMu.Unlock()
	pc.mu.Lock()
	if pc.holder != nil || !pc.growLocked(int64(len(snap))) {
		// Released, but its Release has not run yet; or shorter than a
		// size the kernel may hold.
		pc.mu.Unlock()
		return false
	}
	pc.holder, pc.c, pc.made = of, snap, time.Now().UnixNano()
	pc.mu.Unlock()
	if !n.send(snap) {
		pc.mu.Lock()
		pc.holder, pc.c = nil, nil
		pc.mu.Unlock()
		return false
	}
	of.cached = true
	e.srv().opts.Metrics.cachedOpens.Add(1)
	return true
}

// soleWait is how long an open that finds the cached descriptor of its file
// still open waits for its RELEASE, and soleBackoff how long opens then do
// not wait if it did not come. A loop of open+read+close sends each OPEN
// right after the RELEASE of the open before (asynchronous, at close),
// which this process may serve second; readers that keep a descriptor
// open, or read at the same time, make the wait vain, and it is not made
// again for a while.
const (
	soleWait    = time.Millisecond
	soleBackoff = 50 * time.Millisecond
)

// waitSole is called for an open of e that is not its only one: when the
// only other is the cached descriptor, it waits up to soleWait for its
// RELEASE, and reports whether of is then the only open.
func (n *fileNode) waitSole(e *Entry, of *openFile) bool {
	if of.f.Writable() || !e.pageCacheable() {
		return false
	}
	pc := e.srv().pageCacheOf(e)
	if pc == nil {
		return false
	}
	now := time.Now().UnixNano()
	pc.mu.Lock()
	if pc.holder == nil || now < pc.noWait {
		pc.mu.Unlock()
		return false
	}
	if pc.released == nil {
		pc.released = make(chan struct{})
	}
	ch := pc.released
	pc.mu.Unlock()
	if e.openCount() != 2 {
		return false
	}
	t := time.NewTimer(soleWait)
	defer t.Stop()
	select {
	case <-ch:
		return e.openCount() == 1
	case <-t.C:
		pc.mu.Lock()
		pc.noWait = time.Now().UnixNano() + int64(soleBackoff)
		pc.mu.Unlock()
		return false
	}
}

// growLocked makes size the one attribute answers show, if it is no
// shorter than the last (see above), and reports whether it did.
func (pc *pageCache) growLocked(size int64) bool {
	if size < pc.size {
		return false
	}
	pc.size = size
	return true
}

// send gives the kernel b as the inode's whole content; under pc.sendMu,
// not pc.mu.
func (n *fileNode) send(b []byte) bool {
	return len(b) == 0 || n.WriteCache(0, b) == 0
}

// cacheRefresh makes a new snapshot for the cached descriptor of, asking
// for its attributes, when its last is older than rereadAge (see above).
func (n *fileNode) cacheRefresh(ctx context.Context, of *openFile) {
	e := n.e
	pc := e.srv().pageCacheOf(e)
	if pc == nil {
		return
	}
	if !pc.sendMu.TryLock() {
		// Entry.Notify under way (see notifyNow), or this GETATTR comes
		// from lseek(SEEK_END), which holds the inode's lock that
		// Notify's utimensat(2) waits for: the next one makes it.
		return
	}
	defer pc.sendMu.Unlock()
	pc.mu.Lock()
	due := of == pc.holder && time.Now().UnixNano()-pc.made > int64(rereadAge)
	pc.mu.Unlock()
	if !due {
		return
	}
	b, ok := e.snapshotNow(ctx)
	if !ok || len(b) > maxCachedOpen {
		return
	}
	pc.mu.Lock()
	if of != pc.holder || !pc.growLocked(int64(len(b))) {
		// Shorter: the descriptor keeps its snapshot; the next read that
		// reaches the end tries again.
		pc.mu.Unlock()
		return
	}
	pc.c, pc.made = b, time.Now().UnixNano()
	pc.mu.Unlock()
	n.send(b)
}

// cacheAttr is the size an attribute answer shows for e, if e is served
// from the page cache, and how long the kernel may trust it: until the
// cached descriptor's snapshot is rereadAge old, so that its next read to
// the end asks (see above).
func (e *Entry) cacheAttr() (size int64, ttl time.Duration, ok bool) {
	pc := e.srv().pageCacheOf(e)
	if pc == nil {
		return 0, 0, false
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	ttl = rereadAge
	if pc.holder != nil {
		ttl = max(rereadAge-time.Duration(time.Now().UnixNano()-pc.made), 0)
	}
	return pc.size, ttl, true
}

// snapshotNow takes a new snapshot of e through a short-lived open of its
// handler.
func (e *Entry) snapshotNow(ctx context.Context) ([]byte, bool) {
	f := handler.OpenFile{Flags: syscall.O_RDONLY}
	if op := e.opener(); op != nil {
		if op.Open(ctx, &f) != nil {
			return nil, false
		}
	}
	b, ok := e.snapshotter().OpenSnapshot(&f)
	if r := e.releaser(); r != nil {
		// The bytes outlive the release: OpenSnapshot's must not be
		// modified afterwards.
		r.Release(ctx, &f)
	}
	return b, ok
}

// cacheRead answers a READ of the cached descriptor of from its snapshot,
// the bytes its pages hold; also after Entry.Invalidate dropped them: a
// READ tells no reader's offset (a page's only), so a new snapshot made
// here could be read beside pieces of the old, and a size changed here
// would be one the kernel has not been told (only cacheOpen and
// cacheRefresh make new ones, with the store and invalidation that go
// with them). No store from here either (see pageCache.sendMu).
func (n *fileNode) cacheRead(of *openFile, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	pc := n.e.srv().pageCacheOf(n.e)
	if pc == nil {
		return nil, syscall.EIO // removed
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.holder != of || off >= int64(len(pc.c)) {
		return fuse.ReadResultData(nil), 0
	}
	k := copy(dest, pc.c[off:])
	return fuse.ReadResultData(dest[:k]), 0
}

// cacheSetattrTTL is the attribute timeout of a SETATTR answer for e: none
// for an entry served from the page cache. The kernel takes a SETATTR
// answer's size without the check of its attribute version that drops a
// GETATTR answer overtaken by a store (fuse_do_setattr), so the size may be
// one a new snapshot has since replaced; expired at once, the attributes
// are asked for again by the next read that reaches that size (and a read
// below it that misses a page gets a short answer, which shrinks it).
func (e *Entry) cacheSetattrTTL(ttl time.Duration) time.Duration {
	if e.srv().pageCacheOf(e) != nil {
		return 0
	}
	return ttl
}

// cacheRelease ends the cached descriptor of.
func (n *fileNode) cacheRelease(of *openFile) {
	pc := n.e.srv().pageCacheOf(n.e)
	if pc == nil {
		return // removed
	}
	pc.mu.Lock()
	if pc.holder == of {
		pc.holder, pc.c = nil, nil
		if pc.released != nil {
			close(pc.released)
			pc.released = nil
		}
	}
	pc.mu.Unlock()
}

// cacheStale marks the snapshot of e's cached descriptor as one to make
// anew at its next GETATTR, for Entry.Invalidate, and reports whether e
// has pages in the kernel's cache to drop.
func (e *Entry) cacheStale() bool {
	pc := e.srv().pageCacheOf(e)
	if pc == nil {
		return false
	}
	pc.mu.Lock()
	pc.made = 0
	pc.mu.Unlock()
	return true
}
