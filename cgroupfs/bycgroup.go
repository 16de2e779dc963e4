package cgroupfs

import (
	"bytes"
	"context"
	"encoding/binary"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/cgroupfs/procview"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// by-cgroup/<cgroup path>/proc/... and .../sys/devices/system/cpu/online
// are the files of one cgroup, the same for whoever reads them: a
// container that bind-mounts its own cgroup's files gets its figures
// without the server looking up who reads. The cgroup path is the one
// /proc/PID/cgroup gives for the memory controller (v2: the unified
// path); the directories mirror that hierarchy. Names "proc" and "sys"
// hold the files, so a cgroup with one of those names is not reachable
// here.
//
// The tree is static, so that it is served from the kernel's cache: each
// file is Generated(...).MaxAge(Options.ByCgroupMaxAge), never read older
// than that bound, and the whole of by-cgroup holds only such files, so on
// a mount made by root it is one bind of the no-open connection and a read
// within the bound costs no request (see fusebridge's "Freshness bounds").
// It follows the hierarchy: published at start, a cgroup made later is
// added when inotify reports it, or at once when a lookup asks for its
// name first (Dir.OnMiss: a container that bind-mounts its files right
// after its cgroup is made finds them), and a removed one is withdrawn
// when inotify reports it. A name that is no cgroup costs a stat(2) and
// leaves nothing behind. Between a cgroup's removal and its withdrawal a
// read may still get its last content, within the bound.

// DefaultByCgroupMaxAge is the freshness bound of by-cgroup's files when
// Options.ByCgroupMaxAge is 0.
const DefaultByCgroupMaxAge = 100 * time.Millisecond

// byCgroup keeps by-cgroup in step with the cgroup hierarchy.
type byCgroup struct {
	v      *procview.View
	o      Options
	maxAge time.Duration
	inot   *os.File // inotify instance, nil without one
	syncMu sync.Mutex
	// walkBuf is resync's buffer for getdents(2); guarded by syncMu.
	walkBuf []byte

	mu    sync.Mutex
	nodes map[string]*cgNode // by cgroup path ("/" is by-cgroup itself)

	// same holds, per file name below a cgroup (proc/meminfo, ...), the
	// last content made (see sameContent); guarded by mu.
	same map[string]*sameContent
}

// sameContent is the last content of one file name made for any cgroup.
// Each bounded file keeps its last snapshot until its next read, for
// every cgroup ever read; where cgroups show the same bytes (cpuinfo,
// online, swaps, slabinfo, diskstats and pressure of cgroups with the same
// cpuset and no I/O or swap of their own, meminfo of idle cgroups with the
// same limit), they share one copy rather than keep one each. It is only
// a dedup of equal bytes, made afresh each time: no cgroup is shown other
// figures than its own, nor older ones.
type sameContent struct {
	mu   sync.Mutex
	last []byte
}

// of returns data, or the equal content kept; either is never written to
// again (a snapshot handler only copies out of its content).
func (s *sameContent) of(data []byte) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last != nil && bytes.Equal(data, s.last) {
		return s.last
	}
	if cap(data)-len(data) > len(data)/8 {
		// Kept for as long as the cgroup is not read again: not with
		// the room an append left.
		data = append(make([]byte, 0, len(data)), data...)
	}
	s.last = data
	return data
}

// sameFor is the sameContent of file name (relative to a cgroup's
// directory).
func (b *byCgroup) sameFor(name string) *sameContent {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.same[name]
	if s == nil {
		s = &sameContent{}
		b.same[name] = s
	}
	return s
}

// cgNode is one published cgroup directory.
type cgNode struct {
	dir   *fusebridge.Dir // set before built is closed
	ino   uint64          // the cgroup directory's inode number; 0: kept (above the hierarchy's root)
	built chan struct{}   // closed once dir and its files are published
}

// publishByCgroup makes by-cgroup in root and starts following the
// hierarchy.
func publishByCgroup(root *fusebridge.Dir, v *procview.View, o Options) error {
	b := &byCgroup{v: v, o: o, maxAge: o.ByCgroupMaxAge, nodes: map[string]*cgNode{}, same: map[string]*sameContent{}}
	if b.maxAge <= 0 {
		b.maxAge = DefaultByCgroupMaxAge
	}
	top, err := root.Mkdir("by-cgroup", 0o555)
	if err != nil {
		return err
	}
	// by-cgroup and the cgroups above the hierarchy's root (a container's
	// bind of part of the tree) are kept: they have no directory to follow.
	rootPath := "/"
	if m, ok := v.Cgroups.HomeMount(); ok {
		rootPath = path.Clean("/" + m.Root)
	}
	n := &cgNode{dir: top, built: make(chan struct{})}
	b.nodes["/"] = n
	if err := b.files(n.dir, "/"); err != nil {
		return err
	}
	close(n.built)
	// The hooks come after the first files: the first bounded file binds
	// by-cgroup, which a lookup waiting in a hook would hold up.
	top.OnMiss(b.miss("/"))
	for _, p := range ancestors(rootPath) {
		d, err := b.nodes[path.Dir(p)].dir.MkdirOnMiss(path.Base(p), 0o555, b.miss(p))
		if err != nil {
			return err
		}
		b.mu.Lock()
		b.nodes[p] = &cgNode{dir: d, built: n.built}
		b.mu.Unlock()
		if err := b.files(d, p); err != nil {
			return err
		}
	}
	if fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC); err == nil {
		b.inot = os.NewFile(uintptr(fd), "inotify")
	}
	b.resync()
	if b.inot != nil {
		go b.follow()
		v.OnClose(func() { b.inot.Close() })
	}
	return nil
}

// ancestors lists the cgroup paths from below "/" down to p, p included.
func ancestors(p string) []string {
	var list []string
	for ; p != "/" && p != "."; p = path.Dir(p) {
		list = append([]string{p}, list...)
	}
	return list
}

// hostDir is the directory of cgroup p in the home hierarchy.
func (b *byCgroup) hostDir(p string) (string, bool) {
	m, ok := b.v.Cgroups.HomeMount()
	if !ok {
		return "", false
	}
	rel, ok := within(path.Clean(p), path.Clean("/"+m.Root))
	if !ok {
		return "", false
	}
	return filepath.Join(m.Dir, rel), true
}

// within is path p relative to root, if p is root or below it.
func within(p, root string) (string, bool) {
	switch {
	case root == "/":
		return p, true
	case p == root:
		return "/", true
	case len(p) > len(root) && p[:len(root)] == root && p[len(root)] == '/':
		return p[len(root):], true
	}
	return "", false
}

// files publishes proc and sys of cgroup p in d. Their directories
// have a hook that waits until all are published: a reader that finds one
// before its files waits rather than get ENOENT.
func (b *byCgroup) files(d *fusebridge.Dir, p string) error {
	v := b.v.At(p)
	wait := b.waitBuilt(p)
	proc, err := d.MkdirOnMiss("proc", 0o555, wait)
	if err != nil {
		return err
	}
	for _, f := range procFiles {
		if f.name == "loadavg" && b.o.NoLoadavg {
			continue
		}
		if _, err := proc.Create(f.name, f.mode, b.file(v, "proc/"+f.name, f.derive)); err != nil {
			return err
		}
	}
	pressure, err := proc.MkdirOnMiss("pressure", 0o555, wait)
	if err != nil {
		return err
	}
	for _, r := range pressures {
		derive := func(v *procview.View, pid int) ([]byte, error) { return v.Pressure(pid, r) }
		if _, err := pressure.Create(r, 0o444, b.file(v, "proc/pressure/"+r, derive)); err != nil {
			return err
		}
	}
	cpu := d
	for _, name := range []string{"sys", "devices", "system", "cpu"} {
		if cpu, err = cpu.MkdirOnMiss(name, 0o555, wait); err != nil {
			return err
		}
	}
	_, err = cpu.Create("online", 0o444, b.file(v, "sys/devices/system/cpu/online", (*procview.View).Online))
	return err
}

// file is file name of one cgroup, generated at most once per bound; the
// pid passed to derive is the reader's who asks for a new version (the
// loadavg of a cgroup read for the first time names it as the last task),
// or 0. Its content is shared with other cgroups' equal one (sameContent).
func (b *byCgroup) file(v *procview.View, name string, derive func(v *procview.View, pid int) ([]byte, error)) handler.Bounded {
	same := b.sameFor(name)
	return handler.Generated(func(ctx context.Context) ([]byte, error) {
		pid, _ := caller(ctx)
		data, err := derive(v, pid)
		if err != nil {
			return nil, err
		}
		return same.of(data), nil
	}).MaxAge(b.maxAge)
}

// miss is the OnMiss hook of cgroup p's directory: a child cgroup not
// yet published is published now; proc and sys, while p's directory is
// being filled, are waited for. It only publishes (see Dir.OnMiss).
func (b *byCgroup) miss(p string) func(ctx context.Context, name string) {
	return func(ctx context.Context, name string) {
		if name == "proc" || name == "sys" {
			b.waitBuilt(p)(ctx, name)
			return
		}
		child := path.Join(p, name)
		dir, ok := b.hostDir(child)
		if !ok {
			return
		}
		st, err := os.Lstat(dir)
		if err != nil || !st.IsDir() {
			return // no cgroup: nothing kept
		}
		b.watch(dir)
		b.ensure(child, inoOf(st))
	}
}

// waitBuilt is the hook of the directories of cgroup p's files: it waits
// until p's directory and files are published.
func (b *byCgroup) waitBuilt(p string) func(ctx context.Context, name string) {
	return func(ctx context.Context, name string) {
		b.mu.Lock()
		n := b.nodes[p]
		b.mu.Unlock()
		if n != nil {
			<-n.built
		}
	}
}

// inoOf is the inode number of a cgroup's directory, which a cgroup made
// anew under the same name does not share.
func inoOf(st fs.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Ino
	}
	return 0
}

// ensure publishes cgroup p (directory inode ino) if it is not: its
// parent must be. It waits for one being published by another goroutine.
func (b *byCgroup) ensure(p string, ino uint64) {
	b.mu.Lock()
	if n := b.nodes[p]; n != nil {
		b.mu.Unlock()
		<-n.built
		return
	}
	parent := b.nodes[path.Dir(p)]
	if parent == nil {
		b.mu.Unlock()
		return
	}
	n := &cgNode{ino: ino, built: make(chan struct{})}
	b.nodes[p] = n
	b.mu.Unlock()
	defer close(n.built)
	<-parent.built
	if parent.dir == nil {
		b.drop(p, n)
		return
	}
	// With its hook from the start: a reader that finds the directory
	// before its files waits for them (miss) rather than get ENOENT.
	d, err := parent.dir.MkdirOnMiss(path.Base(p), 0o555, b.miss(p))
	if err != nil {
		// The parent was removed, or the old directory of the name is
		// not yet withdrawn: the next event or lookup tries again.
		b.drop(p, n)
		return
	}
	if err := b.files(d, p); err != nil {
		b.drop(p, n)
		return // the parent was removed meanwhile
	}
	n.dir = d
}

// drop forgets n, if it is still p's node.
func (b *byCgroup) drop(p string, n *cgNode) {
	b.mu.Lock()
	if b.nodes[p] == n {
		delete(b.nodes, p)
	}
	b.mu.Unlock()
}

// watch adds an inotify watch for the cgroups made and removed in dir.
func (b *byCgroup) watch(dir string) {
	if b.inot == nil {
		return
	}
	rc, err := b.inot.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		// A failure (fs.inotify.max_user_watches) leaves the cgroups
		// made below dir to lookups (OnMiss).
		unix.InotifyAddWatch(int(fd), dir, unix.IN_CREATE|unix.IN_DELETE|unix.IN_MOVED_FROM|unix.IN_MOVED_TO|unix.IN_ONLYDIR)
	})
}

// current reports whether cgroup p's directory is there with inode ino
// now: a lookup may have published a cgroup made after the walk.
func (b *byCgroup) current(p string, ino uint64) bool {
	dir, ok := b.hostDir(p)
	if !ok {
		return false
	}
	st, err := os.Lstat(dir)
	return err == nil && st.IsDir() && inoOf(st) == ino
}

// follow resyncs at each batch of inotify events, until the view is
// closed.
func (b *byCgroup) follow() {
	buf := make([]byte, 64<<10)
	for {
		if _, err := b.inot.Read(buf); err != nil {
			return
		}
		b.resync()
	}
}

// resync makes by-cgroup match the hierarchy: removed cgroups (and ones
// made anew under an old name) withdrawn, new ones published, each cgroup
// directory watched.
func (b *byCgroup) resync() {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	m, ok := b.v.Cgroups.HomeMount()
	if !ok {
		return
	}
	top, rootPath := m.Dir, path.Clean("/"+m.Root)
	found := map[string]uint64{}
	if st, err := os.Lstat(top); err == nil && st.IsDir() {
		if b.walkBuf == nil {
			b.walkBuf = make([]byte, 8<<10)
		}
		walkDirs(top, inoOf(st), b.walkBuf, func(dir string, ino uint64) bool {
			rel, _ := filepath.Rel(top, dir)
			p := path.Join(rootPath, filepath.ToSlash(rel))
			if name := path.Base(p); p != rootPath && (name == "proc" || name == "sys") {
				return false // not reachable (see above)
			}
			found[p] = ino
			b.watch(dir)
			return true
		})
	}
	var stale []*cgNode
	b.mu.Lock()
	for p, n := range b.nodes {
		if ino, ok := found[p]; n.ino != 0 && (!ok || ino != n.ino) && !b.current(p, n.ino) {
			stale = append(stale, n)
			delete(b.nodes, p)
		}
	}
	b.mu.Unlock()
	for _, n := range stale {
		<-n.built
		if n.dir != nil {
			n.dir.Remove() // ENOENT for one inside a removed one
		}
	}
	var add []string
	for p := range found {
		if p != rootPath {
			add = append(add, p)
		}
	}
	// Parents first.
	sort.Slice(add, func(i, j int) bool {
		if di, dj := strings.Count(add[i], "/"), strings.Count(add[j], "/"); di != dj {
			return di < dj
		}
		return add[i] < add[j]
	})
	for _, p := range add {
		b.ensure(p, found[p])
	}
}

// walkDirs calls fn for dir (inode number ino) and every directory below
// it, symbolic links not followed, with its inode number; where fn
// returns false, what is below that directory is skipped. It reads each
// directory with getdents(2) into buf and looks at no entry but the
// directories. Why not filepath.WalkDir: resync walks the whole hierarchy
// at every batch of inotify events, and os.ReadDir's entry for each file
// (a cgroup directory holds tens of control files) made that walk 32 of
// the 53 MB allocated while 100 cgroups were made and read, garbage whose
// collections left the entries of the new cgroups' files scattered over
// a heap twice their size.
func walkDirs(dir string, ino uint64, buf []byte, fn func(dir string, ino uint64) bool) {
	if !fn(dir, ino) {
		return
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return // removed meanwhile: the next event says so
	}
	// The subdirectories are listed first and walked after the close: one
	// descriptor open at a time, and buf free for them.
	var subs []string
	for {
		n, err := unix.ReadDirent(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			break
		}
		// struct linux_dirent64: d_ino (8 bytes), d_off (8), d_reclen
		// (2), d_type (1), d_name (NUL-terminated).
		for rec := buf[:n]; len(rec) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(rec[16:18]))
			if reclen < 19 || reclen > len(rec) {
				break
			}
			name := rec[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			// DT_UNKNOWN: a file system that does not say; lstat tells.
			if typ := rec[18]; (typ == unix.DT_DIR || typ == unix.DT_UNKNOWN) && string(name) != "." && string(name) != ".." {
				subs = append(subs, string(name))
			}
			rec = rec[reclen:]
		}
	}
	unix.Close(fd)
	for _, name := range subs {
		// The inode number from lstat, not the entry's d_ino: on a mount
		// point that is the covered directory's.
		sub := filepath.Join(dir, name)
		var st unix.Stat_t
		if unix.Lstat(sub, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			walkDirs(sub, st.Ino, buf, fn)
		}
	}
}
