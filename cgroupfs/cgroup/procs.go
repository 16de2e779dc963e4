package cgroup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// home is the hierarchy whose cgroup counts as "the process's cgroup" for
// membership (which processes are its fellows, which is the oldest): the
// memory controller's, because a container runtime always puts a container
// in a memory cgroup of its own and the memory limit is what this package
// is mostly asked about; then v2's; then the pids and cpuset controllers'.
// On a hybrid machine a process's v2 path is often just "/" while its v1
// memory path names the container.
func (g *Group) home() (place, bool) {
	return g.pl.home.p, g.pl.home.ok
}

// findHome finds home's answer (once per content, see resolve).
func (g *Group) findHome() (place, bool) {
	if p, ok := g.placeOf("memory"); ok {
		return p, true
	}
	for _, c := range []string{"pids", "cpuset"} {
		if mnt, ok := g.h.V1[c]; ok {
			if cg, ok := g.Membership.V1[c]; ok {
				return at(mnt, cg, false)
			}
		}
	}
	return place{}, false
}

// Path is the process's cgroup path in its home hierarchy (see Members),
// "/" when it is in the root cgroup or no hierarchy is mounted.
func (g *Group) Path() string {
	if p, ok := g.home(); ok {
		return p.cg
	}
	return "/"
}

// IsRoot reports whether the process is in the root cgroup of its home
// hierarchy (or there is none): it is then not confined, and the host's
// figures are its figures.
func (g *Group) IsRoot() bool {
	p, ok := g.home()
	return !ok || p.dir == p.mount.Dir
}

// Members lists the processes of the cgroup and of its descendants (a
// container's processes may sit in sub-cgroups of its cgroup), sorted.
// The cgroup is the one of the memory controller, else of v2, else of the
// pids or cpuset controller. In the root cgroup the members are all the
// processes in Proc.
func (g *Group) Members() ([]int, error) {
	p, ok := g.home()
	if !ok || p.dir == p.mount.Dir {
		return allPids(g.h.Proc)
	}
	return MembersOf(p.dir)
}

// Dir is the directory of the process's cgroup in its home hierarchy (see
// Members); ok is false in the root cgroup or where there is none.
func (g *Group) Dir() (string, bool) {
	p, ok := g.home()
	if !ok || p.dir == p.mount.Dir {
		return "", false
	}
	return p.dir, true
}

// MembersOf lists the processes of the cgroup whose directory is dir and
// of its descendants, sorted. A sub-cgroup removed during the walk is
// skipped; dir itself missing is an error satisfying
// errors.Is(err, fs.ErrNotExist).
func MembersOf(dir string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path != dir && os.IsNotExist(err) {
				return nil // a sub-cgroup removed while we walk
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		data, err := readControl(filepath.Join(path, "cgroup.procs"), nil)
		if os.IsNotExist(err) || errors.Is(err, syscall.ENODEV) {
			return nil // removed between the listing and the read
		}
		if err != nil {
			return err
		}
		list, err := ParsePids(data)
		if err != nil {
			return err
		}
		pids = append(pids, list...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(pids)
	return slices.Compact(pids), nil
}

// Contains reports whether process pid is in the cgroup or one of its
// descendants. A process that does not exist is in none (false, nil).
func (g *Group) Contains(pid int) (bool, error) {
	p, ok := g.home()
	if !ok || p.dir == p.mount.Dir {
		_, err := os.Stat(filepath.Join(g.h.Proc, strconv.Itoa(pid)))
		if os.IsNotExist(err) {
			return false, nil
		}
		return err == nil, err
	}
	other, err := g.h.Of(pid)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	q, ok := other.home()
	if !ok || q.mount != p.mount {
		return false, nil
	}
	return q.cg == p.cg || strings.HasPrefix(q.cg, strings.TrimSuffix(p.cg, "/")+"/"), nil
}

// ParsePids parses cgroup.procs: one process id per line.
func ParsePids(data []byte) ([]int, error) {
	var pids []int
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		n, err := strconv.Atoi(line)
		if err != nil || n <= 0 {
			return nil, errMalformed
		}
		pids = append(pids, n)
	}
	return pids, nil
}

// allPids lists the processes in a procfs: its numeric entries.
func allPids(proc string) ([]int, error) {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > 0 && e.IsDir() {
			pids = append(pids, n)
		}
	}
	slices.Sort(pids)
	return pids, nil
}
