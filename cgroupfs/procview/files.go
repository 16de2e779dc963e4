package procview

import (
	"bytes"
	"path/filepath"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
	"github.com/ramproc/ramproc/cgroupfs/loadavg"
)

// memory is the process's memory figures, with NoSwap applied; ok is false
// where the host's figures apply.
func (v *View) memory(g *cgroup.Group) (cgroup.Memory, bool, error) {
	m, ok, err := g.Memory()
	if err != nil || !ok {
		return m, false, err
	}
	if v.NoSwap {
		// A swap limit of 0: the cgroup sees no swap, as with LXCFS's -u.
		m.Swap = &cgroup.Swap{Swappiness: -1}
	}
	return m, true, nil
}

// Stat is /proc/stat as process pid should see it (see SystemStat): its
// cpuset's CPUs with its cgroup's CPU time. A process with neither a
// cpuset nor CPU accounting of its own sees the host's file.
func (v *View) Stat(pid int) ([]byte, error) {
	host, at, _, err := v.hostShared(v.Proc + "/stat")
	if err != nil {
		return nil, err
	}
	return v.derive(pid, func(g *cgroup.Group) ([]byte, error) {
		set, hasSet, err := g.CPUs()
		if err != nil {
			return nil, err
		}
		if !hasSet || len(set) == 0 {
			set = nil
		}
		u, hasUsage, err := g.Usage()
		if err != nil {
			return nil, err
		}
		if set == nil && !hasUsage {
			return host, nil
		}
		if !hasUsage {
			return SystemStat(host, set, nil), nil
		}
		return systemStat(host, set, &u, time.Since(at)), nil
	})
}

// Diskstats is /proc/diskstats as process pid should see it (see the
// function Diskstats); the host's file where no blkio or io controller
// covers it, or in a root cgroup.
func (v *View) Diskstats(pid int) ([]byte, error) {
	return v.withHost(pid, "diskstats", func(host []byte, g *cgroup.Group) ([]byte, error) {
		if g.IsRoot() {
			return host, nil
		}
		io, ok, err := g.IO()
		if err != nil || !ok {
			return host, err
		}
		return Diskstats(host, io), nil
	})
}

// Swaps is /proc/swaps as process pid should see it (see the function
// Swaps).
func (v *View) Swaps(pid int) ([]byte, error) {
	return v.withHost(pid, "swaps", func(host []byte, g *cgroup.Group) ([]byte, error) {
		m, ok, err := v.memory(g)
		if err != nil || !ok {
			return host, err
		}
		meminfo, _, _, err := v.hostShared(v.Proc + "/meminfo")
		if err != nil {
			return nil, err
		}
		return Swaps(host, meminfo, m), nil
	})
}

// Slabinfo is /proc/slabinfo as process pid should see it: v1's
// memory.kmem.slabinfo of its memory cgroup, as LXCFS serves it. Kernels
// since 5.9 account slab objects, not caches, per cgroup and leave that
// file empty: the reader then gets the host's two header lines and no
// cache (where LXCFS gives an empty file, which slabtop rejects). v2 has
// no such file, and a process in a root cgroup is the host's: the host's
// file.
func (v *View) Slabinfo(pid int) ([]byte, error) {
	return v.derive(pid, func(g *cgroup.Group) ([]byte, error) {
		data, ok, err := g.Slabinfo()
		if err != nil {
			return nil, err
		}
		if ok && len(data) > 0 {
			return data, nil
		}
		if ok {
			return v.slabinfoHeader()
		}
		return readHost(filepath.Join(v.Proc, "slabinfo"))
	})
}

// SlabinfoHeader is the header of a slabinfo file: its lines up to the
// first that names a cache (the version line and the "# name" line).
func SlabinfoHeader(host []byte) []byte {
	var out []byte
	for _, line := range bytes.SplitAfter(host, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("slabinfo ")) && !bytes.HasPrefix(line, []byte("#")) {
			break
		}
		out = append(out, line...)
	}
	return out
}

// Pressure is /proc/pressure/RESOURCE ("cpu", "io", "memory") as process
// pid should see it: its v2 cgroup's RESOURCE.pressure. A process in v2's
// root cgroup, or on a machine without v2 (whose v1 cgroups keep no
// pressure figures), sees the host's file; on a hybrid machine that is
// every process whose v2 cgroup is the root, whatever its v1 cgroups.
func (v *View) Pressure(pid int, resource string) ([]byte, error) {
	return v.derive(pid, func(g *cgroup.Group) ([]byte, error) {
		data, ok, err := g.Pressure(resource)
		if err != nil || ok {
			return data, err
		}
		return readHost(filepath.Join(v.Proc, "pressure", resource))
	})
}

// Loadavg is /proc/loadavg as process pid should see it: the load of its
// cgroup (of the memory controller, as for uptime and the pid list) kept
// by v.Load (see package loadavg). In a root cgroup, or without a
// sampler, the host's file.
func (v *View) Loadavg(pid int) ([]byte, error) {
	return v.derive(pid, func(g *cgroup.Group) ([]byte, error) {
		dir, ok := g.Dir()
		if !ok || v.Load == nil {
			return readHost(filepath.Join(v.Proc, "loadavg"))
		}
		return loadavg.Format(v.Load.Read(dir, pid)), nil
	})
}

// slabinfoHeader is the host's slabinfo header, read once: it names the
// format's version and columns, which do not change while the kernel runs
// (and reading the whole host file, which the kernel generates by walking
// every cache, costs a hundred times a cgroup file).
func (v *View) slabinfoHeader() ([]byte, error) {
	st := v.state()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.slabHeader == nil {
		host, err := readHost(filepath.Join(v.Proc, "slabinfo"))
		if err != nil {
			return nil, err
		}
		st.slabHeader = SlabinfoHeader(host)
	}
	return st.slabHeader, nil
}
