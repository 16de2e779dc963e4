// Package cgroup reads what the kernel's cgroup file systems say about a
// process: which cgroups it is in (/proc/PID/cgroup) and, for those cgroups,
// the memory limit and usage, swap, the cpuset, the CPU time used and the
// member processes. It handles cgroup v2 (the unified hierarchy), v1, and
// the hybrid of both that many machines run (memory and cpuset on v1, the
// rest on v2), finding each controller where it is mounted.
//
// Every figure is read afresh at each call, because the callers (the
// cgroupfs files) answer for whoever reads them at that moment; what is
// kept is the files' descriptors (read again with pread) and what a
// content of /proc/PID/cgroup (or /proc/PID/cpuset, see CpusetOf) means
// (see Of), never which process is in which cgroup. A controller that is
// mounted nowhere gives ok == false, and the caller falls back to the
// host's own figures.
package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/ramproc/ramproc/cgroupfs/internal/kept"
)

// Mount is one mounted cgroup hierarchy.
type Mount struct {
	// Dir is where the hierarchy is mounted, e.g. /sys/fs/cgroup/memory.
	Dir string
	// Root is the cgroup that the mount shows at Dir: "/" normally, a
	// sub-cgroup when a container was given a bind of part of the tree.
	Root string
}

// Hierarchies says where the cgroup hierarchies of this machine are
// mounted, and where procfs is. Discover fills it from the running system;
// tests fill it by hand to point at fixture trees.
type Hierarchies struct {
	// Proc is the procfs root ("/proc"), where PID/cgroup is read.
	Proc string
	// V1 maps each v1 controller ("memory", "cpuset", "cpuacct",
	// "name=systemd", ...) to the hierarchy it is bound to.
	V1 map[string]Mount
	// Unified is the v2 hierarchy, nil if none is mounted.
	Unified *Mount

	mu       sync.Mutex
	resolved map[string]*places // see resolve
	// resolvedCpuset is resolved for the contents of /proc/PID/cpuset
	// (see CpusetOf).
	resolvedCpuset map[string]*places
	sched          map[string]schedCheck // see hasSchedCounters
}

// Discover finds the cgroup hierarchies of the running system from
// /proc/self/mountinfo.
func Discover() (*Hierarchies, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	h, err := ParseMountinfo(data)
	if err != nil {
		return nil, err
	}
	h.Proc = "/proc"
	return h, nil
}

// ParseMountinfo collects the cgroup and cgroup2 mounts listed in a
// mountinfo file (proc(5)). The first mount of a controller wins, as a
// controller is bound to one hierarchy however often it is mounted. Proc is
// left empty.
func ParseMountinfo(data []byte) (*Hierarchies, error) {
	h := &Hierarchies{V1: map[string]Mount{}}
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(line)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 5 || sep < 0 || sep+3 > len(f) {
			return nil, fmt.Errorf("mountinfo: malformed line %q", line)
		}
		m := Mount{Dir: unescapeOctal(f[4]), Root: unescapeOctal(f[3])}
		switch f[sep+1] {
		case "cgroup2":
			if h.Unified == nil {
				h.Unified = &m
			}
		case "cgroup":
			super := ""
			if sep+3 < len(f) {
				super = f[sep+3]
			}
			for _, opt := range strings.Split(super, ",") {
				if isOption(opt) {
					continue
				}
				if _, dup := h.V1[opt]; !dup {
					h.V1[opt] = m
				}
			}
		}
	}
	return h, nil
}

// isOption tells the generic mount options of a v1 cgroup mount from the
// controller names that share its superblock options.
func isOption(opt string) bool {
	switch opt {
	case "", "rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "favordynmods", "nofavordynmods":
		return true
	}
	return strings.HasPrefix(opt, "release_agent=")
}

// unescapeOctal undoes mountinfo's \NNN escapes (space, tab, newline,
// backslash in paths).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Membership is the content of /proc/PID/cgroup: the cgroup path of a
// process in each hierarchy.
type Membership struct {
	// V1 maps each v1 controller (and named hierarchy, "name=systemd") to
	// the process's cgroup path in it.
	V1 map[string]string
	// Unified is the path on the "0::" line; HasUnified says whether there
	// was one.
	Unified    string
	HasUnified bool
}

// ParseProcCgroup parses /proc/PID/cgroup: lines "ID:CONTROLLERS:PATH",
// where ID 0 with empty controllers is cgroup v2 and the others are v1
// hierarchies (controllers separated by commas).
func ParseProcCgroup(data []byte) (Membership, error) {
	m := Membership{V1: map[string]string{}}
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		id, rest, ok1 := strings.Cut(line, ":")
		ctrls, p, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 || !strings.HasPrefix(p, "/") {
			return Membership{}, fmt.Errorf("cgroup: malformed line %q", line)
		}
		if _, err := strconv.ParseUint(id, 10, 32); err != nil {
			return Membership{}, fmt.Errorf("cgroup: malformed hierarchy id in %q", line)
		}
		if id == "0" && ctrls == "" {
			m.Unified, m.HasUnified = p, true
			continue
		}
		for _, c := range strings.Split(ctrls, ",") {
			if c != "" {
				m.V1[c] = p
			}
		}
	}
	return m, nil
}

// Group is a process's place in the cgroup hierarchies: the answer to
// "which cgroup is this process in", per controller. Its methods read the
// cgroups' figures at the moment of the call.
type Group struct {
	h *Hierarchies
	// Pid is the process the group was looked up for.
	Pid int
	// Membership is what /proc/PID/cgroup said. Its maps may be shared
	// with other Groups of the same content: read them, never write.
	Membership Membership

	pl *places
}

// Of looks up the cgroups of process pid. A process that does not exist
// gives an error satisfying errors.Is(err, fs.ErrNotExist).
//
// /proc/PID/cgroup is read at every call: it is what ties an answer to
// the process's cgroups at that moment (a process moves between cgroups
// while it lives). Its descriptor is kept and read again with pread (see
// procKept), and the parsed and resolved content is kept by the content
// itself (see resolve): a process that has moved reads another content.
func (h *Hierarchies) Of(pid int) (*Group, error) {
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	data, err := procKept.ReadRecord(h.Proc+"/"+strconv.Itoa(pid)+"/cgroup", (*bp)[:0])
	if err != nil {
		return nil, err
	}
	*bp = data[:0] // grown: keep the larger buffer
	pl, err := h.resolve(data)
	if err != nil {
		return nil, err
	}
	return &Group{h: h, Pid: pid, Membership: pl.m, pl: pl}, nil
}

// CpusetOf is Of for what depends on the cpuset controller alone
// (Group.CPUs: cpuinfo and online show nothing else): where cpuset is
// bound to a mounted v1 hierarchy, it reads /proc/PID/cpuset, the
// process's cgroup in that hierarchy, which the kernel makes in a fifth
// of the time of /proc/PID/cgroup (one path, not a line per hierarchy
// made under the css_set lock: 1 µs against 5 µs on a hybrid machine with
// ten hierarchies, the largest part of an open of those files besides
// the FUSE requests). It is read at every call, as Of's file, and its
// content is kept by the content, so a process that moves reads another
// path. The Group it returns knows only the cpuset's cgroup: any other
// controller is as if mounted nowhere. Without a v1 cpuset mount (v2
// names all controllers on one line, which costs no more) and whenever
// the cpuset file cannot be read, it is Of.
func (h *Hierarchies) CpusetOf(pid int) (*Group, error) {
	if _, ok := h.V1["cpuset"]; !ok {
		return h.Of(pid)
	}
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	data, err := procKept.ReadRecord(h.Proc+"/"+strconv.Itoa(pid)+"/cpuset", (*bp)[:0])
	if err != nil {
		// A process that is gone, or a procfs without the file: Of
		// says which.
		return h.Of(pid)
	}
	*bp = data[:0]
	pl, err := h.resolveCpuset(data)
	if err != nil {
		return nil, err
	}
	return &Group{h: h, Pid: pid, Membership: pl.m, pl: pl}, nil
}

// resolveCpuset is resolve for a content of /proc/PID/cpuset: one cgroup
// path and a newline.
func (h *Hierarchies) resolveCpuset(data []byte) (*places, error) {
	path, ok := bytes.CutSuffix(data, []byte("\n"))
	if !ok || len(path) == 0 || path[0] != '/' || bytes.IndexByte(path, '\n') >= 0 {
		return nil, fmt.Errorf("/proc/PID/cpuset: %w: %q", errMalformed, data)
	}
	if pl, ok := h.cached(&h.resolvedCpuset, path); ok {
		return pl, nil
	}
	pl := h.places(Membership{V1: map[string]string{"cpuset": string(path)}})
	h.keep(&h.resolvedCpuset, path, pl)
	return pl, nil
}

// readBufs are the buffers Of reads /proc/PID/cgroup into: only parsed,
// never handed out.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// procKept keeps the descriptors of the /proc/PID/cgroup files that Of
// reads, to read them again with pread: a reader of cgroupfs's files opens
// them again and again, and the open of a procfs file (its path walk, the
// process's directory looked up) costs more than the read. A descriptor
// holds its process, not its number: once the process has exited, its
// read fails with ESRCH and the path is opened anew (see package kept), so
// a process that reuses the pid is never read through the old one's
// descriptor. Bounded apart from the cgroup files, past which the oldest
// is closed (a server that many short-lived processes read keeps only the
// newest).
var procKept = kept.Files{Max: 256}

// places is a Membership resolved against the mounts: where each
// controller's cgroup is, as placeOf and home find it. It depends only on
// the Membership and the Hierarchies, so it is kept by content.
type places struct {
	m          Membership
	v1         map[string]placeOK // the controllers mounted on v1 that m names
	unified    placeOK            // v2's, when mounted and named
	hasUnified bool
	home       placeOK
}

type placeOK struct {
	p  place
	ok bool
}

// resolve parses the content of /proc/PID/cgroup and resolves it, or
// returns the places of the same content resolved before. The content
// names the cgroups, so a process that moves (or a pid reused by another
// process elsewhere) gives another content and another answer: nothing
// here says which process is where, only what a content means. Up to
// maxResolved contents are kept; past that the map starts over.
func (h *Hierarchies) resolve(data []byte) (*places, error) {
	if pl, ok := h.cached(&h.resolved, data); ok {
		return pl, nil
	}
	m, err := ParseProcCgroup(data)
	if err != nil {
		return nil, err
	}
	pl := h.places(m)
	h.keep(&h.resolved, data, pl)
	return pl, nil
}

const maxResolved = 1024

// cached returns what key resolved to in *m, one of h's maps of resolved
// contents.
func (h *Hierarchies) cached(m *map[string]*places, key []byte) (*places, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	pl, ok := (*m)[string(key)]
	return pl, ok
}

// keep keeps pl as what key resolves to in *m; past maxResolved contents
// the map starts over.
func (h *Hierarchies) keep(m *map[string]*places, key []byte, pl *places) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if *m == nil || len(*m) >= maxResolved {
		*m = map[string]*places{}
	}
	(*m)[string(key)] = pl
}

// places resolves m.
func (h *Hierarchies) places(m Membership) *places {
	pl := &places{m: m, v1: map[string]placeOK{}}
	for c, mnt := range h.V1 {
		if cg, ok := m.V1[c]; ok {
			p, ok := at(mnt, cg, false)
			pl.v1[c] = placeOK{p, ok}
		}
	}
	if h.Unified != nil && m.HasUnified {
		p, ok := at(*h.Unified, m.Unified, true)
		pl.unified, pl.hasUnified = placeOK{p, ok}, true
	}
	g := &Group{h: h, Membership: m, pl: pl}
	pl.home.p, pl.home.ok = g.findHome()
	return pl
}

// place is where one controller of a process lives: the hierarchy and the
// directory of the process's cgroup in it.
type place struct {
	mount Mount
	cg    string // cgroup path, as /proc/PID/cgroup gives it
	dir   string // directory of that cgroup in the mounted hierarchy
	v2    bool
}

// placeOf finds the hierarchy that holds controller: v1 if it is bound to
// a v1 hierarchy that the process has a line for (a controller can be
// bound to only one hierarchy at a time), else the unified one. ok is
// false when the process's cgroup cannot be reached through the mounts
// (a cgroup outside a partial mount's Root).
func (g *Group) placeOf(controller string) (place, bool) {
	if p, ok := g.pl.v1[controller]; ok {
		return p.p, p.ok
	}
	return g.unified()
}

// unified is the process's place in v2; ok is false without v2 or a line
// for it.
func (g *Group) unified() (place, bool) {
	if !g.pl.hasUnified {
		return place{}, false
	}
	return g.pl.unified.p, g.pl.unified.ok
}

func at(mnt Mount, cg string, v2 bool) (place, bool) {
	root := path.Clean("/" + mnt.Root)
	cg = path.Clean("/" + cg)
	rel, ok := within(cg, root)
	if !ok {
		return place{}, false
	}
	return place{mount: mnt, cg: cg, dir: filepath.Join(mnt.Dir, rel), v2: v2}, true
}

// within reports whether cgroup path p is root or below it, and p relative
// to root.
func within(p, root string) (string, bool) {
	if root == "/" {
		return p, true
	}
	if p == root {
		return "/", true
	}
	if strings.HasPrefix(p, root+"/") {
		return p[len(root):], true
	}
	return "", false
}

// readUp reads file in the place's directory or, where it is missing, in
// the nearest ancestor (up to the hierarchy's mount point) that has it: in
// v2 a cgroup where a controller is not enabled has none of its files, and
// is accounted in the nearest ancestor that has them. It returns the
// content and the directory it was found in; ok is false if none has it.
//
// If the place's own directory is gone (the cgroup was removed after
// /proc/PID/cgroup was read: the process has moved), it returns an error
// wrapping ErrRemoved rather than an ancestor's figures, which are not the
// process's.
func (p place) readUp(file string, s *scratch) (data []byte, dir string, ok bool, err error) {
	for dir = p.dir; ; dir = filepath.Dir(dir) {
		data, err = readControl(filepath.Join(dir, file), s)
		if err == nil {
			return data, dir, true, nil
		}
		if !os.IsNotExist(err) {
			return nil, "", false, err
		}
		if dir == p.dir {
			if _, err := os.Stat(dir); os.IsNotExist(err) {
				return nil, "", false, fmt.Errorf("%s: %w", dir, ErrRemoved)
			}
		}
		if dir == p.mount.Dir || len(dir) <= len(p.mount.Dir) {
			return nil, "", false, nil
		}
	}
}

// ancestors lists dir and its parents up to the mount point, nearest first.
func (p place) ancestors(dir string) []string {
	var list []string
	for {
		list = append(list, dir)
		if dir == p.mount.Dir || len(dir) <= len(p.mount.Dir) {
			return list
		}
		dir = filepath.Dir(dir)
	}
}

// readUint reads a file holding one unsigned number (and a newline).
func readUint(file string, s *scratch) (uint64, error) {
	data, err := readControl(file, s)
	if err != nil {
		return 0, err
	}
	return parseUint(data)
}

func parseUint(data []byte) (uint64, error) {
	n, err := strconv.ParseUint(string(bytes.TrimSpace(data)), 10, 64)
	if err != nil {
		return 0, errMalformed
	}
	return n, nil
}

// ErrRemoved says that a process's cgroup was removed while it was being
// read: the process has moved to another cgroup since /proc/PID/cgroup
// was read, and Of must be asked again.
var ErrRemoved = errors.New("cgroup removed")

// errMalformed marks a cgroup file whose content is not what the kernel
// writes.
var errMalformed = errors.New("malformed cgroup file")

// keptFiles keeps the cgroup files that are read open, to read them again with
// pread (see package kept): a cgroup removed and recreated under the same
// name is read anew, never through the removed one's descriptor. The
// processes' own files (/proc/PID/cgroup) are kept apart (procKept).
var keptFiles kept.Files

// readControl reads a cgroup control file through keptFiles, into s's
// buffer when s is not nil (a content that is parsed at once: the next
// read into s overwrites it). All of them are one record (see
// kept.Files.ReadRecord) but the lists (cgroup.procs, tasks) and v1's
// memory.kmem.slabinfo of kernels before 5.9.
func readControl(path string, s *scratch) ([]byte, error) {
	var buf []byte
	if s != nil {
		buf = s.b[:0]
	}
	var data []byte
	var err error
	switch filepath.Base(path) {
	case "cgroup.procs", "tasks", "memory.kmem.slabinfo":
		data, err = keptFiles.Read(path, buf)
	default:
		data, err = keptFiles.ReadRecord(path, buf)
	}
	if s != nil && err == nil && cap(data) > cap(s.b) {
		s.b = data[:0] // grown: keep the larger buffer
	}
	return data, err
}

// scratch is a buffer that a Group's method reads control files into
// when it only parses them: the figures, not the bytes, leave it, so a
// read costs no allocation. Each read overwrites the last.
type scratch struct{ b []byte }

var scratches = sync.Pool{New: func() any { return &scratch{b: make([]byte, 0, 2048)} }}

// getScratch lends a scratch; give it back with put once nothing read
// into it is used any more.
func getScratch() *scratch { return scratches.Get().(*scratch) }

func (s *scratch) put() {
	if cap(s.b) <= 64<<10 {
		scratches.Put(s)
	}
}

// At returns the Group of the cgroup at path (a path as /proc/PID/cgroup
// gives it) in every hierarchy: what a process there would be in, with
// runtimes' habit of using one path in all of them. A hierarchy that has
// no cgroup at path counts the cgroup in its root (that controller's
// figures are then the host's). Its Pid is 0. ok is false when the home
// hierarchy (see HomeMount) has no cgroup at path: it does not exist, or
// no longer.
func (h *Hierarchies) At(path string) (g *Group, ok bool) {
	path = "/" + strings.Trim(path, "/")
	m := Membership{V1: map[string]string{}}
	for c, mnt := range h.V1 {
		m.V1[c] = "/"
		if p, ok := at(mnt, path, false); ok && isDir(p.dir) {
			m.V1[c] = path
		}
	}
	if h.Unified != nil {
		m.Unified, m.HasUnified = "/", true
		if p, ok := at(*h.Unified, path, true); ok && isDir(p.dir) {
			m.Unified = path
		}
	}
	g = &Group{h: h, Membership: m, pl: h.places(m)}
	if home, found := g.home(); !found || !isDir(home.dir) || (home.cg != path && path != "/") {
		return nil, false
	}
	return g, true
}

func isDir(dir string) bool {
	st, err := os.Stat(dir)
	return err == nil && st.IsDir()
}

// HomeMount is the hierarchy whose cgroup paths name a process's cgroup
// (see Group.Members): the memory controller's, else v2's, else the pids
// or cpuset controller's. ok is false when none is mounted.
func (h *Hierarchies) HomeMount() (Mount, bool) {
	if m, ok := h.V1["memory"]; ok {
		return m, true
	}
	if h.Unified != nil {
		return *h.Unified, true
	}
	for _, c := range []string{"pids", "cpuset"} {
		if m, ok := h.V1[c]; ok {
			return m, true
		}
	}
	return Mount{}, false
}

// Pin is one process held by a descriptor of its /proc/PID/cgroup, to ask
// again and cheaply which cgroups that very process is in: the descriptor
// holds the process, not its number, so once the process has exited every
// read fails (ESRCH) and is never answered by a later process that reuses
// the pid. Unlike Of, a Pin is never opened anew.
type Pin struct {
	h   *Hierarchies
	pid int
	f   *os.File
}

// Pin opens process pid's /proc/PID/cgroup. The caller tells that the
// process it meant is the one held (its start time, read after Pin
// returns, is unchanged) and Closes the Pin.
func (h *Hierarchies) Pin(pid int) (*Pin, error) {
	f, err := os.Open(h.Proc + "/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return nil, err
	}
	return &Pin{h: h, pid: pid, f: f}, nil
}

// Group is Of for the pinned process: its cgroups now, with one pread(2);
// an error once it has exited (or the Pin is closed).
func (p *Pin) Group() (*Group, error) {
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := (*bp)[:cap(*bp)]
	// One pread: the file is one record (os.File.ReadAt would read
	// again to fill the buffer, for nothing).
	rc, err := p.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var n int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = syscall.Pread(int(fd), buf, 0)
			if rerr != syscall.EINTR {
				return true
			}
		}
	}); err != nil {
		return nil, err
	}
	if rerr != nil {
		return nil, &os.PathError{Op: "read", Path: p.f.Name(), Err: rerr}
	}
	if n == len(buf) {
		return nil, fmt.Errorf("%s: longer than %d bytes", p.f.Name(), len(buf))
	}
	pl, err := p.h.resolve(buf[:n])
	if err != nil {
		return nil, err
	}
	return &Group{h: p.h, Pid: p.pid, Membership: pl.m, pl: pl}, nil
}

// Close closes the descriptor; a Group after it fails.
func (p *Pin) Close() error { return p.f.Close() }
