// Package cgroupfs publishes a cgroup-aware /proc on a fusebridge mount, as
// LXCFS does for containers: each file shows the figures of the reading
// process's own cgroup (its memory limit in proc/meminfo, its cpuset in
// proc/cpuinfo and sys/devices/system/cpu/online, its CPU time in
// proc/stat, ...). A container bind-mounts the files over its own
// (mount --bind MOUNTPOINT/proc/meminfo /proc/meminfo).
//
// The cgroup reading is in package cgroup, the file formats in package
// procview; this package builds the tree of per-caller files. The command
// cgroupfs (cmd/cgroupfs) serves it.
package cgroupfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/procview"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// Options choose what is served, where LXCFS has a flag for it.
type Options struct {
	// NoLoadavg leaves proc/loadavg out (LXCFS serves it only with -l,
	// because its sampling thread costs CPU; here the sampling is done only
	// for the cgroups that are read, so it is on by default).
	NoLoadavg bool
	// NoSwap shows no swap to a confined reader: SwapTotal 0 in meminfo,
	// no device in swaps (LXCFS's -u, --disable-swap).
	NoSwap bool
	// ByCgroupMaxAge is the freshness bound of by-cgroup's files (0:
	// DefaultByCgroupMaxAge): no read gets content made longer ago.
	ByCgroupMaxAge time.Duration
}

// Paths lists the files Publish serves with o, relative to the mount
// point. The command prints them at startup.
func Paths(o Options) []string {
	var list []string
	for _, f := range procFiles {
		if f.name == "loadavg" && o.NoLoadavg {
			continue
		}
		list = append(list, "proc/"+f.name)
	}
	for _, r := range pressures {
		list = append(list, "proc/pressure/"+r)
	}
	return append(list, "sys/devices/system/cpu/online", "pids/self", "pids/<pid>/status", "by-cgroup/<cgroup path>/{proc/...,sys/...}")
}

// procFiles are proc's per-caller files: the name, the mode, the View's
// method that derives the caller's content. As root may open /proc files
// for writing whatever the mode, each is a procFile whose write fails with
// EIO, as theirs do.
var procFiles = []struct {
	name   string
	mode   fs.FileMode
	derive func(v *procview.View, pid int) ([]byte, error)
}{
	{"meminfo", 0o444, (*procview.View).Meminfo},
	{"cpuinfo", 0o444, (*procview.View).Cpuinfo},
	{"stat", 0o444, (*procview.View).Stat},
	{"uptime", 0o444, (*procview.View).Uptime},
	{"loadavg", 0o444, (*procview.View).Loadavg},
	{"diskstats", 0o444, (*procview.View).Diskstats},
	{"swaps", 0o444, (*procview.View).Swaps},
	{"slabinfo", 0o400, (*procview.View).Slabinfo},
}

// pressures are the resources of proc/pressure.
var pressures = []string{"cpu", "io", "memory"}

// Publish builds the tree under root:
//
//	proc/meminfo cpuinfo stat ...  per-caller files: the caller's cgroup's view
//	proc/pressure/{cpu,io,memory}  per-caller files: its v2 cgroup's PSI
//	sys/devices/system/cpu/online  a per-caller file: the caller's cpuset
//	pids/                          a per-caller dynamic directory (pidsDir):
//	    self                       a link to the caller's pid
//	    <pid>/status               one directory per process of the caller's cgroup
//	by-cgroup/<cgroup path>/       the files of proc and sys for one cgroup,
//	    proc/... sys/...           whoever reads, within a freshness bound
//	                               (see publishByCgroup)
//
// proc and sys are static directories, made once: the kernel keeps their
// names and their files' attributes (the same for every caller), so an
// open of a file costs OPEN, READ, an EOF READ and RELEASE, where a child
// of a dynamic directory would cost a GETATTR more (the kernel checks the
// mode bits against fresh attributes, and a dynamic directory's children
// have none that stay fresh). The pids are only a handler's to name, so
// they have a dynamic directory of their own. The view's NoSwap is set
// from o.
func Publish(root *fusebridge.Dir, v *procview.View, o Options) error {
	v.NoSwap = o.NoSwap
	proc, err := root.Mkdir("proc", 0o555)
	if err != nil {
		return err
	}
	for _, f := range procFiles {
		if f.name == "loadavg" && o.NoLoadavg {
			continue
		}
		derive := func(pid int) ([]byte, error) { return f.derive(v, pid) }
		if _, err := proc.Create(f.name, f.mode, procFile{perCaller(derive, "/proc/"+f.name), syscall.EIO}); err != nil {
			return err
		}
	}
	pressure, err := proc.Mkdir("pressure", 0o555)
	if err != nil {
		return err
	}
	for _, r := range pressures {
		// The kernel's pressure files accept triggers, which need
		// poll(2): these are read-only, and a write fails with EINVAL, as
		// the kernel's does for a malformed trigger.
		derive := func(pid int) ([]byte, error) { return v.Pressure(pid, r) }
		if _, err := pressure.Create(r, 0o444, procFile{perCaller(derive, "/proc/pressure/"+r), syscall.EINVAL}); err != nil {
			return err
		}
	}
	cpu, err := root.MkdirAll("sys/devices/system/cpu", 0o555)
	if err != nil {
		return err
	}
	if _, err := cpu.Create("online", 0o444, perCaller(v.Online, "/sys/devices/system/cpu/online")); err != nil {
		return err
	}
	if _, err := root.Create("pids", 0o555, &pidsDir{v: v}); err != nil {
		return err
	}
	return publishByCgroup(root, v, o)
}

// caller returns the thread for whom a request is made, as the kernel
// names it (the server's pid namespace's number). Its /proc/<tid>/cgroup
// names the cgroups that confine that very thread, which is what its
// files must show, so it is not mapped to its process (handler.SelfLink
// does that for pids/self). ok is false for requests on nobody's behalf
// and for callers outside the server's pid namespace (pid 0).
func caller(ctx context.Context) (int, bool) {
	c, ok := handler.CallerOf(ctx)
	if !ok || c.Tid == 0 {
		return 0, false
	}
	return int(c.Tid), true
}

// perCaller is a file whose content is derive(caller), generated at each
// open and never served to another caller; without a caller it is the
// host's own file.
func perCaller(derive func(pid int) ([]byte, error), host string) handler.PerCallerGenerated {
	return func(ctx context.Context) ([]byte, error) {
		pid, ok := caller(ctx)
		if !ok {
			return os.ReadFile(host)
		}
		return derive(pid)
	}
}

// procFile is a /proc file: read-only, but, as on procfs, root may open it
// for writing (the mode bits do not stop root) and the write fails with
// writeErr (EIO for meminfo and uptime, EINVAL for a pid's status), where a
// file without a Writer would refuse the open with EACCES, as sysfs does.
type procFile struct {
	handler.PerCallerGenerated
	writeErr syscall.Errno
}

// Write fails as the procfs file's write does.
func (f procFile) Write(ctx context.Context, of *handler.OpenFile, src []byte, off int64) (int, error) {
	return 0, f.writeErr
}

// pidsDir is pids/: self, and a directory for each process the caller may
// see (its cgroup's, with the sub-cgroups').
type pidsDir struct {
	v *procview.View
}

// self is pids/self, which every caller sees.
var self = handler.Child{Name: "self", Mode: 0o777, Node: handler.SelfLink}

// PerCaller tells the bridge that each caller sees its own pids, so that a
// reader in one cgroup who lists pids, or looks up a pid it may not see,
// does not make the bridge retire that pid's directory for a reader in
// another (whose open descriptors then keep reading, and whose inode
// numbers stay). Lookup says when a process has exited (ErrVanished), and
// each pid's Gen, its start time, tells a reused pid from the process
// that had it.
func (d *pidsDir) PerCaller() bool { return true }

// Lookup finds self, or a pid the caller may see.
func (d *pidsDir) Lookup(ctx context.Context, name string) (handler.Child, error) {
	if name == self.Name {
		return self, nil
	}
	pid, err := strconv.Atoi(name)
	if err != nil || pid <= 0 || strconv.Itoa(pid) != name {
		return handler.Child{}, syscall.ENOENT
	}
	start, err := d.started(pid)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		// Exited (ESRCH: while procfs was reading it): gone for every
		// caller.
		return handler.Child{}, fmt.Errorf("process %d: %w", pid, handler.ErrVanished)
	}
	if err != nil {
		return handler.Child{}, err
	}
	if me, ok := caller(ctx); ok {
		if sees, err := d.v.Sees(me, pid); err == nil && sees {
			return d.pidChild(pid, start), nil
		}
	}
	return handler.Child{}, syscall.ENOENT // not this caller's
}

// started returns the start time of process pid, which tells it from a
// later process that reuses the pid (the pid directory's Gen).
func (d *pidsDir) started(pid int) (uint64, error) {
	data, err := os.ReadFile(filepath.Join(d.v.Proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	st, err := procview.ParseStat(data)
	if err != nil {
		return 0, err
	}
	return st.StartTicks + 1, nil // never 0, which would mean no Gen
}

// List lists self and the caller's cgroup's processes.
func (d *pidsDir) List(ctx context.Context) ([]handler.Child, error) {
	kids := []handler.Child{self}
	me, ok := caller(ctx)
	if !ok {
		return kids, nil
	}
	pids, err := d.v.Pids(me)
	if err != nil {
		return nil, fmt.Errorf("pids of %d's cgroup: %w", me, err)
	}
	for _, pid := range pids {
		if start, err := d.started(pid); err == nil {
			kids = append(kids, d.pidChild(pid, start))
		} // else it exited since the cgroup was read
	}
	return kids, nil
}

// pidChild is pids/<pid> of the process that started at start.
func (d *pidsDir) pidChild(pid int, start uint64) handler.Child {
	return handler.Child{Name: strconv.Itoa(pid), Mode: 0o555, Node: &pidDir{v: d.v, pid: pid}, Gen: start}
}

// pidDir is pids/<pid>/: the process's status, the host's own file (its
// Name, Pid, PPid, ... as the server's pid namespace sees them).
type pidDir struct {
	v   *procview.View
	pid int
}

func (p *pidDir) status() handler.Child {
	// Per caller although the content is not: it must be generated at
	// every open, never served from a cache, in any mount mode.
	return handler.Child{Name: "status", Mode: 0o444, Node: procFile{func(ctx context.Context) ([]byte, error) {
		return p.v.Status(p.pid)
	}, syscall.EINVAL}}
}

// Lookup finds status.
func (p *pidDir) Lookup(ctx context.Context, name string) (handler.Child, error) {
	if name != "status" {
		return handler.Child{}, syscall.ENOENT
	}
	return p.status(), nil
}

// List lists status.
func (p *pidDir) List(ctx context.Context) ([]handler.Child, error) {
	return []handler.Child{p.status()}, nil
}
