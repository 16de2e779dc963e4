package cgroup

import "fmt"

// Pressure reads the cgroup's pressure stall information for resource
// ("cpu", "io" or "memory"): v2's RESOURCE.pressure, in the format of
// /proc/pressure/RESOURCE. PSI is a v2 feature: ok is false where the
// process's v2 cgroup is the root, or there is no v2 hierarchy (v1
// cgroups have these files only when the kernel is booted with
// psi_cgroup_v1), so that the caller shows the host's file.
func (g *Group) Pressure(resource string) (data []byte, ok bool, err error) {
	switch resource {
	case "cpu", "io", "memory":
	default:
		return nil, false, fmt.Errorf("pressure: unknown resource %q", resource)
	}
	p, ok := g.unified()
	if !ok || p.dir == p.mount.Dir {
		return nil, false, nil
	}
	data, _, ok, err = p.readUp(resource+".pressure", nil)
	return data, ok, err
}

// Slabinfo reads the slab caches of the cgroup's kernel memory in the
// format of /proc/slabinfo: v1's memory.kmem.slabinfo. v2 has no such
// file: ok is false there, and for a process in the root cgroup.
func (g *Group) Slabinfo() (data []byte, ok bool, err error) {
	p, ok := g.placeOf("memory")
	if !ok || p.v2 || p.dir == p.mount.Dir {
		return nil, false, nil
	}
	data, _, ok, err = p.readUp("memory.kmem.slabinfo", nil)
	return data, ok, err
}
