// Package fusebridge serves handlers (package handler) as files in a FUSE
// mount: the bridge between the typed handler API and the kernel.
//
// Mount is the seed module's load and Server.Unmount its unload. Between
// the two, Server.Create publishes a handler under a name or a path, and
// Entry.Remove withdraws it while it may be in use: callbacks in flight
// finish, new opens get ENOENT (also one racing the removal), and
// descriptors opened before get EIO from reads and writes, as procfs does
// after remove_proc_entry (fstat shows them unlinked: no link, size 0).
//
// The names form a tree, like /proc's: Server.Root and Dir.Mkdir make
// directories at any depth (proc_mkdir), Dir.Remove removes a subtree
// (remove_proc_subtree), and Dir.Create publishes a file handler, a
// symbolic link (handler.Symlinker) or a dynamic directory whose children
// its handler.DirHandler produces on demand (/proc/<pid>). The code is in
// three places: tree.go and dirnode.go name things, entry.go and node.go do
// a file's I/O, and server.go and split.go own the mount and its
// connections, whose requests conn.go reads and answers (one reader at a
// time, answering inline: a FUSE round trip here costs what waking
// threads costs). A mount made with Options.Restartable can be handed to a
// new process of the program, with every descriptor open on it
// (Server.Restart; handover.go and restartfs.go).
//
// The mount is tuned for a file that must be indistinguishable from a tmpfs
// file and nearly as fast:
//
//   - FUSE passthrough (root, Linux >= 6.9) for handlers that implement
//     handler.BackingFiler: the kernel serves read, write and mmap from the
//     backing file itself, with no request to this process.
//   - No writeback cache: it disables passthrough and makes the kernel
//     trust its own size and mtime over the server's.
//   - Extended attributes answered ENOSYS once for the whole mount;
//     otherwise the kernel asks for security.capability before every write.
//   - O_TRUNC delivered inside OPEN (atomic_o_trunc), so handlers that cannot
//     be truncated simply ignore it, like /proc and /sys files.
//   - Long attribute and entry timeouts: every change to a file's size or
//     times that goes through the mount is seen by the kernel, which drops its
//     cached attributes itself; the bridge invalidates names on Create and
//     Remove, and Entry.Invalidate covers handlers whose attributes change
//     by themselves. With short timeouts every stat(2) would cost a request.
//     The children of a dynamic directory have none: the handler is asked,
//     except for those it marks handler.Child.Fixed (/proc's meminfo
//     beside its <pid> directories), which are cached as static names.
//   - Explicit data cache control: cached pages are dropped by the kernel on
//     the changes it makes itself, not whenever a file's mtime moves.
//   - default_permissions: the kernel checks mode bits, as for any file.
//   - Generated content without a freshness bound (see below) is made per
//     open and, for the only open of the file, given to the kernel's page
//     cache before the OPEN reply (pagecache.go): OPEN only. Other opens
//     are read with FOPEN_DIRECT_IO: OPEN, a READ with the content and a
//     READ that finds EOF. With Options.PerOpenPassthrough a read-only
//     open is read instead from a passthrough backing file made at OPEN
//     with that open's content (perop.go): OPEN only.
//   - FOPEN_NOFLUSH for every open that cannot write: close(2) sends
//     nothing; the RELEASE that follows is asynchronous.
//   - Content that depends on the caller (handler.PerCaller) is never
//     served from a cache: it lives on a connection that keeps OPEN and is
//     read with FOPEN_DIRECT_IO.
//   - sendfile(2) and splice(2) of a descriptor read with FOPEN_DIRECT_IO,
//     which the kernel does through the page cache (Linux 6.18), fail with
//     EINVAL, so that their callers (busybox cat, Go's io.Copy) read(2)
//     instead; a file the kernel never caches shows a sysfs attribute's
//     size, 4096, so that they ask at all (splice.go).
//
// # Freshness bounds
//
// The rule: a file published as handler.Generated(fn).MaxAge(d) is never
// read with content made more than d before the read began (plus the
// moment one regeneration takes), and between regenerations it is read at
// the speed of a cached file. d = 0 (a plain Generated) is made per open.
//
// How: the kernel skips OPEN only for a whole connection ("no-open"), so a
// mount made by root runs a second connection in no-open mode (split.go)
// and bind-mounts each bounded file from it over its name, or, for a
// directory whose subtree holds only bounded files (and static directories
// and links), the whole directory as one bind. There the kernel caches the
// file's pages across opens; the bridge gives its attributes a timeout of
// the time the snapshot has left and its mtime the time the snapshot was
// made. The first read after that asks for the attributes (the only
// request a cached read makes, and the sign that the file is read); the
// bridge then regenerates, and the new mtime makes the kernel drop the old
// pages itself before it reads (the no-open connection negotiates
// auto_inval_data). New content that is byte for byte the old (up to 64
// KiB) keeps the old mtime instead, and the kernel its pages: a reader of
// a file that has not changed pays that one GETATTR per bound, no READ.
// No timer: an idle file costs nothing, a hot one one regeneration per
// bound; Entry.Notify regenerates at once. A read(2)
// that returns the whole file sees one version; one that reads a larger
// file in pieces may get pieces of two (see handler.Generated.MaxAge).
// Where there is no second connection (an unprivileged mount), a bounded
// file is generated per open, which is within any bound; so is a bounded
// child of a dynamic directory, which is served with its directory by the
// connection that keeps OPEN (publish such files with Create, in static
// directories, to have them cached; for names that come and go outside the
// program, such as one directory per cgroup, keep the static directories
// in step and let Dir.OnMiss (or Dir.MkdirOnMiss) publish a name at the
// lookup that finds it missing). On a NoOpen
// mount, whose main connection caches every file it serves, a Generated
// without a bound of its own gets DefaultMaxAge. handler.Value and the knobs need none: every
// change to them drops the kernel's copy.
//
// Layout and unmounting: a tree without bounded files has no bind mount,
// so `umount DIR` or `fusermount3 -u DIR` stops it (Wait returns). One
// with bounded files has binds, which umount(2) refuses to leave behind:
// stop it with `umount -R DIR` (or Server.Unmount, or a signal to a server
// that calls it). For cgroupfs-style per-view content, make each file
// Generated(fn).MaxAge(d) and keep per-caller files (handler.PerCaller) for
// what really differs per reader: those always keep OPEN.
//
// Entry.Notify, the sysfs_notify of the API, drops the kernel's caches of
// an entry and raises inotify IN_MODIFY for it, and a handler.Changer is
// given its notify function at Create; Remove gives watchers
// IN_DELETE_SELF. poll(2) on a published file always reports it readable
// and writable at once: go-fuse switches the kernel's POLL request off for
// the connection (see notify.go for both).
package fusebridge

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// DefaultMaxWrite is Options.MaxWrite's default: 1 MiB writes are 1.5x
// faster than with go-fuse's default of 128 KiB.
const DefaultMaxWrite = 1 << 20

// maxWrite is the largest write, and read, the kernel sends in one request
// on o's connections: o.MaxWrite, rounded up to whole pages, from one page
// to DefaultMaxWrite.
func (o *Options) maxWrite() int {
	page := os.Getpagesize()
	n := o.MaxWrite
	if n <= 0 || n > DefaultMaxWrite {
		return DefaultMaxWrite
	}
	return (n + page - 1) / page * page
}

// Passthrough selects whether handlers that implement handler.BackingFiler
// are served by FUSE passthrough.
type Passthrough int

const (
	// PassthroughAuto uses passthrough when the kernel grants it (root,
	// Linux >= 6.9) and forwards I/O through the server otherwise.
	PassthroughAuto Passthrough = iota
	// PassthroughOff always forwards I/O through the server: the mode an
	// unprivileged mount runs in.
	PassthroughOff
	// PassthroughRequired fails Mount when passthrough is unavailable.
	PassthroughRequired
)

// Options configure a mount. The zero value is a good default.
type Options struct {
	// AllowOther lets users other than the mounting one reach the files
	// (the allow_other mount option). It is on by default for a mount made
	// by root, as for /proc (the files' mode bits then decide, since the
	// mount uses default_permissions), and off by default otherwise;
	// setting it asks for it on an unprivileged mount too, which needs
	// user_allow_other in /etc/fuse.conf. See DefaultAllowOther.
	AllowOther bool

	// OwnerOnly switches AllowOther's root default off: only the mounting
	// user (and root) reach the files. AllowOther wins if both are set.
	OwnerOnly bool

	// MaxWrite is the largest write(2), and read(2), the kernel sends in
	// one request (0: DefaultMaxWrite, 1 MiB; rounded up to whole pages).
	// Each goroutine that reads requests (up to GOMAXPROCS per connection,
	// at least two) holds a buffer of this size while it waits, so a
	// server of small files that are read whole (cgroupfs: 128 KiB) keeps
	// megabytes less in memory; a file written in large blocks wants the
	// default. The second, no-open connection that serves the files with
	// a freshness bound in the default layout (see the package comment)
	// takes at most 128 KiB (or MaxWrite, if less): it serves generated
	// snapshots, and a 1 MiB buffer per reading goroutine was 4 MiB of a
	// server's RSS; a write(2) to such a file that is larger reaches the
	// handler in pieces of that size. A restarted server keeps the values
	// of the process it replaces: the kernel agreed on them when the file
	// system was mounted.
	MaxWrite int

	// Passthrough chooses the I/O path of backing-file handlers, and of
	// content made per open (see PerOpenPassthrough).
	Passthrough Passthrough

	// PerOpenPassthrough serves content made per open (a
	// handler.Generated without a freshness bound: a
	// handler.OpenSnapshotter) by passthrough where the kernel grants it:
	// a read-only open gets a memfd of its own with the content made for
	// it, as its backing file, so open+read+close costs OPEN and the
	// asynchronous RELEASE, no READ (perop.go). Opens of the file made
	// while one such descriptor is open are read through the server, as
	// without it. The price is what a descriptor served from a file is:
	// it reads the snapshot of its open until it is closed, also from
	// offset 0 again (procps's top and free -s keep their /proc files open
	// and re-read them: they would show the figures of their first read)
	// and after Entry.Remove (no EIO); mmap(2) of a descriptor opened
	// meanwhile maps that snapshot. Per-caller files are never served so,
	// nor files that also take writes (an open for writing would share
	// the backing file, and its mmap(2) could change what the others
	// read).
	// After a crash (not a restart) the adopted mount forwards them all,
	// and an open of a file whose passthrough descriptor outlived the
	// crash fails with EIO until that descriptor is closed (the kernel
	// wants its backing file, which no table names).
	PerOpenPassthrough bool

	// Logger receives lifecycle messages; nil discards them.
	Logger *slog.Logger

	// Debug logs every FUSE request and reply to Logger at debug level.
	Debug bool

	// AttrTimeout is how long the kernel may cache names and attributes;
	// 0 means one hour (see the package comment for why long is right).
	AttrTimeout time.Duration

	// NoOpen answers the first OPEN with ENOSYS, which switches the whole
	// connection to FUSE "no-open": the kernel never sends OPEN or RELEASE
	// again and caches every file's pages across opens (as with
	// FOPEN_KEEP_CACHE), so open+read+close of a cached file costs no
	// request at all. The price:
	//
	//   - no passthrough (it is set up in the OPEN reply), so every write
	//     and every page-cache miss goes through the server;
	//   - handlers never see an open(2) or close(2): every callback gets one
	//     OpenFile per entry (Flags O_RDWR, or O_RDONLY/O_WRONLY for
	//     handlers that only read or write), opened lazily through the
	//     handler's Opener and released on invalidation and removal;
	//   - a missing Reader or Writer no longer makes open(2) fail with
	//     EACCES (the mode bits still apply): read(2) or write(2) fails with
	//     EIO instead, and an Opener cannot refuse an open(2);
	//   - O_TRUNC arrives as a separate SETATTR (atomic_o_trunc is not
	//     negotiated); a handler without Setattrer ignores size changes, so
	//     `echo 1 > knob` still works, but truncate(2) on it now succeeds
	//     and does nothing, as on sysfs;
	//   - content that is not byte-exact (the handler's Opener did not set
	//     OpenFile.Caching, e.g. Generated and Value) is served from the
	//     kernel's page cache: after each successful write to such an entry
	//     the bridge drops its snapshot and the kernel's cached pages and
	//     attributes, and a Generated file is regenerated once its
	//     freshness bound has passed (its own, or DefaultMaxAge: see the
	//     package comment). Such handlers report the snapshot's length as
	//     their size (handler.SnapshotSizer) and, with a bound, the
	//     snapshot's time as their mtime;
	//   - a write(2) to such content is one store only if it stays within
	//     a page (one that crosses a page boundary where the kernel caches
	//     no page reaches the handler as two WRITEs), and on a busy machine
	//     a rare kernel race may zero the written bytes before the server
	//     reads them (a knob then fails the write with EINVAL) or cut the
	//     cached text with NULs until the next change (see pagedrop.go);
	//     a connection that keeps OPEN has neither;
	//   - what must not be cached (handler.PerCaller files, files of
	//     unknown size, dynamic directories) is served by a second
	//     connection that keeps OPEN, bind-mounted over its name, when the
	//     mount is made by root; on an unprivileged NoOpen mount, which
	//     cannot make one, Create refuses it with EINVAL.
	NoOpen bool

	// NoOpenHandlers, on a mount made by root, serves every handler file
	// that may be cached over the second, no-open FUSE connection (which
	// by default serves only files with a freshness bound: see the package
	// comment), bind-mounted over it, a Generated without a bound of its
	// own then with DefaultMaxAge; except the entries that must stay on
	// the first one: backing files
	// (handler.BackingFiler, which keep passthrough), handler.PerCaller
	// files and files of unknown size (which must not be cached), and
	// dynamic directories. No-open is a property of a whole connection
	// and passthrough is set up in the OPEN reply, so one connection
	// cannot give both; two give each file the mode that suits it: a
	// generated file's open+read+close costs no request, the RAM file's
	// write costs none either.
	//
	// A directory whose subtree holds none of those is one bind mount,
	// whatever it holds; in a directory that does (the top directory of
	// ramproc mount, with its RAM file), every other file and directory is
	// bound by itself. Entries on the second connection behave as on a
	// NoOpen mount (see NoOpen). A bound name's st_dev differs from the
	// top directory's, unlink(2) and rmdir(2) on it fail with EBUSY
	// instead of EPERM, and umount(8) of the directory needs -R (which
	// stops the server cleanly) or -l while the server runs
	// (Server.Unmount and the recovery of a killed server's mount detach
	// the whole tree). It needs root; elsewhere it changes nothing. Prefer
	// bounds on the files that need the speed: every other file is fine
	// at one request per open, and needs no bind.
	NoOpenHandlers bool

	// UnmountGrace is how long Unmount lets descriptors that are still
	// open drain by themselves before it aborts the FUSE connection;
	// 0 means 2 seconds.
	UnmountGrace time.Duration

	// ReadOnly mounts the directory read-only (the ro mount option):
	// writes, truncates and chmod fail with EROFS, as on a read-only tmpfs.
	ReadOnly bool

	// Space reports the capacity and use that statfs(2) and df show for
	// the mount, as a tmpfs with size= shows them (see Space); nil reports
	// no capacity, as tmpfs with size=0 does.
	Space func() Space

	// Metrics receives the counts of every request the mount's
	// connections serve; nil gives the server counters of its own
	// (Server.Metrics returns them either way).
	Metrics *Metrics

	// Restartable lets Server.Restart hand the mount to a new process of
	// the program (handover.go): in a process started by a restart, Mount
	// adopts the running mount instead of making one, and Ready starts
	// serving it. Node IDs are then the entries' inode numbers
	// (go-fuse's ExternalNodeID).
	Restartable bool

	// Handover, on a Restartable mount, is asked at a restart for the
	// program's own state and the descriptors that go with it; the new
	// process gets them from Server.Inherited. Nil hands over none.
	Handover func() (state []byte, files []*os.File, err error)
}

// DefaultAllowOther is the one rule for who may reach a mount's files when
// Options say nothing: everyone (allow_other, with the mode bits deciding)
// when the mount is made by root, which needs no configuration for it and
// is what /proc does; only the mounting user otherwise, since an
// unprivileged allow_other needs user_allow_other in /etc/fuse.conf.
// ramproc mount's -allow-other flag defaults to it.
func DefaultAllowOther() bool { return os.Geteuid() == 0 }

// Server is one mounted directory of published entries.
type Server struct {
	mnt  string
	opts Options
	log  *slog.Logger
	fuse *fuse.Server
	root *dirNode // the kernel's inode of rootDir
	// rootDir is the top of the tree of published names (tree.go).
	rootDir *Dir
	uid     uint32
	gid     uint32
	born    time.Time
	connID  uint32 // minor of the mount's st_dev: its name in fusectl
	served  chan struct{}

	// passthrough is set once the kernel has accepted a backing file.
	passthrough atomic.Bool
	// perop serves content made per open by passthrough (perop.go).
	perop *peropFS
	// pcs is what the server knows of the kernel's page cache of content
	// made per open (pagecache.go).
	pcs pageCaches
	// preads marks the READs in flight that fill pages (splice.go).
	preads pageReads

	// lastSnapshot is the time of the last snapshot made for the kernel's
	// cache (Server.snapshotTime).
	lastSnapshot atomic.Int64

	// companion is the second connection (split.go): the no-open one
	// beside a main one that keeps OPEN (made at Mount with
	// NoOpenHandlers, else with the first file that has a freshness
	// bound: set once, under bindMu), or the one that keeps OPEN beside a
	// NoOpen mount made by root; nil without one. On the companion itself, mountFd is its detached mount
	// (from fsmount), which its entries are bind-mounted from; -1 on a
	// mount attached by path.
	companion *Server
	mountFd   int

	// mu guards the naming state of the whole tree (tree.go).
	mu      sync.RWMutex
	nextIno uint64
	closing bool
	// bindMu serialises the bind mounts of a NoOpenHandlers mount
	// (split.go); never held by a FUSE callback.
	bindMu sync.Mutex
	// bindWarned is set once a failed bind has been logged as a warning.
	bindWarned atomic.Bool
	// companionFailed is set once making the second connection of the
	// default layout failed: it is not tried again (guarded by bindMu).
	companionFailed bool

	unmountOnce sync.Once
	unmountErr  error

	// claim holds the mountpoint for the server's lifetime (see claim.go).
	claim *claim

	// rs is the server's part in restarts (handover.go).
	rs restartState
}

// Mount mounts an empty directory of entries on mountpoint and starts
// serving it. A mountpoint that does not exist is created. A dead FUSE mount
// left there by a killed server ("transport endpoint is not connected") is
// detached first; a mountpoint that is a mount point already is an error
// (ErrMountpointBusy), unless it is a bind mount of a directory of a disk
// or memory file system (not FUSE, proc, sysfs or cgroup), as a container's
// volume is (see boundDir).
func Mount(mountpoint string, opts Options) (*Server, error) {
	mnt, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	opts.AllowOther = opts.AllowOther || (DefaultAllowOther() && !opts.OwnerOnly)
	if opts.AttrTimeout == 0 {
		opts.AttrTimeout = time.Hour
	}
	if opts.UnmountGrace == 0 {
		opts.UnmountGrace = 2 * time.Second
	}
	if opts.Metrics == nil {
		opts.Metrics = new(Metrics)
	}
	// Every check that needs no mountpoint comes first: a refused mount
	// must leave no directory behind.
	if opts.NoOpen {
		if opts.Passthrough == PassthroughRequired {
			return nil, errors.New("fusebridge: passthrough is set up in the OPEN reply and cannot be combined with NoOpen")
		}
		opts.Passthrough = PassthroughOff
		opts.NoOpenHandlers = false
	}
	if opts.Restartable {
		// Started by a restart: adopt the running mount (handover.go).
		if in, err := inherited(); err != nil || in != nil {
			if err != nil {
				return nil, err
			}
			return adoptMount(mnt, opts, in)
		}
		// Started by a keeper after a crash (crash.go).
		if in, err := crashInherited(); err != nil || in != nil {
			if err != nil {
				return nil, err
			}
			return adoptMount(mnt, opts, in)
		}
	}
	cl, err := prepareMountpoint(mnt, opts.Logger)
	if err != nil {
		return nil, err
	}

	s := newServer(mnt, opts)
	s.claim = cl
	// root mounts with mount(2) itself and needs no fusermount binary.
	if err := s.start(mnt, os.Geteuid() == 0); err != nil {
		cl.release(true)
		return nil, mountError(mnt, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(mnt, &st); err != nil {
		s.Unmount()
		cl.removeCreated()
		return nil, fmt.Errorf("fusebridge: mounted %s but cannot stat it: %w", mnt, err)
	}
	s.connID = unix.Minor(st.Dev)

	if opts.Passthrough != PassthroughOff {
		if err := s.probePassthrough(); err != nil {
			if opts.Passthrough == PassthroughRequired {
				s.Unmount()
				cl.removeCreated()
				return nil, err
			}
			s.log.Info("passthrough unavailable; forwarding I/O through the server", "reason", err)
		} else {
			s.passthrough.Store(true)
		}
	}
	switch {
	case opts.NoOpenHandlers && os.Geteuid() == 0:
		// Every handler file that may be cached is served by a second,
		// no-open connection, bind-mounted where it is (split.go). In
		// the default layout that connection is made with the first file
		// that has a freshness bound (ensureCompanion): a mount without
		// one keeps a single connection.
		if c, err := s.mountCompanion(); err != nil {
			s.log.Info("no second no-open connection; handler files are served on the main one", "reason", err)
		} else {
			s.setCompanion(c)
		}
	case opts.NoOpen && os.Geteuid() == 0:
		// Per-caller files, streamed files and dynamic directories must
		// not be cached: a second connection that keeps OPEN serves them.
		if c, err := s.mountCompanion(); err != nil {
			s.log.Info("no second connection that keeps OPEN; per-caller and streamed files and dynamic directories cannot be published", "reason", err)
		} else {
			s.setCompanion(c)
		}
	}
	s.log.Info("mounted", "mountpoint", mnt, "passthrough", s.passthrough.Load(), "noopen", opts.NoOpen, "noopen_handlers", s.companion != nil)
	return s, nil
}

func newServer(mnt string, opts Options) *Server {
	s := &Server{
		mnt:     mnt,
		opts:    opts,
		log:     opts.Logger,
		uid:     uint32(os.Geteuid()),
		gid:     uint32(os.Getegid()),
		born:    time.Now(),
		served:  make(chan struct{}),
		nextIno: 2, // 1 is the root
		mountFd: -1,
		rs:      restartState{devFd: -1, handedOver: make(chan struct{})},
	}
	// /proc's own directories are 0555: nobody creates names in them.
	s.rootDir = newDir(s, nil, "", 1, 0o555)
	s.root = &dirNode{d: s.rootDir}
	return s
}

// start serves s on mountpoint, mounting it with mount(2) itself when
// direct is set, and returns once the kernel's INIT has been answered.
func (s *Server) start(mountpoint string, direct bool) error {
	timeout := s.opts.AttrTimeout
	caps := uint64(fuse.CAP_ATOMIC_O_TRUNC)
	if s.opts.NoOpen {
		// Without OPEN nobody would truncate; the kernel then sends a
		// SETATTR with size 0 for O_TRUNC instead.
		caps = 0
	}
	// READDIRPLUS (a listing that also looks every entry up) only where
	// it pays: for the first batch, and after a stat(2) of a child while
	// the directory is being listed (ls -l). ls -R and find get plain
	// READDIR, which makes the kernel build no inode per name. A no-open
	// connection always lists with READDIRPLUS: there a file whose
	// attributes are valid is opened and read from the kernel's cache
	// with no request, so a listing that revalidates a batch of the files
	// the kernel knows in one round trip saves the GETATTR that reading
	// each would cost (find | xargs cat run again: one request per file
	// before, one per ~170 after); names it does not know are left out
	// past the first batch, as with AUTO (dirHandle.Lookup).
	if !s.opts.NoOpen {
		caps |= fuse.CAP_READDIRPLUS_AUTO
	}
	mo := fuse.MountOptions{
		AllowOther:        s.opts.AllowOther,
		FsName:            "ramproc",
		Name:              "ramproc",
		DisableXAttrs:     true,
		MaxWrite:          s.opts.maxWrite(),
		Options:           append([]string{"default_permissions"}, roOption(s.opts.ReadOnly)...),
		ExtraCapabilities: caps,
		// On a connection that keeps OPEN, cached file data changes only
		// through this mount, and the kernel already drops what a write,
		// truncate or punch makes stale; with automatic invalidation it
		// would also throw away a forwarded-mode file's whole page cache
		// whenever a stat saw a new mtime. A no-open connection wants
		// exactly that: a snapshot with a freshness bound shows a new
		// mtime when it is regenerated, and the kernel then drops the old
		// pages itself before it reads (entry.go, freshShared). (A
		// forwarded RAM file on a NoOpen mount pays for it: a read after
		// a write refills its page cache.)
		ExplicitDataCacheControl: !s.opts.NoOpen,
		DirectMountStrict:        direct,
		Debug:                    s.opts.Debug,
		Logger:                   slog.NewLogLogger(s.opts.Logger.Handler(), slog.LevelDebug),

		// No handler returns a file-descriptor read result, so go-fuse's
		// splice attempt only resized a pipe and wrote the header into it
		// before falling back, on every READ: 1.05 -> 1.55 GiB/s for cat
		// of a streamed file.
		DisableSplice: true,
	}
	rawFS := gofs.NewNodeFS(s.root, &gofs.Options{
		MountOptions: mo,
		// Entry and attribute timeouts are set by every reply (dirnode.go):
		// a dynamic directory's children have none.
		NegativeTimeout: &timeout,
		UID:             s.uid,
		GID:             s.gid,
		// A restart hands the node IDs the kernel holds to a new process,
		// which must issue the same ones: the inode numbers (handover.go).
		ExternalNodeID:  s.opts.Restartable,
		ServerCallbacks: s.serverCallbacks(),
	})
	if s.opts.NoOpen {
		rawFS = dirPlusTTL{rawFS} // timeouts from the request's start (dirnode.go)
	}
	// The counters outside the per-open layer: a RELEASE is counted (and
	// OpenHandles drops) once its claim is dropped (perop.go). A mount that
	// can have no claim (the option off, no restart that could bring
	// descriptors with one) keeps the layer out of its requests' way.
	var fsys fuse.RawFileSystem
	if perop := s.wrapPerOpen(rawFS); perop.mayClaim() {
		fsys = s.wrapRawFS(perop)
	} else {
		fsys = s.wrapRawFS(rawFS)
	}
	if s.opts.Restartable {
		s.rs.rfs = newRestartFS(fsys)
		s.rs.rfs.perop = s.perop
		fsys = s.rs.rfs
	}
	if s.rs.adopt != nil {
		s.rs.mo = mo // Ready serves the adopted connection
		s.rs.rfs.devFd, s.rs.rfs.keepIDs = s.rs.devFd, keeperPresent()
		return nil
	}
	srv, devFd, err := s.newTrackedServer(fsys, mountpoint, &mo, direct)
	if err != nil {
		return err
	}
	if s.opts.Restartable {
		s.rs.devFd = devFd
	}
	if s.rs.rfs != nil {
		s.rs.rfs.devFd, s.rs.rfs.keepIDs = s.rs.devFd, keeperPresent() && s.rs.devFd >= 0
	}
	s.fuse = srv
	go func() {
		serveConn(srv, fsys, &mo, devFd, true, s.log)
		close(s.served)
	}()
	// WaitMount runs go-fuse's poll hack, which opens a file of the new
	// mount without O_CLOEXEC: a child forked meanwhile would inherit an
	// open file of this mount, and its first close of it (a FLUSH) could
	// wait on a server that has stopped. No fork while it is open.
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	err = srv.WaitMount()
	s.rs.minor = srv.KernelSettings().Minor // a restart needs >= 40 (handover.go)
	return err
}

// newFuseServer is fuse.NewServer with the /dev/fuse descriptor kept out of
// child processes. go-fuse's direct mount (as root) opens /dev/fuse with
// syscall.Open, without O_CLOEXEC, and its direct path never sets
// close-on-exec afterwards (go-fuse v2.12.1, mount_linux.go: only the
// fusermount and /dev/fd/N paths do), so every child this process starts
// inherits the descriptor. A child that outlives the server then keeps the
// connection alive with nobody to answer it, and its own requests on the
// mount wait forever (seen: a cat in D state for an hour, holding the
// device of the mount it was reading). So the direct mount runs under
// syscall.ForkLock held for reading, the standard library's rule for
// descriptors made without O_CLOEXEC (os/exec takes it for writing around
// fork), and every /dev/fuse descriptor of the process is marked
// close-on-exec before the lock is released. The fusermount path cannot
// hold the lock (go-fuse starts fusermount itself); go-fuse marks that
// descriptor itself, right after receiving it.
func newFuseServer(fs fuse.RawFileSystem, mountpoint string, mo *fuse.MountOptions, direct bool) (*fuse.Server, error) {
	if direct {
		syscall.ForkLock.RLock()
		defer syscall.ForkLock.RUnlock()
		defer closeFuseDevicesOnExec()
	}
	return fuse.NewServer(fs, mountpoint, mo)
}

// closeFuseDevicesOnExec marks every descriptor of this process that is
// open on /dev/fuse close-on-exec. None is ever meant for a child: the
// descriptors handed to go-fuse as /dev/fd/N are used in this process.
func closeFuseDevicesOnExec() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, ent := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + ent.Name()); err == nil && target == "/dev/fuse" {
			if fd, err := strconv.Atoi(ent.Name()); err == nil {
				syscall.CloseOnExec(fd)
			}
		}
	}
}

// probePassthrough asks the kernel to register a throwaway backing file: the
// only reliable test of whether this connection may use passthrough.
func (s *Server) probePassthrough() error {
	fd, err := unix.MemfdCreate("ramproc-probe", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("passthrough probe: memfd_create: %w", err)
	}
	defer unix.Close(fd)
	id, errno := s.fuse.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
	if errno != 0 {
		return fmt.Errorf("FUSE passthrough needs root and Linux >= 6.9 (registering a backing file: %w)", errno)
	}
	s.fuse.UnregisterBackingFd(id)
	return nil
}

func mountError(mnt string, err error) error {
	if os.Geteuid() == 0 {
		return fmt.Errorf("cannot mount %s: %w", mnt, err)
	}
	msg := strings.Join(strings.Fields(err.Error()), " ")
	if _, lerr := exec.LookPath("fusermount3"); lerr != nil {
		return fmt.Errorf("cannot mount %s: %s; as a non-root user this needs fusermount3 (apt-get install fuse3), or run as root", mnt, msg)
	}
	return fmt.Errorf("cannot mount %s: %s; a non-root mount needs /dev/fuse readable and writable by you (Debian's default mode is 0666) and, with -allow-other, user_allow_other in /etc/fuse.conf; or run as root", mnt, msg)
}

// prepareMountpoint makes mnt usable and claims it: created if missing (only
// now that every other check has passed), a stale FUSE mount detached, the
// claim taken (see claim.go) before the check that nothing is mounted there,
// so that of two servers started at once exactly one mounts. Anything
// unusable is reported with what to do.
func prepareMountpoint(mnt string, log *slog.Logger) (*claim, error) {
	var st unix.Stat_t
	err := unix.Stat(mnt, &st)
	if err == nil {
		// stat(2) may be answered from attributes the kernel cached before
		// the server died; statfs(2) always asks the server.
		var sfs unix.Statfs_t
		if serr := unix.Statfs(mnt, &sfs); serr != nil {
			err = serr
		}
	}
	if errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED) {
		log.Warn("detaching a dead FUSE mount left by a killed server", "mountpoint", mnt)
		if derr := detach(mnt); derr != nil {
			// Another server starting at the same moment may have
			// detached it first.
			if unix.Stat(mnt, &st) != nil {
				return nil, fmt.Errorf("%s holds a dead FUSE mount and detaching it failed (%v); run 'umount -l %s' as its owner, then retry", mnt, derr, mnt)
			}
		}
		err = unix.Stat(mnt, &st)
	}
	var created []string
	if errors.Is(err, unix.ENOENT) {
		if created, err = mkdirAll(mnt); err != nil {
			return nil, fmt.Errorf("mountpoint %s does not exist and cannot be created: %w", mnt, err)
		}
		err = unix.Stat(mnt, &st)
	}
	if err != nil {
		removeDirs(created)
		return nil, fmt.Errorf("cannot use %s as a mountpoint: %w", mnt, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("mountpoint %s is not a directory; give a directory (it is created if missing)", mnt)
	}
	cl, err := claimMountpoint(mnt, created)
	if err != nil {
		// Not removing what was created: the holder may be about to
		// mount on it.
		return nil, err
	}
	if fstype, ok := mountedFS(mnt); ok && !boundDir(fstype) {
		cl.release(true)
		if pid := claimHolder(mnt); pid > 0 {
			return nil, fmt.Errorf("%s is already a mount point, served by process %d (%s); stop it first (kill %d) or choose another directory: %w", mnt, pid, fstype, pid, ErrMountpointBusy)
		}
		return nil, fmt.Errorf("%s is already a mount point (%s); unmount it first (umount %s) or choose another directory: %w", mnt, fstype, mnt, ErrMountpointBusy)
	}
	return cl, nil
}

// mountedFS reports whether mnt is itself a mount point and what is
// mounted there (the topmost mount), from /proc/self/mountinfo: its type,
// with the suffix boundSuffix when it is a bind mount of a directory (its
// root in its file system is not "/", nor the btrfs subvolume that the
// mount shows whole: root "/@home" with subvol=/@home is a file system
// mounted, not a directory bound).
func mountedFS(mnt string) (string, bool) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	found, fstype := false, ""
	for _, line := range strings.Split(string(data), "\n") {
		// id parent major:minor root mountpoint options... - fstype source superoptions
		f := strings.Fields(line)
		if len(f) < 5 || unescapeMountinfo(f[4]) != mnt {
			continue
		}
		root := unescapeMountinfo(f[3])
		found, fstype = true, ""
		bound := root != "/"
		for i, x := range f {
			if x != "-" || i+1 >= len(f) {
				continue
			}
			fstype = f[i+1]
			if i+3 < len(f) {
				for _, o := range strings.Split(f[i+3], ",") {
					if unescapeMountinfo(o) == "subvol="+root {
						bound = false
					}
				}
			}
		}
		if bound {
			fstype += boundSuffix
		}
	}
	return fstype, found
}

// boundSuffix marks, in mountedFS's answer, a bind mount of a directory.
const boundSuffix = ", a bind mount of a directory"

// boundDir reports whether a mount point that mountedFS described may be
// mounted over: a bind mount of a directory of a disk or memory file system
// is, because that is how a directory is shared with a container (a
// Kubernetes hostPath volume, podman's and Docker's -v DIR:DIR:rshared,
// which the cgroupfs DaemonSet serves on: the server's mount point inside
// its container is always such a bind, and its mount must land on it to
// propagate back to the host). Mounting over it hides nothing: the bind
// shows a directory that is also reachable where it came from. A whole file
// system (root "/": a tmpfs, a disk) would be hidden, a FUSE mount is
// another server's, live or not (a dead one was detached before), and a
// directory of the kernel's own (proc, sysfs, cgroup: a container's view
// of its cgroup is such a bind) is no volume: all are refused.
func boundDir(fstype string) bool {
	t, bound := strings.CutSuffix(fstype, boundSuffix)
	switch t {
	case "proc", "sysfs", "cgroup", "cgroup2":
		return false
	}
	return bound && !strings.HasPrefix(t, "fuse")
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// detach lazily unmounts mnt: it vanishes from the namespace at once, and
// descriptors open on it keep talking to the server until closed.
func detach(mnt string) error {
	if os.Geteuid() == 0 {
		return unix.Unmount(mnt, unix.MNT_DETACH)
	}
	for _, bin := range []string{"fusermount3", "fusermount"} {
		if path, err := exec.LookPath(bin); err == nil {
			out, err := exec.Command(path, "-u", "-z", mnt).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%s -u -z: %v: %s", bin, err, strings.TrimSpace(string(out)))
			}
			return nil
		}
	}
	return errors.New("unmounting as a non-root user needs fusermount3 (apt-get install fuse3)")
}

// Mountpoint returns the absolute path of the mounted directory.
func (s *Server) Mountpoint() string { return s.mnt }

// Passthrough reports whether the kernel serves backing-file handlers by
// FUSE passthrough on this mount.
func (s *Server) Passthrough() bool { return s.passthrough.Load() }

// Unmount is the seed's module unload. The directory leaves the namespace
// at once, so new opens fail with ENOENT; callbacks in flight finish; every
// entry is removed, so later operations on descriptors still open fail with
// EIO; after Options.UnmountGrace the FUSE connection is aborted, so those
// descriptors get ENOTCONN and nothing waits on this process any more.
// Unmount returns when the server has stopped (or, where the connection
// cannot be aborted for lack of privilege, once the grace has passed). It is
// idempotent.
func (s *Server) Unmount() error {
	s.unmountOnce.Do(func() {
		// The claim goes last, once the directory is detached.
		defer s.claim.release(false)
		s.mu.Lock()
		s.closing = true
		list := s.rootDir.detachLocked(nil)
		s.mu.Unlock()

		if s.mountFd >= 0 {
			// A companion: its names leave with the main directory's
			// detach; its connection ends once this last reference to its
			// detached mount and the descriptors open on it are gone.
			unix.Close(s.mountFd)
		} else if err := detach(s.mnt); err != nil && !errors.Is(err, unix.EINVAL) {
			s.unmountErr = fmt.Errorf("unmount %s: %w", s.mnt, err)
		}
		var companion sync.WaitGroup
		// Under bindMu: a Create that makes the second connection
		// (ensureCompanion) has made it, or sees closing and makes none.
		s.bindMu.Lock()
		second := s.companion
		s.bindMu.Unlock()
		if c := second; c != nil {
			companion.Add(1)
			go func() { defer companion.Done(); c.Unmount() }()
		}
		defer companion.Wait()
		for _, e := range list {
			e.kill()
		}
		select {
		case <-s.served:
		case <-time.After(s.opts.UnmountGrace):
			if err := s.abort(); err != nil {
				// Without fusectl (not root) only closing /dev/fuse ends
				// the connection, which go-fuse leaves to process exit.
				// Waiting here could take forever, so return: every
				// callback now fails with EIO, and exiting finishes it.
				s.log.Warn("descriptors are still open on the unmounted directory and the connection cannot be aborted; it ends when they are closed or this process exits", "err", err)
				return
			}
			<-s.served
		}
		s.log.Info("unmounted", "mountpoint", s.mnt)
	})
	return s.unmountErr
}

// fusectlMu serializes this process's use of fusectl: a server that mounts
// it unmounts it again, and must not do so while another server of this
// process is writing to it.
var fusectlMu sync.Mutex

// abort ends the FUSE connection through fusectl, as
// 'echo 1 > /sys/fs/fuse/connections/N/abort' does. When fusectl was not
// mounted, abort mounts it and unmounts it again: the server leaves the
// system as it found it.
func (s *Server) abort() error {
	const ctl = "/sys/fs/fuse/connections"
	path := fmt.Sprintf("%s/%d/abort", ctl, s.connID)
	fusectlMu.Lock()
	defer fusectlMu.Unlock()
	var err error
	// Twice: another process may unmount fusectl between our check and
	// our write.
	for range 2 {
		mounted := false
		if _, serr := os.Stat(path); errors.Is(serr, os.ErrNotExist) {
			// fusectl is often not mounted; mounting it needs root.
			if merr := unix.Mount("fusectl", ctl, "fusectl", 0, ""); merr != nil && !errors.Is(merr, unix.EBUSY) {
				return fmt.Errorf("mount fusectl on %s: %w", ctl, merr)
			} else if merr == nil {
				mounted = true
			}
		}
		err = os.WriteFile(path, []byte("1"), 0)
		if mounted {
			if uerr := unix.Unmount(ctl, 0); uerr != nil {
				unix.Unmount(ctl, unix.MNT_DETACH)
			}
		}
		if !errors.Is(err, os.ErrNotExist) {
			break
		}
	}
	return err
}

// Wait blocks until the server has stopped: after Unmount, or after the
// mount was removed from outside (umount, a killed client's last close).
// After a restart (Server.Restart) it returns once the new process serves.
func (s *Server) Wait() {
	select {
	case <-s.served:
	case <-s.rs.handedOver:
	}
}
