package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/ramproc/ramproc/examples/cgroupfs/procview"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// The files this example publishes, relative to the mount point. The README
// and the startup message list them from here.
var paths = []string{"proc/meminfo", "proc/cpuinfo", "proc/uptime", "proc/self", "proc/<pid>/status", "sys/devices/system/cpu/online"}

// publish builds the tree under root:
//
//	proc/                          a dynamic directory (procDir)
//	    meminfo cpuinfo uptime     per-caller files: the caller's cgroup's view
//	    self                       a link to the caller's pid
//	    <pid>/status               one directory per process of the caller's cgroup
//	sys/devices/system/cpu/online  a per-caller file: the caller's cpuset
//
// proc is dynamic because it holds both fixed names and the pids, which
// only a handler can produce; sys is static directories, made once.
func publish(root *fusebridge.Dir, v *procview.View) error {
	if _, err := root.Create("proc", 0o555, &procDir{v: v}); err != nil {
		return err
	}
	cpu, err := root.MkdirAll("sys/devices/system/cpu", 0o555)
	if err != nil {
		return err
	}
	_, err = cpu.Create("online", 0o444, perCaller(v.Online, "/sys/devices/system/cpu/online"))
	return err
}

// caller returns the thread for whom a request is made, as the kernel
// names it (the server's pid namespace's number). Its /proc/<tid>/cgroup
// names the cgroups that confine that very thread, which is what its
// files must show, so it is not mapped to its process (handler.SelfLink
// does that for proc/self). ok is false for requests on nobody's behalf
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

// procDir is proc/: the fixed files, self, and a directory for each
// process the caller may see (its cgroup's, with the sub-cgroups').
type procDir struct {
	v *procview.View
}

// PerCaller tells the bridge that each caller sees its own pids, so that a
// reader in one cgroup who lists proc, or looks up a pid it may not see,
// does not make the bridge retire that pid's directory for a reader in
// another (whose open descriptors then keep reading, and whose inode
// numbers stay). Lookup says when a process has exited (ErrVanished), and
// each pid's Gen, its start time, tells a reused pid from the process
// that had it.
func (d *procDir) PerCaller() bool { return true }

// fixed returns proc's children that every caller sees.
func (d *procDir) fixed() []handler.Child {
	v := d.v
	return []handler.Child{
		{Name: "meminfo", Mode: 0o444, Node: procFile{perCaller(v.Meminfo, "/proc/meminfo"), syscall.EIO}},
		{Name: "cpuinfo", Mode: 0o444, Node: procFile{perCaller(v.Cpuinfo, "/proc/cpuinfo"), syscall.EIO}},
		{Name: "uptime", Mode: 0o444, Node: procFile{perCaller(v.Uptime, "/proc/uptime"), syscall.EIO}},
		{Name: "self", Mode: 0o777, Node: handler.SelfLink},
	}
}

// Lookup finds a fixed name, or a pid the caller may see.
func (d *procDir) Lookup(ctx context.Context, name string) (handler.Child, error) {
	for _, c := range d.fixed() {
		if c.Name == name {
			return c, nil
		}
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
func (d *procDir) started(pid int) (uint64, error) {
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

// List lists the fixed names and the caller's cgroup's processes.
func (d *procDir) List(ctx context.Context) ([]handler.Child, error) {
	kids := d.fixed()
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

// pidChild is proc/<pid> of the process that started at start.
func (d *procDir) pidChild(pid int, start uint64) handler.Child {
	return handler.Child{Name: strconv.Itoa(pid), Mode: 0o555, Node: &pidDir{v: d.v, pid: pid}, Gen: start}
}

// pidDir is proc/<pid>/: the process's status, the host's own file (its
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
