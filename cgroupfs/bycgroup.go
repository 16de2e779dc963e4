package cgroupfs

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"syscall"

	"github.com/ramproc/ramproc/cgroupfs/procview"
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
// Each file is generated at each open (handler.Generated). FRESHNESS: the
// library's freshness bound (a Generated with a maximum age, served from
// the kernel's cache; issue 14) is not in this branch; once it is, these
// files take it (default 100 ms) in byCgroupFile, and are then read at
// kernel-cache speed.

// byCgroupDir is by-cgroup/<path>: the cgroup's child cgroups, and its
// proc and sys.
type byCgroupDir struct {
	v    *procview.View
	o    Options
	path string // cgroup path, "/" for by-cgroup itself
}

// dir is the cgroup's directory in the home hierarchy.
func (d byCgroupDir) dir() (string, bool) {
	m, ok := d.v.Cgroups.HomeMount()
	if !ok {
		return "", false
	}
	rel, ok := within(path.Clean(d.path), path.Clean("/"+m.Root))
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

// files returns proc and sys of the cgroup.
func (d byCgroupDir) files() []handler.Child {
	v := d.v.At(d.path)
	var proc []handler.Child
	for _, f := range procFiles {
		if f.name == "loadavg" && d.o.NoLoadavg {
			continue
		}
		proc = append(proc, handler.Child{Name: f.name, Mode: f.mode, Node: byCgroupFile(v, f.derive)})
	}
	var pressure []handler.Child
	for _, r := range pressures {
		pressure = append(pressure, handler.Child{Name: r, Mode: 0o444, Node: byCgroupFile(v, func(v *procview.View, pid int) ([]byte, error) {
			return v.Pressure(pid, r)
		})})
	}
	proc = append(proc, handler.Child{Name: "pressure", Mode: 0o555, Node: staticDir(pressure)})
	online := handler.Child{Name: "online", Mode: 0o444, Node: byCgroupFile(v, (*procview.View).Online)}
	sys := staticDir{{Name: "devices", Mode: 0o555, Node: staticDir{{Name: "system", Mode: 0o555, Node: staticDir{{Name: "cpu", Mode: 0o555, Node: staticDir{online}}}}}}}
	return []handler.Child{{Name: "proc", Mode: 0o555, Node: staticDir(proc)}, {Name: "sys", Mode: 0o555, Node: sys}}
}

// byCgroupFile is a file of one cgroup, generated at each open; the pid
// passed to derive is the reader's (the loadavg of a cgroup read for the
// first time names it as the last task), or 0.
func byCgroupFile(v *procview.View, derive func(v *procview.View, pid int) ([]byte, error)) handler.Generated {
	return func(ctx context.Context) ([]byte, error) {
		pid, _ := caller(ctx)
		return derive(v, pid)
	}
}

// Lookup finds proc, sys or a child cgroup.
func (d byCgroupDir) Lookup(ctx context.Context, name string) (handler.Child, error) {
	for _, c := range d.files() {
		if c.Name == name {
			return c, nil
		}
	}
	dir, ok := d.dir()
	if !ok {
		return handler.Child{}, syscall.ENOENT
	}
	st, err := os.Stat(filepath.Join(dir, name))
	if err != nil || !st.IsDir() {
		return handler.Child{}, fmt.Errorf("cgroup %s: %w", path.Join(d.path, name), handler.ErrVanished)
	}
	return d.child(name, st), nil
}

// child is the directory of child cgroup name. Its Gen is the cgroup
// directory's inode number, which a cgroup made anew under the same name
// does not share.
func (d byCgroupDir) child(name string, st os.FileInfo) handler.Child {
	var gen uint64
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		gen = s.Ino + 1
	}
	return handler.Child{Name: name, Mode: 0o555, Gen: gen, Node: byCgroupDir{v: d.v, o: d.o, path: path.Join(d.path, name)}}
}

// List lists proc, sys and the child cgroups.
func (d byCgroupDir) List(ctx context.Context) ([]handler.Child, error) {
	kids := d.files()
	dir, ok := d.dir()
	if !ok {
		return kids, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, handler.ErrVanished
		}
		return nil, err
	}
	for _, e := range entries {
		if !e.IsDir() || e.Name() == "proc" || e.Name() == "sys" {
			continue
		}
		if st, err := e.Info(); err == nil {
			kids = append(kids, d.child(e.Name(), st))
		}
	}
	return kids, nil
}

// staticDir is a directory of fixed children.
type staticDir []handler.Child

// Lookup finds a child.
func (s staticDir) Lookup(ctx context.Context, name string) (handler.Child, error) {
	for _, c := range s {
		if c.Name == name {
			return c, nil
		}
	}
	return handler.Child{}, syscall.ENOENT
}

// List lists the children.
func (s staticDir) List(ctx context.Context) ([]handler.Child, error) { return s, nil }
