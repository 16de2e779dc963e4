package fusebridge

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/handler"
)

// This file holds the second connection of a split mount: the no-open one
// beside a main connection that keeps OPEN (for files with a freshness
// bound, and with NoOpenHandlers every handler file that may be cached),
// or the one that keeps OPEN beside a NoOpen mount.
//
// The kernel decides per connection whether files are opened with a request
// (OPEN, needed to hand it a passthrough backing file) or without (no-open,
// which lets it cache a file across opens, so that cat costs no request).
// A /proc-style mount wants both: passthrough for the RAM file, no-open for
// generated files. So a NoOpenHandlers mount runs a second connection,
// mounted nowhere (fsmount gives a detached mount), and bind-mounts each
// handler entry's file from it over the same name in the main directory.
// The main directory still lists the name (with the same inode number) and
// still serves it until the bind is in place, so a lookup never fails in
// between; path lookups then cross into the second connection.

// On a NoOpen mount the roles swap: the second connection keeps OPEN and
// serves, through the same binds, what a no-open connection must not cache.

// mountCompanion mounts and starts the second connection of s, in the mode
// the main one does not have (no-open beside a passthrough main one; OPEN
// beside a NoOpen one).
func (s *Server) mountCompanion() (*Server, error) {
	dev, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	copts := companionOptions(s) // handover.go
	mfd, err := detachedFuseMount(dev, s.uid, s.gid, s.opts.AllowOther, copts.maxWrite())
	if err != nil {
		unix.Close(dev)
		return nil, err
	}
	c := newServer(s.mnt, copts)
	c.mountFd = mfd
	// go-fuse serves an already mounted /dev/fuse descriptor given as
	// /dev/fd/N, and owns it from then on.
	if err := c.start("/dev/fd/"+strconv.Itoa(dev), false); err != nil {
		unix.Close(mfd)
		return nil, fmt.Errorf("serve the second connection: %w", err)
	}
	// Only now: stat(2) on the mount asks the server.
	var st unix.Stat_t
	if err := unix.Fstat(mfd, &st); err != nil {
		c.Unmount()
		return nil, fmt.Errorf("stat the second mount: %w", err)
	}
	c.connID = unix.Minor(st.Dev)
	// go-fuse provokes one POLL at mount so that it can answer ENOSYS and
	// the kernel never sends another, but only on mounts it attached by
	// path. Without that, a Go program that opens a file of its own mount
	// (a test, say) registers it with the runtime's epoll, whose POLL
	// request waits on a thread the garbage collector cannot stop: a
	// collection then stops every goroutine that could answer it.
	// The hack's file is open for a moment: no child may be forked with
	// it (see start, which does the same for the main connection's).
	syscall.ForkLock.RLock()
	err = pollHack(mfd)
	syscall.ForkLock.RUnlock()
	if err != nil {
		c.Unmount()
		return nil, err
	}
	return c, nil
}

// setCompanion makes c the second connection of s. Its root is the twin
// of s's root, through which Entry.twin finds the twins of top-level
// names.
func (s *Server) setCompanion(c *Server) {
	s.mu.Lock()
	s.rootDir.twin = c.rootDir
	s.mu.Unlock()
	s.companion = c
}

// pollHack does go-fuse's poll hack on the mount mfd: go-fuse itself
// answers for this name, and answers its POLL with ENOSYS.
func pollHack(mfd int) error {
	fd, err := unix.Openat(mfd, ".go-fuse-epoll-hack", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("switching off POLL on the no-open connection: %w", err)
	}
	defer unix.Close(fd)
	unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	return nil
}

// detachedFuseMount creates a FUSE mount served through dev with the main
// mount's options, attached nowhere, and returns its mount descriptor.
func detachedFuseMount(dev int, uid, gid uint32, allowOther bool, maxRead int) (int, error) {
	fsfd, err := unix.Fsopen("fuse", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsopen fuse: %w", err)
	}
	defer unix.Close(fsfd)
	params := [][2]string{
		{"source", "ramproc"},
		{"subtype", "ramproc"},
		{"fd", strconv.Itoa(dev)},
		{"rootmode", strconv.FormatUint(unix.S_IFDIR, 8)},
		{"user_id", strconv.FormatUint(uint64(uid), 10)},
		{"group_id", strconv.FormatUint(uint64(gid), 10)},
		{"max_read", strconv.Itoa(maxRead)},
	}
	for _, p := range params {
		if err := unix.FsconfigSetString(fsfd, p[0], p[1]); err != nil {
			return -1, fmt.Errorf("fsconfig %s=%s: %w", p[0], p[1], err)
		}
	}
	flags := []string{"default_permissions"}
	if allowOther {
		flags = append(flags, "allow_other")
	}
	for _, f := range flags {
		if err := unix.FsconfigSetFlag(fsfd, f); err != nil {
			return -1, fmt.Errorf("fsconfig %s: %w", f, err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return -1, fmt.Errorf("fsconfig create: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return -1, fmt.Errorf("fsmount: %w", err)
	}
	return mfd, nil
}

// mirror publishes e, just created in d on the main connection, on the
// second connection too when it belongs there (companionSuits), and makes
// the kernel reach it there: through a bind of a directory above it, or a
// bind of its own. Static directories and links are mirrored always; on a NoOpenHandlers mount each is one
// bind for its whole subtree, until an entry that must stay on the main
// connection (Entry.pins) is created inside: the bind above it is then
// replaced by binds of its children. A bind that fails leaves the entry
// served by the main connection, slower but correct.
func (s *Server) mirror(d *Dir, e *Entry, mode fs.FileMode, h any) error {
	s.bindMu.Lock()
	defer s.bindMu.Unlock()
	if s.companion == nil && (!s.wantsCompanion(e) || s.ensureCompanion() == nil) {
		return nil
	}
	return s.mirrorLocked(d, e, mode, h)
}

// wantsCompanion reports whether e, in the default layout of a mount made
// by root, is the kind of file that needs the second connection (one with
// a freshness bound).
func (s *Server) wantsCompanion(e *Entry) bool {
	return s.freshOnly() && s.mountFd < 0 && e.fresh() && os.Geteuid() == 0
}

// ensureCompanion makes the second, no-open connection of the default
// layout, with the first file that has a freshness bound, and mirrors the
// static directories and links published so far onto it (each further one
// is mirrored at its Create); under bindMu. It returns nil if there is
// none (the mount is being unmounted, or making it failed: bounded files
// are then generated per open, which keeps their bound).
func (s *Server) ensureCompanion() *Server {
	if s.companion != nil {
		return s.companion
	}
	s.mu.RLock()
	closing := s.closing
	s.mu.RUnlock()
	if closing || s.companionFailed {
		return nil
	}
	c, err := s.mountCompanion()
	if err != nil {
		s.companionFailed = true
		s.log.Info("no second no-open connection; files with a freshness bound are generated per open on the main one", "reason", err)
		return nil
	}
	s.setCompanion(c)
	var walk func(d *Dir)
	walk = func(d *Dir) {
		for _, ch := range d.sortedChildren() {
			static := ch.dir != nil && ch.dir.dyn == nil
			if !static && ch.kind != kindLink {
				continue
			}
			var h any
			if ch.kind == kindLink {
				h = ch.h
			}
			s.mirrorLocked(d, ch, handler.ModeFromUnix(ch.perm.Load()), h)
			if static {
				walk(ch.dir)
			}
		}
	}
	walk(s.rootDir)
	return c
}

// mirrorLocked is mirror under bindMu, with the second connection made.
func (s *Server) mirrorLocked(d *Dir, e *Entry, mode fs.FileMode, h any) error {
	c := s.companion
	if e.twin() != nil {
		return nil // mirrored already, by ensureCompanion
	}
	// Static directories and links are mirrored always, so that the second
	// connection has every path and a bound directory every name.
	static := e.dir != nil && e.dir.dyn == nil
	if !static && e.kind != kindLink && !s.companionSuits(e) {
		if !s.opts.NoOpen && e.pins() {
			if b := s.boundAbove(d); b != nil {
				s.unbind(b)
			}
		}
		return nil
	}
	// On a NoOpen mount the main connection would serve what must not be
	// cached from the kernel's cache: there a failure fails the Create.
	must := s.opts.NoOpen && s.companionSuits(e)
	ct := d.twin
	if d.parent == nil {
		ct = c.rootDir
	}
	if ct == nil {
		if must {
			return fmt.Errorf("fusebridge: create %q: its directory is not on the connection that keeps OPEN: %w", e.Path(), syscall.EIO)
		}
		return nil // d itself is not mirrored
	}
	var miss missHook
	if e.dir != nil {
		miss = e.dir.onMiss.Load()
	}
	// A file or a link shares its core with its twin: one handler, one
	// set of callbacks, descriptors and attributes for both connections.
	// A directory is one per connection, each with its own children.
	var core *entryCore
	if e.dir == nil {
		core = e.entryCore
	}
	ce, err := c.publish(ct, e.name, mode, h, e.kind, e.ino, core, miss)
	if err != nil {
		if must {
			return fmt.Errorf("fusebridge: create %q on the connection that keeps OPEN: %w", e.Path(), err)
		}
		s.bindFailed(e, err)
		return nil
	}
	if e.dir != nil {
		s.mu.Lock()
		e.dir.twin = ce.dir
		s.mu.Unlock()
		ce.dir.onMiss.Store(e.dir.onMiss.Load()) // OnMiss since publish
	}
	if s.boundAbove(d) != nil || !s.companionSuits(e) || (static && s.opts.NoOpen) {
		// Reached through the directory's bind, or served by the main
		// connection where no bind is (links, and on a NoOpen mount the
		// static directories).
		return nil
	}
	if s.freshOnly() && e.kind == kindFile {
		// One bind for the largest directory around it that holds
		// nothing else, if there is one: a tree of bounded files is one
		// mount, not one per file.
		if top := s.unpinnedTop(d); top != nil {
			s.rejoinLocked(top)
			if s.boundAbove(d) != nil {
				return nil
			}
		}
	}
	if err := s.bind(e); err != nil && must {
		return fmt.Errorf("fusebridge: create %q: %w", e.Path(), err)
	}
	return nil
}

// freshOnly reports the default layout of a split mount: only files with a
// freshness bound of their own (handler.AgeBound) are served by the no-open
// connection; everything else stays on the main one, which keeps OPEN, so
// a tree without such files has no bind mount at all and stops with a
// plain umount.
func (s *Server) freshOnly() bool { return !s.opts.NoOpen && !s.opts.NoOpenHandlers }

// companionSuits reports whether e is better served by the second
// connection: on a NoOpenHandlers mount every file and static directory
// that need not stay on the main, OPEN, one (free opens); on a NoOpen mount
// what a no-open connection must not serve (Entry.pins: per-caller files,
// files of unknown size, dynamic directories). Links are the same on both.
func (s *Server) companionSuits(e *Entry) bool {
	if e.kind == kindLink {
		return false
	}
	if s.opts.NoOpen {
		return e.pins() && e.backing() == nil
	}
	return !e.pins()
}

// bindFailed logs that e stays on the main connection: the first time as a
// warning, later ones at debug level, since past fs.mount-max (ENOSPC)
// every bind of a large flat directory fails alike.
func (s *Server) bindFailed(e *Entry, err error) {
	if s.bindWarned.Swap(true) {
		s.log.Debug("serving the name on the main connection", "name", e.Path(), "reason", err)
		return
	}
	s.log.Warn("serving the name on the main connection (further names: debug level)", "name", e.Path(), "reason", err)
}

// boundAbove returns the bound entry d is (or is inside), or nil.
func (s *Server) boundAbove(d *Dir) *Entry {
	for ; d != nil && d.self != nil; d = d.parent {
		if d.self.bound {
			return d.self
		}
	}
	return nil
}

// bind bind-mounts e's twin over e's path. For a directory whose subtree
// holds no pinned entry that is one mount for the whole subtree; for one
// that does, its children are bound one by one.
func (s *Server) bind(e *Entry) error {
	ce := e.twin()
	if ce == nil || e.kind == kindLink || !s.linked(e) {
		return nil
	}
	if e.dir != nil {
		s.mu.RLock()
		pinned, fresh := e.dir.pinned, e.dir.fresh
		s.mu.RUnlock()
		if pinned > 0 && !s.opts.NoOpen {
			for _, c := range e.dir.sortedChildren() {
				s.bind(c)
			}
			return nil
		}
		if fresh == 0 && s.freshOnly() {
			return nil // nothing in it is served better by the other connection
		}
	}
	if s.adoptedBind(e) { // restart: the old process's bind is in place
		return nil
	}
	if err := bindPath(s.companion.mountFd, ce.Path(), filepath.Join(s.mnt, e.Path())); err != nil {
		s.bindFailed(e, err)
		return err
	}
	e.bound = true
	if e.kind == kindFile {
		// Binding looked the name up, which took a snapshot of generated
		// content; the first reader must get one of its own time.
		ce.Invalidate()
	}
	return nil
}

// linked reports whether e is still in the tree. (Not e.gone: that would
// wait for a removal in progress, which may wait for callbacks.)
func (s *Server) linked(e *Entry) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return !e.parent.removed && e.parent.children.get(e.name) == e
}

// unbind takes the bind off e and binds its children one by one instead,
// as bind does for a directory that holds pinned entries.
func (s *Server) unbind(e *Entry) {
	unix.Unmount(filepath.Join(s.mnt, e.Path()), unix.MNT_DETACH)
	e.bound = false
	if e.dir != nil {
		for _, c := range e.dir.sortedChildren() {
			s.bind(c)
		}
	}
}

// rejoin makes one bind again of the largest directory around d that no
// longer holds a pinned entry, once the last one below it was removed:
// otherwise a directory that once held a per-caller file would keep a
// mount per file for good.
func (s *Server) rejoin(d *Dir) {
	if s.opts.NoOpen {
		return
	}
	s.bindMu.Lock()
	defer s.bindMu.Unlock()
	if s.companion == nil {
		return
	}
	if top := s.unpinnedTop(d); top != nil {
		s.rejoinLocked(top)
	}
}

// unpinnedTop returns the largest directory around d (d included, the root
// excluded) whose subtree holds no pinned entry, or nil.
func (s *Server) unpinnedTop(d *Dir) *Dir {
	var top *Dir
	s.mu.RLock()
	for p := d; p != nil && p.self != nil && p.pinned == 0 && !p.removed; p = p.parent {
		top = p
	}
	s.mu.RUnlock()
	return top
}

// rejoinLocked makes top, a directory without pinned entries, one bind in
// place of the binds inside it; under bindMu.
func (s *Server) rejoinLocked(top *Dir) {
	if top.self.bound || s.boundAbove(top) != nil || top.self.twin() == nil {
		return
	}
	var binds []*Entry
	var walk func(*Dir)
	walk = func(d *Dir) {
		for _, c := range d.sortedChildren() {
			if c.dir != nil {
				walk(c.dir)
			}
			if c.bound {
				binds = append(binds, c)
			}
		}
	}
	walk(top)
	// The children's binds go first, so that the directory's bind is
	// not made on top of them; names are served by the main connection
	// in between.
	for _, c := range binds {
		unix.Unmount(filepath.Join(s.mnt, c.Path()), unix.MNT_DETACH)
		c.bound = false
	}
	s.bind(top.self)
}

// unbindRemoved takes the binds off removed entries, listed children
// first.
func (s *Server) unbindRemoved(list []*Entry) {
	s.bindMu.Lock()
	defer s.bindMu.Unlock()
	for _, e := range list {
		if e.bound {
			unix.Unmount(filepath.Join(s.mnt, e.Path()), unix.MNT_DETACH)
			e.bound = false
		}
	}
}

// bindPath bind-mounts path (a file or a directory) of the detached mount
// mfd on target.
func bindPath(mfd int, name, target string) error {
	tree, err := unix.OpenTree(mfd, name, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open_tree %s: %w", name, err)
	}
	defer unix.Close(tree)
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind-mount on %s: %w", target, err)
	}
	return nil
}

// HandlersNoOpen reports whether files with a freshness bound (and, with
// Options.NoOpenHandlers, every handler file that may be cached) are
// served by a second, no-open connection on this mount: a mount made by
// root without NoOpen (in the default layout the connection is made with
// the first such file). Without it a bounded file is generated per open.
func (s *Server) HandlersNoOpen() bool {
	if s.opts.NoOpen {
		return false
	}
	s.bindMu.Lock()
	defer s.bindMu.Unlock()
	if s.companion == nil && s.freshOnly() && os.Geteuid() == 0 && s.mountFd < 0 {
		return !s.companionFailed // made with the first bounded file
	}
	return s.companion != nil
}
