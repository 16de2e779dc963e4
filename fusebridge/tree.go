package fusebridge

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ramproc/ramproc/handler"
)

// This file names things: the tree of directories, files and symbolic links
// a Server publishes, and the dynamic directories whose children a
// handler.DirHandler produces on demand. File I/O lives in entry.go and
// node.go, the mount and its connections in server.go and split.go.
//
// All the naming state of one connection (every Dir's children, removed
// flags, bind state) is guarded by its Server.mu; callbacks of handlers
// never run under it.

// Dir is a directory of the mount, the counterpart of a proc_mkdir
// directory: the root (Server.Root), one made with Dir.Mkdir, or a dynamic
// directory published with Dir.Create and a handler.DirHandler.
type Dir struct {
	srv    *Server
	parent *Dir // nil for the root
	name   string
	ino    uint64
	perm   uint32 // stat(2) permission bits
	born   time.Time
	// self is the entry that names this directory in its parent; nil for
	// the root.
	self *Entry
	// dyn produces the children of a dynamic directory; nil for a static
	// one.
	dyn handler.DirHandler
	// perCaller: dyn's answers depend on the caller (handler.PerCaller),
	// so a miss retires no child (see sweep).
	perCaller bool

	// Guarded by srv.mu.
	children names // static children; a dynamic one's children seen so far
	subdirs  int   // children that are directories (st_nlink - 2)
	removed  bool
	// pinned counts the entries in this subtree that must stay on the
	// main connection of a split mount, fresh those with a freshness
	// bound of their own (see split.go).
	pinned int
	fresh  int
	// twin is this directory on the second connection of a split mount
	// (split.go), or nil; set on the main connection's directories (the
	// root's once the second connection is made).
	twin *Dir
	// sweepAt is the number of children at which a per-caller dynamic
	// directory next sweeps them (0: sweepMin); sweeping is set while a
	// sweep runs (percaller.go).
	sweepAt  int
	sweeping atomic.Bool

	// missed is set once a lookup in d failed: only then can the kernel
	// hold a negative dentry that a new name must drop (a notification
	// per Create would cost a write to /dev/fuse each).
	missed atomic.Bool
	// onMiss publishes names on a lookup miss (OnMiss); set on d and on
	// its twin.
	onMiss atomic.Pointer[func(ctx context.Context, name string)]
	// resolving counts the lookups of each name whose OnMiss hook runs;
	// guarded by srv.mu.
	resolving map[string]int
}

// missHook is a Dir's OnMiss hook, nil for none.
type missHook = *func(ctx context.Context, name string)

// Root returns the mount's top directory.
func (s *Server) Root() *Dir { return s.rootDir }

func newDir(s *Server, parent *Dir, name string, ino uint64, mode fs.FileMode) *Dir {
	return &Dir{srv: s, parent: parent, name: name, ino: ino, perm: handler.UnixMode(mode), born: time.Now()}
}

// Name returns the directory's name in its parent ("" for the root).
func (d *Dir) Name() string { return d.name }

// Path returns the directory's path relative to the mountpoint ("" for the
// root), as Server.Create and Server.Lookup take it.
func (d *Dir) Path() string {
	if d.parent == nil {
		return ""
	}
	if p := d.parent.Path(); p != "" {
		return p + "/" + d.name
	}
	return d.name
}

// entryPath is the path of the child name of d relative to the mountpoint.
func (d *Dir) entryPath(name string) string {
	if p := d.Path(); p != "" {
		return p + "/" + name
	}
	return name
}

func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 255 {
		return fmt.Errorf("fusebridge: %q is not a valid file name: %w", name, syscall.EINVAL)
	}
	return nil
}

// Mkdir creates the static directory name in d with the given permission
// bits (0o555 is what /proc directories have) and returns it. It fails
// with EEXIST if the name is taken, EINVAL if it is not a valid file name,
// and ENOENT if d has been removed or is a dynamic directory.
func (d *Dir) Mkdir(name string, mode fs.FileMode) (*Dir, error) {
	return d.mkdir(name, mode, nil)
}

// MkdirOnMiss is Mkdir of a directory that has the OnMiss hook fn from
// the moment it is seen: no lookup in it can miss without asking fn, nor
// leave a negative entry in the kernel, as one between Mkdir and OnMiss
// could.
func (d *Dir) MkdirOnMiss(name string, mode fs.FileMode, fn func(ctx context.Context, name string)) (*Dir, error) {
	return d.mkdir(name, mode, &fn)
}

func (d *Dir) mkdir(name string, mode fs.FileMode, miss missHook) (*Dir, error) {
	e, err := d.srv.publish(d, name, mode, nil, kindDir, 0, nil, miss)
	if err != nil {
		return nil, err
	}
	if err := d.srv.mirror(d, e, mode, nil); err != nil {
		e.Remove()
		return nil, err
	}
	return e.dir, nil
}

// MkdirAll creates the directory path (components separated by "/") below
// d, with every missing component made with mode, and returns the last.
// Components that exist must be static directories.
func (d *Dir) MkdirAll(path string, mode fs.FileMode) (*Dir, error) {
	cur := d
	for _, name := range strings.Split(path, "/") {
		if name == "" {
			continue
		}
		if e := cur.lookupEntry(name); e != nil {
			if e.dir == nil || e.dir.dyn != nil {
				return nil, fmt.Errorf("fusebridge: mkdir %q: %q is not a static directory: %w", path, name, syscall.ENOTDIR)
			}
			cur = e.dir
			continue
		}
		next, err := cur.Mkdir(name, mode)
		if errors.Is(err, syscall.EEXIST) {
			if e := cur.lookupEntry(name); e != nil && e.dir != nil && e.dir.dyn == nil {
				next, err = e.dir, nil
			}
		}
		if err != nil {
			return nil, err
		}
		cur = next
	}
	return cur, nil
}

// Create publishes h under name in d with the given permission bits
// (setuid, setgid and sticky included) and returns its entry. h is one of:
//
//   - a file handler: any value implementing the file interfaces of package
//     handler (Reader, Writer, ...); the operations it supports are those
//     it implements. When it implements handler.Setattrer it owns its
//     attributes, and Create passes mode to it through Setattr; otherwise
//     the bridge keeps the mode;
//   - a handler.Symlinker (handler.Link, handler.LinkFunc): a symbolic link;
//   - a handler.DirHandler: a dynamic directory, whose children it produces.
//
// Create fails with EEXIST if the name is taken, EINVAL if it is not a valid
// file name or h is nil, and ENOENT if d has been removed or is dynamic.
// Content that must not be cached (handler.PerCaller, files of unknown
// size, dynamic directories) is served by a connection that keeps OPEN; an
// unprivileged NoOpen mount has none, and there Create fails with EINVAL
// and says why, rather than serve it from the kernel's cache (see
// Options.NoOpen).
func (d *Dir) Create(name string, mode fs.FileMode, h any) (*Entry, error) {
	if h == nil {
		return nil, fmt.Errorf("fusebridge: nil handler for %q: %w", name, syscall.EINVAL)
	}
	k := kindOf(h)
	if d.srv.opts.NoOpen && d.srv.mountFd < 0 && d.srv.companion == nil {
		if why := needsOpen(h, k); why != "" {
			return nil, fmt.Errorf("fusebridge: create %q: %s cannot be served on this NoOpen mount, where the kernel caches every file (as root a second connection that keeps OPEN would serve it); mount without NoOpen, or as root: %w", name, why, syscall.EINVAL)
		}
	}
	e, err := d.srv.publish(d, name, mode, h, k, 0, nil, nil)
	if err != nil {
		return nil, err
	}
	if err := d.srv.mirror(d, e, mode, h); err != nil {
		e.Remove()
		return nil, err
	}
	e.subscribe(h) // notify.go: handler.Changer
	return e, nil
}

// Lookup returns the entry published under name in d, or nil. For a
// dynamic directory it returns the children the bridge has seen (through
// a lookup or a listing) and not yet seen vanish (for a per-caller one:
// not yet retired or forgotten, see handler.DirHandler).
func (d *Dir) Lookup(name string) *Entry { return d.lookupEntry(name) }

// Remove removes d and everything below it, as remove_proc_subtree does:
// callbacks in flight finish (Remove waits for them), new lookups get
// ENOENT, descriptors opened before get EIO, and a process whose working
// directory is inside gets ENOENT for every lookup. The root cannot be
// removed (EPERM; Server.Unmount is its removal).
func (d *Dir) Remove() error {
	if d.self == nil {
		return fmt.Errorf("fusebridge: the root directory cannot be removed (Server.Unmount removes everything): %w", syscall.EPERM)
	}
	return d.self.Remove()
}

// OnMiss makes d, a static directory, ask fn before it answers a lookup
// of a name it does not hold: fn may publish the name (with Mkdir or
// Create, in d, from the lookup's own goroutine), and the lookup then
// finds it. This is for names that come into being outside the program,
// such as one directory per cgroup, when a reader may reach a new one
// before the program has heard of it: fn checks the outside world for
// that one name. fn must publish nothing else in d, and remove nothing
// (the kernel holds d locked while it looks up: a removal or a
// notification there would wait for the lookup that waits for fn).
//
// A miss costs a call of fn and nothing else: the kernel caches no
// negative entry in d from then on (so a name fn did not publish is asked
// again at the next lookup), and the bridge keeps nothing for names that
// fn did not publish. A miss before the hook is set may be cached for
// Options.AttrTimeout, hiding the name from fn: make the directory with
// MkdirOnMiss for a hook from the start. fn runs
// for every connection that serves d (on a mount made by root, d may be
// reached through a bind of the no-open connection). nil removes the
// hook.
func (d *Dir) OnMiss(fn func(ctx context.Context, name string)) {
	var p *func(ctx context.Context, name string)
	if fn != nil {
		p = &fn
	}
	d.onMiss.Store(p)
	d.srv.mu.RLock()
	tw := d.twin
	d.srv.mu.RUnlock()
	if tw != nil {
		tw.onMiss.Store(p)
	}
}

// resolve runs d's OnMiss hook fn for name, marked as resolving.
func (d *Dir) resolve(ctx context.Context, fn func(ctx context.Context, name string), name string) {
	d.srv.mu.Lock()
	if d.resolving == nil {
		d.resolving = map[string]int{}
	}
	d.resolving[name]++
	d.srv.mu.Unlock()
	defer func() {
		d.srv.mu.Lock()
		if d.resolving[name]--; d.resolving[name] == 0 {
			delete(d.resolving, name)
		}
		d.srv.mu.Unlock()
	}()
	fn(ctx, name)
}

// Dir returns the directory an entry names (made by Mkdir, or dynamic),
// or nil for a file or a symbolic link.
func (e *Entry) Dir() *Dir { return e.dir }

// Path returns the entry's path relative to the mountpoint.
func (e *Entry) Path() string { return e.parent.entryPath(e.name) }

// lookupKernel is lookupEntry for the kernel's LOOKUP: a miss is recorded
// under the lock, so that a Create that follows sees it and drops the
// negative dentry the kernel is about to cache.
func (d *Dir) lookupKernel(name string) *Entry {
	d.srv.mu.RLock()
	defer d.srv.mu.RUnlock()
	if d.removed {
		return nil
	}
	e := d.children.get(name)
	if e == nil && d.onMiss.Load() == nil {
		// (With OnMiss the kernel caches no miss: see dirNode.Lookup.)
		d.missed.Store(true)
	}
	return e
}

func (d *Dir) lookupEntry(name string) *Entry {
	d.srv.mu.RLock()
	defer d.srv.mu.RUnlock()
	if d.removed {
		return nil
	}
	return d.children.get(name)
}

// walk resolves the directory part of a slash-separated path and returns
// the directory and the last component.
func (s *Server) walk(path string) (*Dir, string, error) {
	parts := strings.Split(path, "/")
	for _, name := range parts {
		if err := validName(name); err != nil {
			if len(parts) > 1 {
				err = fmt.Errorf("fusebridge: %q is not a valid path: %w", path, syscall.EINVAL)
			}
			return nil, "", err
		}
	}
	d := s.rootDir
	for i, name := range parts[:len(parts)-1] {
		e := d.lookupEntry(name)
		if e == nil {
			return nil, "", fmt.Errorf("fusebridge: %q: no directory %q: %w", path, strings.Join(parts[:i+1], "/"), syscall.ENOENT)
		}
		if e.dir == nil {
			return nil, "", fmt.Errorf("fusebridge: %q: %q is not a directory: %w", path, strings.Join(parts[:i+1], "/"), syscall.ENOTDIR)
		}
		d = e.dir
	}
	return d, parts[len(parts)-1], nil
}

// Create publishes h under path, a file name or names separated by "/"
// ("sys/kernel/level") of which all but the last are existing directories:
// Dir.Create in the directory the path names (see there for h and errors).
// Missing directories are ENOENT; MkdirAll makes them.
func (s *Server) Create(path string, mode fs.FileMode, h any) (*Entry, error) {
	d, name, err := s.walk(path)
	if err != nil {
		return nil, err
	}
	return d.Create(name, mode, h)
}

// MkdirAll creates the directory path below the root and every missing
// directory on the way, with mode; see Dir.MkdirAll.
func (s *Server) MkdirAll(path string, mode fs.FileMode) (*Dir, error) {
	return s.rootDir.MkdirAll(path, mode)
}

// Lookup returns the entry published under path ("name" or "a/b/name"), or
// nil.
func (s *Server) Lookup(path string) *Entry {
	d, name, err := s.walk(path)
	if err != nil {
		return nil
	}
	return d.lookupEntry(name)
}

// kind is what an Entry names.
type kind uint8

const (
	kindFile kind = iota
	kindLink
	kindDir
)

func kindOf(h any) kind {
	switch h.(type) {
	case handler.DirHandler:
		return kindDir
	case handler.Symlinker:
		return kindLink
	}
	return kindFile
}

// needsOpen says why h can only be served on a connection that keeps OPEN,
// or "" if a no-open connection serves it as well.
func needsOpen(h any, k kind) string {
	switch k {
	case kindDir:
		if _, ok := h.(handler.DirHandler); ok {
			return "a dynamic directory (its generated children cannot be refreshed)"
		}
		return ""
	case kindLink:
		return ""
	}
	if pc, ok := h.(handler.PerCaller); ok && pc.PerCaller() {
		return "a per-caller file (handler.PerCaller)"
	}
	if _, sized := h.(handler.Getattrer); unknownSize(h) && !sized {
		// With a Getattrer the handler states its size, which a no-open
		// connection then trusts; elsewhere such files go to a connection
		// that keeps OPEN all the same (Entry.pins).
		return "a file of unknown size (a handler.Reader without SnapshotSizer or Getattrer)"
	}
	return ""
}

// unknownSize reports a file whose size the bridge cannot tell before it is
// read to the end (a streamed file: a handler.Reader that takes no snapshot
// of known size and has no backing file): the kernel must then read it with
// FOPEN_DIRECT_IO, to the end, on a connection that keeps OPEN, instead of
// caching it up to a size.
func unknownSize(h any) bool {
	if _, ok := h.(handler.Reader); !ok {
		return false
	}
	if _, ok := h.(handler.BackingFiler); ok {
		return false
	}
	_, ok := h.(handler.SnapshotSizer)
	return !ok
}

// publish makes the entry of h (nil for a static directory) named name in d
// with inode number ino (0: the next free) on s, and links it into d.
// core, if not nil, is the state the entry shares with its twin on the
// other connection (newEntry); miss is a static directory's OnMiss hook,
// set before any lookup can see it.
func (s *Server) publish(d *Dir, name string, mode fs.FileMode, h any, k kind, ino uint64, core *entryCore, miss missHook) (*Entry, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if d.srv != s {
		return nil, fmt.Errorf("fusebridge: create %q: the directory belongs to another mount: %w", name, syscall.EINVAL)
	}
	if d.dyn != nil {
		return nil, fmt.Errorf("fusebridge: create %q: %s is a dynamic directory, whose handler makes its children: %w", name, d.Path(), syscall.ENOENT)
	}
	s.mu.Lock()
	if err := s.checkFree(d, name); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	if ino == 0 {
		// restart: the inode number (node ID) the kernel knows the path by
		if ino = s.inheritedIno(d.entryPath(name)); ino == 0 {
			ino = s.nextIno
			s.nextIno++
		}
	}
	s.mu.Unlock()

	e := newEntry(s, d, name, ino, mode, h, k, core)
	if e.dir != nil && miss != nil {
		e.dir.onMiss.Store(miss)
	}
	if sa := e.setattrer(); sa != nil {
		m := mode
		if err := sa.Setattr(context.Background(), nil, &handler.SetAttr{Mode: &m}); err != nil {
			return nil, fmt.Errorf("fusebridge: create %q: setting mode: %w", name, err)
		}
	}

	s.mu.Lock()
	if err := s.checkFree(d, name); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	d.children.set(e)
	if k == kindDir {
		d.subdirs++
	}
	// A name a lookup is resolving (OnMiss) has no negative entry to
	// drop, and dropping it would wait for that very lookup.
	missed := d.missed.Load() && d.resolving[name] == 0
	d.count(e, 1)
	s.mu.Unlock()
	// The kernel may hold a negative dentry for the name from an earlier
	// lookup; with long timeouts it would hide the new file.
	if missed {
		d.notifyGone(name)
	}
	return e, nil
}

func (s *Server) checkFree(d *Dir, name string) error {
	if s.closing {
		return fmt.Errorf("fusebridge: create %q: the server is unmounted: %w", name, syscall.ENOTCONN)
	}
	if d.removed {
		return fmt.Errorf("fusebridge: create %q: directory %q was removed: %w", name, d.Path(), syscall.ENOENT)
	}
	if d.children.get(name) != nil {
		return fmt.Errorf("fusebridge: create %q: %w", name, syscall.EEXIST)
	}
	return nil
}

// unlink takes e out of its directory; false if it was not there. For a
// directory it marks the whole subtree removed and returns its entries,
// deepest first, so that the caller can kill them outside the lock.
func (s *Server) unlink(e *Entry) (bool, []*Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := e.parent
	if d.removed || d.children.get(e.name) != e {
		return false, nil
	}
	d.children.delete(e.name)
	if e.kind == kindDir {
		d.subdirs--
	}
	d.count(e, -1)
	var sub []*Entry
	if e.dir != nil {
		sub = e.dir.detachLocked(nil)
	}
	return true, sub
}

// count adds sign times e (with its subtree) to the pinned and fresh counts
// of d and the directories above it; under s.mu.
func (d *Dir) count(e *Entry, sign int) {
	pinned, fresh := 0, 0
	if e.pins() {
		pinned++
	}
	if e.fresh() {
		fresh++
	}
	if e.dir != nil {
		pinned += e.dir.pinned
		fresh += e.dir.fresh
	}
	for p := d; p != nil; p = p.parent {
		p.pinned += sign * pinned
		p.fresh += sign * fresh
	}
}

// detachLocked marks d and its subtree removed and appends its entries,
// children before their directories.
func (d *Dir) detachLocked(list []*Entry) []*Entry {
	d.removed = true
	for c := range d.children.all {
		if c.dir != nil {
			list = c.dir.detachLocked(list)
		}
		list = append(list, c)
	}
	d.children.clear()
	return list
}

// sortedChildren returns d's children ordered by inode number: the order
// of its listing, in which a child's position never moves while it exists.
func (d *Dir) sortedChildren() []*Entry {
	d.srv.mu.RLock()
	list := make([]*Entry, 0, d.children.len())
	for e := range d.children.all {
		list = append(list, e)
	}
	d.srv.mu.RUnlock()
	sort.Slice(list, func(i, j int) bool { return list[i].ino < list[j].ino })
	return list
}

// isRemoved reports whether d has left the tree.
func (d *Dir) isRemoved() bool {
	d.srv.mu.RLock()
	defer d.srv.mu.RUnlock()
	return d.removed
}

// dynLookup asks a dynamic directory's handler for name and returns its
// entry: the one seen before under that name, or a new one.
func (d *Dir) dynLookup(ctx context.Context, name string) (*Entry, syscall.Errno) {
	d.srv.mu.RLock()
	start := d.srv.nextIno
	d.srv.mu.RUnlock()
	c, err := d.dyn.Lookup(ctx, name)
	if err != nil {
		errno := handler.Errno(err)
		// In a per-caller directory a miss is this caller's only; the
		// handler says when a child is gone for everyone.
		if errno == syscall.ENOENT && (!d.perCaller || errors.Is(err, handler.ErrVanished)) {
			d.forget(name, start)
		}
		return nil, errno
	}
	if c.Node == nil {
		d.srv.log.Warn("a dynamic directory's Lookup returned a child without a Node", "dir", d.Path(), "name", name)
		return nil, syscall.EIO
	}
	c.Name = name
	e := d.adopt(c)
	if e == nil {
		return nil, syscall.ENOENT
	}
	return e, 0
}

// dynList lists a dynamic directory, adopting every child shown and, unless
// the directory is per-caller, forgetting those seen before that it no
// longer shows.
func (d *Dir) dynList(ctx context.Context) ([]*Entry, syscall.Errno) {
	// Children adopted while the handler lists (by a concurrent lookup)
	// may be newer than its answer: only those seen before it started,
	// whose inode numbers are lower, can be known to have vanished.
	d.srv.mu.RLock()
	start := d.srv.nextIno
	d.srv.mu.RUnlock()
	kids, err := d.dyn.List(ctx)
	if err != nil {
		return nil, handler.Errno(err)
	}
	shown := make(map[string]struct{}, len(kids))
	list := make([]*Entry, 0, len(kids))
	for _, c := range kids {
		if validName(c.Name) != nil || c.Node == nil {
			continue // a handler bug; the name could not be looked up
		}
		if _, dup := shown[c.Name]; dup {
			continue
		}
		shown[c.Name] = struct{}{}
		if e := d.adopt(c); e != nil {
			list = append(list, e)
		}
	}
	if d.perCaller {
		// Another caller may see what this one does not.
		sort.Slice(list, func(i, j int) bool { return list[i].ino < list[j].ino })
		return list, 0
	}
	var gone, vanished []*Entry
	d.srv.mu.Lock()
	for e := range d.children.all {
		if _, ok := shown[e.name]; !ok && e.ino < start {
			vanished = append(vanished, e) // dropped after the loop, which must not delete
		}
	}
	for _, e := range vanished {
		gone = append(gone, d.dropLocked(e)...)
	}
	d.srv.mu.Unlock()
	d.killGone(gone)
	sort.Slice(list, func(i, j int) bool { return list[i].ino < list[j].ino })
	return list, 0
}

// adopt returns the entry of child c of the dynamic directory d: the one
// already known under c.Name if it is of the same kind and generation (its
// inode number and Node stay), a new one otherwise (the old one retired).
// nil if d was removed.
func (d *Dir) adopt(c handler.Child) *Entry {
	s := d.srv
	k := kindOf(c.Node)
	s.mu.RLock()
	e := d.children.get(c.Name)
	removed := d.removed
	same := e != nil && e.kind == k && e.gen == c.Gen
	if same && !removed {
		// Marked under the lock, so that a sweep that has not yet
		// forgotten it no longer will.
		e.mark.Store(markSeen)
	}
	s.mu.RUnlock()
	if removed {
		return nil
	}
	if same {
		e.perm.Store(handler.UnixMode(c.Mode))
		return e
	}
	s.mu.Lock()
	if d.removed {
		s.mu.Unlock()
		return nil
	}
	var gone []*Entry
	if old := d.children.get(c.Name); old != nil {
		if old.kind == k && old.gen == c.Gen {
			old.mark.Store(markSeen)
			s.mu.Unlock()
			return old
		}
		gone = d.dropLocked(old)
	}
	e = newEntry(s, d, c.Name, s.nextIno, c.Mode, c.Node, k, nil)
	e.gen = c.Gen
	e.fixed = c.Fixed
	s.nextIno++
	e.mark.Store(markSeen)
	d.children.set(e)
	sweep := d.perCaller && d.children.len() >= d.sweepLimitLocked()
	s.mu.Unlock()
	d.killGone(gone)
	if sweep {
		d.sweep()
	}
	return e
}

// killGone kills entries dropped from the dynamic directory d; a fixed
// child among them also loses the name the kernel caches for it.
func (d *Dir) killGone(gone []*Entry) {
	for _, g := range gone {
		g.kill()
		if g.fixed && g.parent == d {
			d.notifyGone(g.name)
		}
	}
}

// forget drops the child name of a dynamic directory, which its handler no
// longer shows: descriptors on it get EIO, and a child of that name seen
// later is a new one (a new inode number). Only a child adopted before the
// handler answered (inode number below before) is dropped.
func (d *Dir) forget(name string, before uint64) {
	d.srv.mu.Lock()
	var gone []*Entry
	if e := d.children.get(name); e != nil && e.ino < before {
		gone = d.dropLocked(e)
	}
	d.srv.mu.Unlock()
	d.killGone(gone)
}

// dropLocked takes e out of the dynamic directory d and returns what must
// be killed: e and, for a directory, its subtree.
func (d *Dir) dropLocked(e *Entry) []*Entry {
	d.children.delete(e.name)
	var list []*Entry
	if e.dir != nil {
		list = e.dir.detachLocked(nil)
	}
	return append(list, e)
}
