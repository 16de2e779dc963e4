// Package procview derives the /proc and /sys files that a process confined
// to a cgroup should see, the way LXCFS does for containers: meminfo with
// the cgroup's memory limit and usage, cpuinfo and cpu/online restricted to
// its cpuset, uptime counted from the cgroup's oldest process, and the list
// of the cgroup's processes.
//
// The pure functions (Meminfo, Cpuinfo, Uptime) turn the host's file and
// the cgroup's figures into the file's bytes; View reads both for a pid.
// A process whose controller is mounted nowhere, or that sits in the root
// cgroup, sees the host's own figures.
package procview

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
	"github.com/ramproc/ramproc/cgroupfs/loadavg"

	"github.com/ramproc/ramproc/cgroupfs/internal/kept"
)

// View reads the host's files and a process's cgroups and derives what the
// process should see.
type View struct {
	// Cgroups says where the cgroup hierarchies and procfs are.
	Cgroups *cgroup.Hierarchies
	// Proc is the host's procfs ("/proc"), Sys its sysfs ("/sys").
	Proc string
	Sys  string
	// NoSwap shows no swap to a confined process (LXCFS's -u).
	NoSwap bool
	// Load keeps the cgroups' load averages; nil serves the host's
	// loadavg.
	Load *loadavg.Sampler

	// Path, when set, is a cgroup path: the View then answers for that
	// cgroup whoever asks (see At).
	Path string

	// HostMaxAge is how long one read of a host file that is the same for
	// every reader (cpuinfo, stat, meminfo, uptime, diskstats, swaps) is
	// shared by all the reads that begin within it; 0 reads it at every
	// call. New sets DefaultHostMaxAge.
	HostMaxAge time.Duration

	s *shared
}

// New returns a View of the running system.
func New() (*View, error) {
	h, err := cgroup.Discover()
	if err != nil {
		return nil, err
	}
	return &View{Cgroups: h, Proc: "/proc", Sys: "/sys", Load: &loadavg.Sampler{Proc: "/proc"}, HostMaxAge: DefaultHostMaxAge}, nil
}

// DefaultHostMaxAge is the age up to which a host file's content is
// shared by all readers: one clock tick (USER_HZ is 100 on every Linux),
// the unit of /proc/stat's times and of /proc/uptime's two decimals, so
// no reader can tell a content shared within it from one read for it
// alone. The kernel's own figures lag more: meminfo's counters are folded
// from per-CPU deltas once a second (vm.stat_interval), cpuinfo's "cpu
// MHz" is sampled at the tick. The host's cpuinfo costs the kernel 30 µs
// to make, its stat and meminfo 8 µs, a third to a whole of what the
// server spends on one open of those files besides the FUSE requests.
const DefaultHostMaxAge = 10 * time.Millisecond

// Close stops the load sampling, and runs what OnClose was given.
func (v *View) Close() {
	if v.Load != nil {
		v.Load.Close()
	}
	s := v.state()
	s.mu.Lock()
	closers := s.closers
	s.closers = nil
	for _, o := range s.oldestOf {
		o.pin.Close()
	}
	s.oldestOf = nil
	s.mu.Unlock()
	for _, f := range closers {
		f()
	}
}

// OnClose has Close run f: what is built on the view (a watcher of the
// cgroup hierarchy) stops with it.
func (v *View) OnClose(f func()) {
	s := v.state()
	s.mu.Lock()
	s.closers = append(s.closers, f)
	s.mu.Unlock()
}

// shared is what a View and the Views made from it by At share.
type shared struct {
	mu         sync.Mutex
	oldestOf   map[string]*oldestProc // by cgroup directory (see oldest)
	hosts      map[string]*hostSnap   // by path (see hostShared)
	slabHeader []byte                 // see slabinfoHeader
	closers    []func()               // see OnClose
}

var sharedInit sync.Mutex

// state returns v's shared state, made at the first call.
func (v *View) state() *shared {
	sharedInit.Lock()
	defer sharedInit.Unlock()
	if v.s == nil {
		v.s = &shared{}
	}
	return v.s
}

// At returns a View that answers for the cgroup at path (as
// /proc/PID/cgroup names it in the memory controller's hierarchy, or v2's)
// whatever pid it is asked for: the files of MOUNT/by-cgroup/PATH. It
// shares v's caches and load sampler.
func (v *View) At(path string) *View {
	v.state()
	at := *v
	at.Path = path
	return &at
}

// derive returns f of process pid's cgroups (of v.Path's, if set). If a cgroup is removed while
// f reads it (cgroup.ErrRemoved, or a file or directory of it vanishing),
// the process has moved: its cgroups are looked up once more, so that it
// never gets the figures of an ancestor or of a cgroup it has left. A
// second failure is returned (its errno reaches the reader).
func (v *View) derive(pid int, f func(g *cgroup.Group) ([]byte, error)) ([]byte, error) {
	return v.deriveBy(pid, v.Cgroups.Of, f)
}

// deriveCpuset is derive for an f that reads only the cpuset (Group.CPUs),
// whose cgroup costs less to look up (cgroup.Hierarchies.CpusetOf).
func (v *View) deriveCpuset(pid int, f func(g *cgroup.Group) ([]byte, error)) ([]byte, error) {
	return v.deriveBy(pid, v.Cgroups.CpusetOf, f)
}

// deriveBy is derive with of looking up the process's cgroups.
func (v *View) deriveBy(pid int, of func(pid int) (*cgroup.Group, error), f func(g *cgroup.Group) ([]byte, error)) ([]byte, error) {
	if v.Path != "" {
		g, ok := v.Cgroups.At(v.Path)
		if !ok {
			return nil, fmt.Errorf("cgroup %s: %w", v.Path, fs.ErrNotExist)
		}
		return f(g)
	}
	for try := 0; ; try++ {
		g, err := of(pid)
		if err != nil {
			return nil, err
		}
		data, err := f(g)
		if try == 0 && (errors.Is(err, cgroup.ErrRemoved) || errors.Is(err, fs.ErrNotExist)) {
			continue
		}
		return data, err
	}
}

// withHost returns f of the host's file /proc/name and of process pid's
// cgroups (see derive).
func (v *View) withHost(pid int, name string, f func(host []byte, g *cgroup.Group) ([]byte, error)) ([]byte, error) {
	host, _, _, err := v.hostShared(v.Proc + "/" + name)
	if err != nil {
		return nil, err
	}
	return v.derive(pid, func(g *cgroup.Group) ([]byte, error) { return f(host, g) })
}

// hostSnap is the last read of one host file.
type hostSnap struct {
	mu      sync.Mutex
	data    []byte            // never written to once kept: readers hold it
	at      time.Time         // when its read began
	derived map[string][]byte // contents derived from data (see derive)
}

// hostShared returns the content of the host's file at path, read at
// most v.HostMaxAge before the call (see DefaultHostMaxAge), and when
// that read began. Every reader within that age gets the same bytes: a
// file the same for every reader, whose kernel generation is the cost.
// A later read replaces an earlier one only, so a reader that reads
// again never sees an older content than before. The hostSnap (nil when
// nothing is shared) keeps what is derived from that content.
func (v *View) hostShared(path string) ([]byte, time.Time, *hostSnap, error) {
	if v.HostMaxAge <= 0 {
		data, err := readHost(path)
		return data, time.Now(), nil, err
	}
	st := v.state()
	st.mu.Lock()
	h := st.hosts[path]
	if h == nil {
		if st.hosts == nil {
			st.hosts = map[string]*hostSnap{}
		}
		h = &hostSnap{}
		st.hosts[path] = h
	}
	st.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	// Held while reading: readers that come meanwhile wait for this
	// read, which is as new as any they would make.
	if h.data != nil && time.Since(h.at) < v.HostMaxAge {
		return h.data, h.at, h, nil
	}
	at := time.Now()
	data, err := readHost(path)
	h.data, h.at, h.derived = nil, at, nil
	if err != nil {
		return nil, at, nil, err
	}
	h.data = data
	return data, at, h, nil
}

// derive returns f(), kept with h's content host under key while h holds
// that content: what is made from the host's file alone (cpuinfo's blocks
// of one cpuset) is made once for all readers of one shared read. A nil
// h, or one that holds a newer content by now, keeps nothing.
func (h *hostSnap) derive(host []byte, key string, f func() []byte) []byte {
	if h == nil {
		return f()
	}
	h.mu.Lock()
	if len(h.data) == 0 || len(host) == 0 || &h.data[0] != &host[0] {
		h.mu.Unlock()
		return f()
	}
	if d, ok := h.derived[key]; ok {
		h.mu.Unlock()
		return d
	}
	h.mu.Unlock()
	d := f()
	h.mu.Lock()
	if len(h.data) > 0 && &h.data[0] == &host[0] && len(h.derived) < 64 {
		if h.derived == nil {
			h.derived = map[string][]byte{}
		}
		h.derived[key] = d
	}
	h.mu.Unlock()
	return d
}

func (v *View) group(pid int) (*cgroup.Group, error) {
	return v.Cgroups.Of(pid)
}

// Meminfo is /proc/meminfo as process pid should see it (see the function
// Meminfo).
func (v *View) Meminfo(pid int) ([]byte, error) {
	return v.withHost(pid, "meminfo", func(host []byte, g *cgroup.Group) ([]byte, error) {
		m, ok, err := v.memory(g)
		if err != nil || !ok {
			return host, err
		}
		return Meminfo(host, m), nil
	})
}

// cpus is the process's cpuset, ok false where it has none (the host's
// CPUs apply).
func (v *View) cpus(g *cgroup.Group) (cgroup.CPUSet, bool, error) {
	set, ok, err := g.CPUs()
	if err != nil || !ok || len(set) == 0 {
		return nil, false, err
	}
	return set, true, nil
}

// Cpuinfo is /proc/cpuinfo as process pid should see it: only the blocks
// of the CPUs in its cpuset (see the function Cpuinfo).
func (v *View) Cpuinfo(pid int) ([]byte, error) {
	host, _, snap, err := v.hostShared(v.Proc + "/cpuinfo")
	if err != nil {
		return nil, err
	}
	return v.deriveCpuset(pid, func(g *cgroup.Group) ([]byte, error) {
		set, ok, err := v.cpus(g)
		if err != nil || !ok {
			return host, err
		}
		return snap.derive(host, set.String(), func() []byte { return Cpuinfo(host, set) }), nil
	})
}

// Online is /sys/devices/system/cpu/online as process pid should see it:
// its cpuset in the kernel's list format, or the host's file where it has
// no cpuset.
func (v *View) Online(pid int) ([]byte, error) {
	return v.deriveCpuset(pid, func(g *cgroup.Group) ([]byte, error) {
		set, ok, err := v.cpus(g)
		if err != nil {
			return nil, err
		}
		if !ok {
			return readHost(filepath.Join(v.Sys, "devices/system/cpu/online"))
		}
		return []byte(set.String() + "\n"), nil
	})
}

// Uptime is /proc/uptime as process pid should see it: the time since the
// oldest process of its cgroup started (the container's init), and the
// idle time of its CPUs in that time (the CPU time the cgroup's CPUs could
// have given, minus what the cgroup used). A process in the root cgroup
// sees the host's file.
func (v *View) Uptime(pid int) ([]byte, error) {
	return v.withHost(pid, "uptime", func(hostData []byte, g *cgroup.Group) ([]byte, error) {
		if g.IsRoot() {
			return hostData, nil
		}
		hostUp, hostIdle, err := ParseUptime(hostData)
		if err != nil {
			return nil, err
		}
		oldest, found, err := v.oldest(g)
		if err != nil {
			return nil, err
		}
		if !found {
			return hostData, nil
		}
		age := max(0, hostUp-ticks(oldest))
		var idle time.Duration
		ncpu := 0
		if set, ok, err := g.CPUs(); err == nil && ok && len(set) > 0 {
			ncpu = len(set)
		} else if online, err := readHost(filepath.Join(v.Sys, "devices/system/cpu/online")); err == nil {
			if set, err := cgroup.ParseCPUList(string(online)); err == nil {
				ncpu = len(set)
			}
		}
		if busy, ok, err := g.CPUTime(); err == nil && ok && ncpu > 0 {
			idle = max(0, age*time.Duration(ncpu)-busy)
		} else if hostUp > 0 {
			// No CPU accounting: the host's idle share over that time.
			idle = time.Duration(float64(hostIdle) * float64(age) / float64(hostUp))
		}
		return Uptime(age, idle), nil
	})
}

// oldest returns the start time of the oldest process of g's cgroup (and
// of its descendants). Scanning the members costs a read per process, so
// the answer is kept per cgroup directory for up to a second (oldestFor),
// and only while that process lives and is still in the cgroup: a process
// that moves in from elsewhere and is older than it is seen within that
// second. The process is held by a descriptor of its /proc/PID/cgroup
// (cgroup.Pin), whose one read says both: a process that has exited fails
// it, whoever has its pid now. It is read at most once per v.HostMaxAge
// (one clock tick), the bound of the host's uptime the start time is
// subtracted from.
func (v *View) oldest(g *cgroup.Group) (start uint64, found bool, err error) {
	dir, inGroup := g.Dir()
	st := v.state()
	if inGroup {
		st.mu.Lock()
		o := st.oldestOf[dir]
		st.mu.Unlock()
		if o != nil && time.Since(o.at) < oldestFor {
			// Checked at most once per v.HostMaxAge, the age of the
			// host's uptime this is subtracted from: a cgroup read by
			// many costs one pread per tick, not one per open.
			now := time.Now().UnixNano()
			if now-o.checked.Load() < int64(v.HostMaxAge) {
				return o.start, true, nil
			}
			if o.stillIn(dir) {
				o.checked.Store(now)
				return o.start, true, nil
			}
		}
	}
	pids, err := g.Members()
	if err != nil {
		return 0, false, err
	}
	var pid int
	for _, p := range pids {
		s, err := v.startOf(p)
		if err != nil {
			continue // exited since the listing
		}
		if !found || s < start {
			pid, start, found = p, s, true
		}
	}
	if !found || !inGroup {
		return start, found, nil
	}
	// Pinned, then its start time read again: the pinned process is the
	// one found (a process that took its pid since would start later).
	pin, err := v.Cgroups.Pin(pid)
	if err != nil {
		return start, true, nil
	}
	if s, err := v.startOf(pid); err != nil || s != start {
		pin.Close()
		return start, true, nil
	}
	o := &oldestProc{pin: pin, start: start, at: time.Now()}
	o.checked.Store(o.at.UnixNano())
	st.mu.Lock()
	if old := st.oldestOf[dir]; old != nil {
		old.pin.Close()
	}
	if st.oldestOf == nil {
		st.oldestOf = map[string]*oldestProc{}
	}
	if len(st.oldestOf) >= 64 {
		// What is past oldestFor is of no use: a cgroup no longer read
		// keeps no descriptor (and past 4096 cgroups read within a
		// second, none is kept).
		for d, old := range st.oldestOf {
			if time.Since(old.at) >= oldestFor || len(st.oldestOf) >= 4096 {
				old.pin.Close()
				delete(st.oldestOf, d)
			}
		}
	}
	st.oldestOf[dir] = o
	st.mu.Unlock()
	return start, true, nil
}

// oldestFor is how long the oldest process of a cgroup is kept.
const oldestFor = time.Second

// startOf reads the start time of process pid.
func (v *View) startOf(pid int) (uint64, error) {
	data, err := os.ReadFile(v.Proc + "/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	st, err := ParseStat(data)
	return st.StartTicks, err
}

// oldestProc is the oldest process of a cgroup when it was looked for.
type oldestProc struct {
	pin     *cgroup.Pin
	start   uint64
	at      time.Time
	checked atomic.Int64 // when stillIn last said yes (Unix nanoseconds)
}

// stillIn reports whether o's process still runs in the cgroup at dir or
// below it.
func (o *oldestProc) stillIn(dir string) bool {
	g, err := o.pin.Group()
	if err != nil {
		return false
	}
	d, ok := g.Dir()
	return ok && (d == dir || strings.HasPrefix(d, dir+"/"))
}

// ticks converts clock ticks (USER_HZ, 100 on every Linux) to a duration.
func ticks(n uint64) time.Duration { return time.Duration(n) * (time.Second / 100) }

// Pids lists the processes of process pid's cgroup (and of its
// descendants); in the root cgroup, all processes.
func (v *View) Pids(pid int) ([]int, error) {
	g, err := v.group(pid)
	if err != nil {
		return nil, err
	}
	return g.Members()
}

// Sees reports whether process pid may see process other: whether other
// is in pid's cgroup or below it.
func (v *View) Sees(pid, other int) (bool, error) {
	g, err := v.group(pid)
	if err != nil {
		return false, err
	}
	return g.Contains(other)
}

// Status is /proc/PID/status of process pid (the host's, whose Name, Pid
// and PPid are the server's pid namespace's view).
func (v *View) Status(pid int) ([]byte, error) {
	return os.ReadFile(filepath.Join(v.Proc, strconv.Itoa(pid), "status"))
}

// Cpuinfo keeps the blocks of host's /proc/cpuinfo whose "processor" line
// names a CPU in set. The CPU numbers are kept, not renumbered from 0 (as
// LXCFS does): they then agree with cpu/online, with sched_getaffinity(2)
// and with taskset, which all name the real CPUs. Lines before the first
// processor block (none on x86) are kept.
func Cpuinfo(host []byte, set cgroup.CPUSet) []byte {
	out := make([]byte, 0, len(host))
	keep := true
	for rest := host; len(rest) > 0; {
		var line []byte
		line, rest = nextLine(rest)
		if cpu, ok := processorLine(line); ok {
			keep = set.Contains(cpu)
		}
		if keep {
			out = append(out, line...)
		}
	}
	if cap(out) > 2*len(out) {
		// A few CPUs of many: the content may be kept (by-cgroup's
		// last snapshot of each cgroup), so not with the host's size.
		out = append([]byte(nil), out...)
	}
	return out
}

// nextLine splits data after its first newline (or at its end): the line
// with its newline, and the rest.
func nextLine(data []byte) (line, rest []byte) {
	end := bytes.IndexByte(data, '\n') + 1
	if end == 0 {
		end = len(data)
	}
	return data[:end], data[end:]
}

// processorLine recognises "processor\t: N".
func processorLine(line []byte) (int, bool) {
	rest, ok := bytes.CutPrefix(line, []byte("processor"))
	if !ok {
		return 0, false
	}
	k, v, ok := bytes.Cut(rest, []byte(":"))
	if !ok || len(bytes.TrimSpace(k)) != 0 {
		return 0, false
	}
	n, err := strconv.Atoi(string(bytes.TrimSpace(v)))
	return n, err == nil && n >= 0
}

// Uptime formats /proc/uptime: seconds up and seconds idle (summed over
// CPUs), with two decimals.
func Uptime(up, idle time.Duration) []byte {
	b := make([]byte, 0, 32)
	b = strconv.AppendFloat(b, up.Seconds(), 'f', 2, 64) // as fmt's %.2f
	b = strconv.AppendFloat(append(b, ' '), idle.Seconds(), 'f', 2, 64)
	return append(b, '\n')
}

// ParseUptime parses /proc/uptime.
func ParseUptime(data []byte) (up, idle time.Duration, err error) {
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("uptime %q: want two numbers", data)
	}
	u, err1 := strconv.ParseFloat(f[0], 64)
	i, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil || u < 0 || i < 0 || u > 1e12 || i > 1e15 {
		return 0, 0, fmt.Errorf("uptime %q: want two numbers", data)
	}
	// /proc/uptime has two decimals: round away the float's error.
	return time.Duration(math.Round(u*1e3)) * time.Millisecond, time.Duration(math.Round(i*1e3)) * time.Millisecond, nil
}

// Stat is the part of /proc/PID/stat this package uses.
type Stat struct {
	Comm       string
	PPid       int
	StartTicks uint64 // start time after boot, in clock ticks
}

// ParseStat parses /proc/PID/stat. The command name is in parentheses and
// may itself hold spaces and parentheses, so the fields are counted from
// the last ')'.
func ParseStat(data []byte) (Stat, error) {
	open := bytes.IndexByte(data, '(')
	end := bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return Stat{}, errBadStat
	}
	// After ")": state(3) ppid(4) ... starttime(22): fields 1 and 19
	// counted from 0, and at least 20 of them (the rest are not read).
	var ppidField, startField []byte
	n := 0
	for rest := data[end+1:]; n < 20; n++ {
		rest = bytes.TrimLeftFunc(rest, unicode.IsSpace)
		if len(rest) == 0 {
			break
		}
		f := rest
		if i := bytes.IndexFunc(rest, unicode.IsSpace); i >= 0 {
			f, rest = rest[:i], rest[i:]
		} else {
			rest = nil
		}
		switch n {
		case 1:
			ppidField = f
		case 19:
			startField = f
		}
	}
	if n < 20 {
		return Stat{}, errBadStat
	}
	ppid, err := strconv.Atoi(string(ppidField))
	if err != nil {
		return Stat{}, errBadStat
	}
	start, err := strconv.ParseUint(string(startField), 10, 64)
	if err != nil || start > 1<<40 {
		return Stat{}, errBadStat
	}
	return Stat{Comm: string(data[open+1 : end]), PPid: ppid, StartTicks: start}, nil
}

var errBadStat = errors.New("malformed /proc/PID/stat")

// keptFiles keeps the host's /proc and /sys files open, to read them with
// pread (see package kept); /proc/PID files are opened at each read.
var keptFiles kept.Files

// readHost reads a host's /proc or /sys file through keptFiles. Those
// with a record per CPU, device or cache (cpuinfo, diskstats, swaps,
// slabinfo) are read to the end; the others are one record (see
// kept.Files.ReadRecord).
func readHost(path string) ([]byte, error) {
	switch filepath.Base(path) {
	case "cpuinfo", "diskstats", "swaps", "slabinfo":
		return keptFiles.ReadFile(path)
	}
	return keptFiles.ReadRecord(path, nil)
}
