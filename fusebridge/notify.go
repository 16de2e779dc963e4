package fusebridge

// Change notification: Entry.Notify, the sysfs_notify of the API.
//
// FUSE has no message by which a server raises an fsnotify event: the
// kernel's FUSE_NOTIFY_INVAL_* only drop caches. The VFS raises IN_MODIFY
// itself after a write(2), a truncate, or a setattr that changes only the
// mtime. So Notify makes the server perform one such operation on its own
// file, through its own mount, and answers it as a no-op:
//
//   - the operation is utimensat(2) with atime UTIME_OMIT and an explicit
//     mtime (the file's own): the VFS turns ATTR_MTIME without ATTR_ATIME
//     into FS_MODIFY, i.e. inotify IN_MODIFY and fanotify FAN_MODIFY (for
//     groups that report file handles, FAN_REPORT_FID: a group reporting
//     descriptors gets only events that carry an open file, as for the
//     same call on tmpfs), and nothing else. An explicit time needs only
//     ownership (or CAP_FOWNER), not write permission, so it works on
//     files read-only to everyone, also for an unprivileged server, whose
//     files it owns;
//   - it goes through an O_PATH descriptor of the name whose inode number
//     and device are checked first, so a name removed or published again
//     in between is never touched, and a mountpoint that was detached
//     never lets it reach the directory underneath;
//   - it runs on a goroutine locked to its thread, whose thread id is
//     registered while the syscall runs: FUSE requests carry the caller's
//     thread id, so the SETATTR it causes is recognised exactly (a real
//     setattr by any other thread of this process is served as usual);
//   - the bridge answers that SETATTR with the attributes the entry has,
//     without calling the handler's Setattr, so size, mtime and ctime stay
//     what a reader saw (on a no-open connection the size is that of the
//     new snapshot, which is what the change itself did);
//   - it is asynchronous: Notify only schedules it, because the handler may
//     call it from inside a callback, while the kernel holds the inode lock
//     (a write) or page locks (a read) that the operation needs. Notifies
//     that arrive while one is under way are folded into one more run. The
//     worker holds no lock of the bridge while in the syscall, and the
//     syscall enters the Go runtime's syscall state, so a garbage
//     collection never waits for it.
//
// Removal (Entry.Remove) sends FUSE_NOTIFY_DELETE with the child's node id:
// the kernel clears the inode's link count and deletes the dentry, which
// gives a watcher of the file IN_DELETE_SELF and then IN_IGNORED (at once,
// or when the last descriptor open on it is closed).
//
// poll(2) and epoll: go-fuse answers the kernel's POLL with ENOSYS (its
// doPoll has no hook for the file system) and provokes one at mount (its
// "poll hack", repeated by split.go for the no-open connection), after
// which the kernel never sends POLL on the connection again and reports
// every file always readable and writable (POLLIN|POLLOUT|POLLRDNORM|
// POLLWRNORM, never POLLPRI or POLLERR). Sysfs semantics would need a
// POLL reply with a kernel handle and a FUSE_NOTIFY_POLL later, which the
// go-fuse API offers no way to give without a fork. Since no POLL is ever
// sent, poll(2) never waits on this server either (LXCFS's callers hung
// in D state in POLL when its server was frozen). Watchers use inotify.
//
// Hook points in the rest of the bridge (one call each, so that they can be
// re-applied onto a rewrite of node.go, entry.go and server.go):
//
//   - fileNode.Write (node.go): the handler's Write gets
//     `e.writeContext(ctx)` (a SourceChanger's source, see subscribe);
//   - entryCore (entry.go): the field `sourced`, set in resolveFile;
//   - Entry struct (entry.go): the field `notify notifyState`;
//   - fileNode.Setattr (node.go), first line:
//     `if errno, ok := n.e.selfNotified(ctx, in, out); ok { return errno }`;
//   - Dir.Create (tree.go), after the entry is served on its
//     connection(s): `e.subscribe(h)` (handler.Changer);
//   - Entry.kill (entry.go), first line: `e.stopNotify()` (Changer's stop,
//     and no more notifies, on removal and unmount);
//   - Entry.Remove (entry.go), first line: `e.primeDentry()`; and just
//     before notifyGone: `e.notifyRemoved()`.
//
// Where an entry lives (its path below the mountpoint, the go-fuse inode of
// its directory) is asked in two functions only, notifyRelPath and
// notifyDir, for a bridge with directories to answer.

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/handler"
)

// notifyState is an Entry's part of change notification.
type notifyState struct {
	mu      sync.Mutex
	running bool   // a worker goroutine is notifying
	again   bool   // Notify was called while it ran: run once more
	stopped bool   // removed or unmounted: Notify does nothing
	stop    func() // handler.Changer's stop
	// degraded is set once the server could not raise the event for this
	// entry (logged once), for NotifyEvents.
	degraded atomic.Bool
}

// notifyThreads holds the thread ids of workers that are inside the
// utimensat(2) of a notification, process-wide (thread ids are unique in
// a process, and there may be several servers). active makes the check in
// every SETATTR one atomic load when no notification is under way.
var notifyThreads struct {
	active atomic.Int32
	tids   sync.Map // uint32 -> struct{}
}

func isNotifyThread(tid uint32) bool {
	if notifyThreads.active.Load() == 0 {
		return false
	}
	_, ok := notifyThreads.tids.Load(tid)
	return ok
}

// Notify tells the kernel and every watcher that the entry's content
// changed, the counterpart of the kernel's sysfs_notify: it drops what the
// kernel caches for the entry (attributes, and on a no-open connection the
// snapshot and its pages, on every connection that serves the name), so
// the next read is fresh, and then raises an inotify IN_MODIFY (fanotify
// FAN_MODIFY, for FAN_REPORT_FID groups) event for the file, which a
// watcher receives after the caches are gone: what it reads after the
// event is the new content.
// Watchers of the directory get it too (with the file's name): for a
// handler file of a NoOpenHandlers mount, which is a bind mount of another
// connection's file, Notify raises a second event on the main
// connection's file under the bind, which is what the directory's
// watchers see. (Writes through the mount to such a file give the kernel's
// event to watchers of the file only.)
//
// Notify returns at once and does the work on a goroutine of the bridge,
// so it may be called from any goroutine, from inside the handler's own
// callbacks too; several calls while one is under way give one more event,
// not one each. It does nothing after the entry is removed.
//
// The event is raised by a no-op utimensat(2) of the server on its own
// file, which needs the server to own the file or to have CAP_FOWNER:
// that is always so for a root server, and for an unprivileged one unless
// the handler reports another owner (Getattr). Then there is no event (the
// caches are still dropped), which NotifyEvents reports; Notify never
// fails.
//
// Writes through the mount need no Notify: the kernel raises IN_MODIFY
// for them itself (one event for an O_TRUNC open, one per write(2)), and
// the bridge adds none (see subscribe).
func (e *Entry) Notify() {
	st := e.notifyState()
	st.mu.Lock()
	if st.stopped {
		st.mu.Unlock()
		return
	}
	if st.running {
		st.again = true
		st.mu.Unlock()
		return
	}
	st.running = true
	st.mu.Unlock()
	go e.notifyLoop()
}

// NotifyEvents reports whether Notify could raise the inotify event every
// time so far (see Notify for when it cannot).
func (e *Entry) NotifyEvents() bool {
	st := e.notify.Load()
	return st == nil || !st.degraded.Load()
}

// notifyState returns e's notification state, made at the first need.
func (e *Entry) notifyState() *notifyState {
	if st := e.notify.Load(); st != nil {
		return st
	}
	e.notify.CompareAndSwap(nil, new(notifyState))
	return e.notify.Load()
}

// notifyStopped is the state of every entry removed before it had one of
// its own: Notify does nothing there (and it never runs a worker, so it
// is never degraded).
var notifyStopped = &notifyState{stopped: true}

func (e *Entry) notifyLoop() {
	st := e.notifyState()
	for {
		if err := e.notifyNow(); err != nil && !errors.Is(err, errEntryGone) {
			if !st.degraded.Swap(true) {
				e.srv().log.Info("no inotify event for this file: the change is visible to readers, but watchers are not woken", "name", e.name, "reason", err)
			}
		}
		st.mu.Lock()
		if !st.again || st.stopped {
			st.running = false
			st.mu.Unlock()
			return
		}
		st.again = false
		st.mu.Unlock()
	}
}

// errEntryGone means the name no longer leads to this entry.
var errEntryGone = errors.New("entry removed")

// notifyNow does one notification synchronously. It must not run on a
// goroutine that holds anything a callback needs.
func (e *Entry) notifyNow() error {
	if pc := e.srv().pageCacheOf(e); pc != nil {
		// No store of a longer snapshot while the utimensat(2) below is
		// answered and its answer's size taken (pagecache.go).
		pc.sendMu.Lock()
		defer pc.sendMu.Unlock()
	}
	// The file a path lookup reaches: the bind-mounted twin when there is
	// one, and that is the inode watchers of the path watch.
	target := e
	if ce := e.twin(); ce != nil {
		target = ce
	}
	// Whatever stops the event, the caches are dropped.
	invalidated := false
	defer func() {
		if !invalidated {
			e.Invalidate()
		}
	}()
	path := filepath.Join(e.srv().mnt, e.notifyRelPath())
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTCONN) {
			return errEntryGone
		}
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Ino != target.ino || unix.Major(st.Dev) != 0 || unix.Minor(st.Dev) != target.srv().connID {
		// Removed (and maybe published again), or unmounted: what the
		// name reaches now is not this entry's file.
		return errEntryGone
	}
	// Caches first, so that anything a watcher reads after the event,
	// which follows, is fresh.
	invalidated = true
	if err := e.Invalidate(); err != nil {
		return fmt.Errorf("invalidate: %w", err)
	}
	if err := selfUtimens(fd, &st); err != nil {
		return err
	}
	if target != e {
		// The twin's watchers have their event; the directory's watchers
		// watch the main connection's directory, whose own file for the
		// name is under the bind mount.
		if err := e.notifyCovered(); err != nil {
			e.srv().log.Debug("no event for watchers of the directory", "name", e.name, "reason", err)
		}
	}
	return nil
}

// selfUtimens raises IN_MODIFY for the file that the O_PATH descriptor fd
// refers to, whose stat is st: a utimensat(2) that sets the mtime it has,
// on a thread that selfNotified recognises.
func selfUtimens(fd int, st *unix.Stat_t) error {
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, st.Mtim}
	runtime.LockOSThread()
	tid := uint32(unix.Gettid())
	notifyThreads.tids.Store(tid, struct{}{})
	notifyThreads.active.Add(1)
	err := utimensFd(fd, ts)
	notifyThreads.active.Add(-1)
	notifyThreads.tids.Delete(tid)
	runtime.UnlockOSThread()
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EIO) || errors.Is(err, unix.ENOTCONN) {
			return errEntryGone
		}
		return fmt.Errorf("utimensat as uid %d on a file owned by uid %d: %w", unix.Geteuid(), st.Uid, err)
	}
	return nil
}

// utimensFd sets the times of the file an O_PATH descriptor refers to.
func utimensFd(fd int, ts []unix.Timespec) error {
	err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.EINVAL) {
		// Kernels before 5.8 take no AT_EMPTY_PATH here.
		err = unix.UtimesNanoAt(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), ts, 0)
	}
	return err
}

// selfNotified answers the SETATTR of a notification (see notifyNow):
// ok is false for any other request, which the caller then serves.
func (e *Entry) selfNotified(ctx context.Context, in *fuse.SetAttrIn, out *fuse.AttrOut) (syscall.Errno, bool) {
	if !isNotifyThread(in.Pid) {
		return 0, false
	}
	if !e.enter() {
		return syscall.EIO, true
	}
	defer e.exit()
	// The attributes the file has: the kernel takes size and times from
	// this reply, so a reader sees none of them move.
	ttl, errno := e.attrTTL(ctx, &out.Attr)
	if errno != 0 {
		return errno, true
	}
	out.SetTimeout(e.cacheSetattrTTL(ttl)) // pagecache.go
	return 0, true
}

// subscribe hands a handler.Changer its notify function (once per
// published handler, also when it is served on two connections). A
// handler.SourceChanger gets the entry's core as the source, which
// writeContext puts in the context of every write through the entry or
// its twin: the handler then leaves this entry's notify out for such a
// write, whose events the kernel raises itself (one for an O_TRUNC open,
// one per write(2)), and the bridge adds none.
func (e *Entry) subscribe(h any) {
	c, ok := h.(handler.Changer)
	if !ok {
		return
	}
	var stop func()
	if sc, ok := h.(handler.SourceChanger); ok {
		stop = sc.ChangedFrom(e.entryCore, e.Notify)
	} else {
		stop = c.Changed(e.Notify)
	}
	st := e.notifyState()
	st.mu.Lock()
	if st.stopped {
		// Removed while Changed ran.
		st.mu.Unlock()
		if stop != nil {
			stop()
		}
		return
	}
	st.stop = stop
	st.mu.Unlock()
}

// writeContext is the context for the handler's Write: marked with the
// entry's source for a handler.SourceChanger (see subscribe).
func (e *Entry) writeContext(ctx context.Context) context.Context {
	if !e.sourced {
		return ctx
	}
	return handler.WithWriteSource(ctx, e.entryCore)
}

// stopNotify ends notification for a removed entry: later Notify calls do
// nothing, and a Changer's stop runs.
func (e *Entry) stopNotify() {
	if e.notify.CompareAndSwap(nil, notifyStopped) {
		return
	}
	st := e.notify.Load()
	st.mu.Lock()
	stop := st.stop
	st.stop = nil
	st.stopped = true
	st.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// notifyRelPath is the entry's path relative to the mountpoint.
func (e *Entry) notifyRelPath() string { return e.Path() }

// notifyDir is the go-fuse inode of the directory that holds the entry.
// nil when the kernel does not know the directory (then it caches nothing
// of it, and no watcher can be on it).
func (e *Entry) notifyDir() *fs.Inode { return e.parent.inode() }

// notifyRemoved tells the kernel that the entry's file was deleted
// (FUSE_NOTIFY_DELETE): it clears the inode's link count and deletes its
// dentry, so a watcher of the file gets IN_DELETE_SELF and IN_IGNORED.
func (e *Entry) notifyRemoved() {
	dir := e.notifyDir()
	if dir == nil {
		return // the kernel knows no inode of the directory, so none of the file
	}
	n := dir.GetChild(e.name)
	if n == nil {
		return // never looked up: the kernel has no inode to delete
	}
	if fn, ok := n.Operations().(*fileNode); !ok || fn.e != e {
		return // the name was published again and is another file now
	}
	if errno := dir.NotifyDelete(e.name, n); errno != 0 && errno != syscall.ENOENT {
		e.srv().log.Debug("delete notification failed", "name", e.name, "errno", errno)
	}
}

// primeDentry makes sure, before the entry is unlinked, that the kernel
// has a dentry for its name when it has an inode for it: the delete
// notification reaches the inode only through a dentry of the name
// (d_lookup in the parent), and the kernel prunes unused dentries under
// memory pressure (or a drop_caches) while an inotify watch keeps the
// inode. Without the dentry a watcher would get neither IN_DELETE_SELF nor
// IN_IGNORED until the unmount. A lookup of the path, which the server
// still answers, brings the dentry back (it costs a LOOKUP only where the
// kernel knows the inode).
func (e *Entry) primeDentry() {
	if e.kind != kindFile {
		return
	}
	dir := e.notifyDir()
	if dir == nil {
		return
	}
	n := dir.GetChild(e.name)
	if n == nil {
		return // no inode in the kernel, so no watcher
	}
	if fn, ok := n.Operations().(*fileNode); !ok || fn.e != e {
		return
	}
	var st unix.Stat_t
	unix.Fstatat(unix.AT_FDCWD, filepath.Join(e.srv().mnt, e.notifyRelPath()), &st, unix.AT_SYMLINK_NOFOLLOW)
}

// notifyCovered raises IN_MODIFY on the main connection's file of a
// NoOpenHandlers entry (the one under its bind mount), for watchers of the
// directory. It reaches the file through a clone of the main mount that has
// no binds in it (open_tree without AT_RECURSIVE, see mainView).
func (e *Entry) notifyCovered() error {
	view, release, err := e.srv().acquireView()
	if err != nil {
		return err
	}
	defer release()
	fd, err := unix.Openat(view, e.notifyRelPath(), unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Ino != e.ino || unix.Major(st.Dev) != 0 || unix.Minor(st.Dev) != e.srv().connID {
		return errEntryGone
	}
	return selfUtimens(fd, &st)
}

// viewIdle is how long a clone of a main mount is kept after its last use.
// Closing one waits for an RCU grace period (about a millisecond), too
// slow for every notification; keeping one open keeps the connection alive
// after an umount from outside, so it must not be kept for long.
const viewIdle = 100 * time.Millisecond

// mainView is a server's clone of its main mount, shared by the
// notifications that need it and closed viewIdle after the last one.
type mainView struct {
	mu    sync.Mutex
	fd    int // -1: none
	users int
	gen   int // bumped by each use, so a stale idle timer closes nothing
}

var mainViews sync.Map // *Server -> *mainView

func (s *Server) acquireView() (fd int, release func(), err error) {
	vv, _ := mainViews.LoadOrStore(s, &mainView{fd: -1})
	v := vv.(*mainView)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.fd < 0 {
		fd, err := unix.OpenTree(unix.AT_FDCWD, s.mnt, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			return -1, nil, fmt.Errorf("open_tree %s: %w", s.mnt, err)
		}
		v.fd = fd
	}
	v.users++
	v.gen++
	return v.fd, func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		v.users--
		if v.users == 0 {
			gen := v.gen
			time.AfterFunc(viewIdle, func() { v.closeIdle(s, gen) })
		}
	}, nil
}

func (v *mainView) closeIdle(s *Server, gen int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.users != 0 || v.gen != gen || v.fd < 0 {
		return // used again since: a later timer closes it
	}
	unix.Close(v.fd)
	v.fd = -1
	mainViews.CompareAndDelete(s, v)
}
