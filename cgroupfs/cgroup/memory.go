package cgroup

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
)

// NoLimit is the limit of a cgroup that has none (v2 "max", v1's
// PAGE_COUNTER_MAX), nor any ancestor with one.
const NoLimit uint64 = math.MaxUint64

// v1Unlimited is the smallest v1 value read as "no limit": v1 writes
// PAGE_COUNTER_MAX pages (9223372036854771712 bytes with 4 KiB pages, more
// with larger pages), never "max". No machine has 4 EiB of memory.
const v1Unlimited = 1 << 62

// Memory is a cgroup's memory figures, in bytes.
type Memory struct {
	// V2 says which hierarchy the figures come from.
	V2 bool
	// Limit is the effective limit: the smallest along the path from the
	// cgroup to the root of its hierarchy, as a limit on an ancestor binds
	// its descendants too. NoLimit when there is none.
	Limit uint64
	// Usage is the memory charged to the cgroup (v2 memory.current, v1
	// memory.usage_in_bytes), page cache included.
	Usage uint64
	// Stat is memory.stat, by field.
	Stat Stat
	// Swap is nil where the kernel keeps no swap accounting for cgroups.
	Swap *Swap
}

// Swap is a cgroup's swap figures, in bytes.
type Swap struct {
	// Limit is how much swap the cgroup may use (NoLimit for no limit of
	// its own). v2: the smallest memory.swap.max along the path. v1: the
	// smallest memory.memsw.limit_in_bytes (memory plus swap), because in
	// v1 the kernel may swap out all of a cgroup's memory, up to that
	// limit, as LXCFS reasons.
	Limit uint64
	// Usage is the swap in use (v1: memory.stat total_swap).
	Usage uint64
	// Swappiness is v1's memory.swappiness; -1 where there is none (v2).
	// With 0 the kernel does not swap the cgroup's memory.
	Swappiness int
}

// Stat is the part of memory.stat that /proc/meminfo's fields derive from,
// in bytes, with v1's hierarchical names (total_cache, total_rss, ...) and
// v2's names (file, anon, ...) mapped to one set. A field that the
// hierarchy does not report (v1 has no slab figures) is 0.
type Stat struct {
	File              uint64 // v1 total_cache, v2 file
	Anon              uint64 // v1 total_rss, v2 anon
	AnonHuge          uint64 // v1 total_rss_huge, v2 anon_thp
	Shmem             uint64 // v1 total_shmem, v2 shmem
	FileMapped        uint64 // v1 total_mapped_file, v2 file_mapped
	Dirty             uint64 // v1 total_dirty, v2 file_dirty
	Writeback         uint64 // v1 total_writeback, v2 file_writeback
	ActiveAnon        uint64
	InactiveAnon      uint64
	ActiveFile        uint64
	InactiveFile      uint64
	Unevictable       uint64
	Slab              uint64 // v2 only
	SlabReclaimable   uint64 // v2 only
	SlabUnreclaimable uint64 // v2 only
	Zswap             uint64 // v2 only
	Zswapped          uint64 // v2 only
}

// ParseStat parses a memory.stat file ("key value" lines). v2 selects the
// unified names; for v1 the hierarchical total_* figures are used, which
// include the cgroup's descendants as v2's figures do. A line that is not
// "name number" is an error.
func ParseStat(data []byte, v2 bool) (Stat, error) {
	ms, err := parseMemStat(data, v2)
	return ms.Stat, err
}

// memStat is what Memory takes from memory.stat: the Stat, and v1's
// hierarchical limits and swap in use (has* says whether the line was
// there).
type memStat struct {
	Stat
	hierLimit, hierMemsw, totalSwap          uint64
	hasHierLimit, hasHierMemsw, hasTotalSwap bool
}

// parseMemStat parses memory.stat, v1's names or v2's, without a map: it
// runs at every open of meminfo and swaps.
func parseMemStat(data []byte, v2 bool) (memStat, error) {
	var ms memStat
	s := &ms.Stat
	hasSlab := false
	err := eachKV(data, "memory.stat", func(k []byte, n uint64) {
		name := string(k) // no copy: only compared
		if !v2 {
			switch name {
			case "hierarchical_memory_limit":
				ms.hierLimit, ms.hasHierLimit = n, true
			case "hierarchical_memsw_limit":
				ms.hierMemsw, ms.hasHierMemsw = n, true
			case "total_swap":
				ms.totalSwap, ms.hasTotalSwap = n, true
			}
			if name = v1StatNames[name]; name == "" {
				return
			}
		}
		switch name {
		case "file":
			s.File = n
		case "anon":
			s.Anon = n
		case "anon_thp":
			s.AnonHuge = n
		case "shmem":
			s.Shmem = n
		case "file_mapped":
			s.FileMapped = n
		case "file_dirty":
			s.Dirty = n
		case "file_writeback":
			s.Writeback = n
		case "active_anon":
			s.ActiveAnon = n
		case "inactive_anon":
			s.InactiveAnon = n
		case "active_file":
			s.ActiveFile = n
		case "inactive_file":
			s.InactiveFile = n
		case "unevictable":
			s.Unevictable = n
		case "slab":
			s.Slab, hasSlab = n, true
		case "slab_reclaimable":
			s.SlabReclaimable = n
		case "slab_unreclaimable":
			s.SlabUnreclaimable = n
		case "zswap":
			s.Zswap = n
		case "zswapped":
			s.Zswapped = n
		}
	})
	if err != nil {
		return memStat{}, err
	}
	if v2 && !hasSlab {
		s.Slab = s.SlabReclaimable + s.SlabUnreclaimable
	}
	return ms, nil
}

// v1StatNames are the v1 hierarchical figures of memory.stat that Stat
// holds, by the v2 name of the same figure (v1 has no slab or zswap
// figures).
var v1StatNames = map[string]string{
	"total_cache": "file", "total_rss": "anon", "total_rss_huge": "anon_thp",
	"total_shmem": "shmem", "total_mapped_file": "file_mapped",
	"total_dirty": "file_dirty", "total_writeback": "file_writeback",
	"total_active_anon": "active_anon", "total_inactive_anon": "inactive_anon",
	"total_active_file": "active_file", "total_inactive_file": "inactive_file",
	"total_unevictable": "unevictable",
}

// eachKV calls f with each "name number" line of data (memory.stat,
// cpu.stat); a line of another form is an error naming file.
func eachKV(data []byte, file string, f func(k []byte, n uint64)) error {
	for len(data) > 0 {
		line, rest, _ := bytes.Cut(data, []byte("\n"))
		data = rest
		if len(line) == 0 {
			continue
		}
		k, v, ok := bytes.Cut(line, []byte(" "))
		if !ok || len(k) == 0 {
			return fmt.Errorf("%s: malformed line %q", file, line)
		}
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil {
			return fmt.Errorf("%s: malformed line %q", file, line)
		}
		f(k, n)
	}
	return nil
}

// ParseLimit parses a limit file: a byte count, v2's "max", or v1's
// "unlimited" value (PAGE_COUNTER_MAX pages); the last two are NoLimit.
func ParseLimit(data []byte) (uint64, error) {
	s := string(bytes.TrimSpace(data))
	if s == "max" {
		return NoLimit, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("limit %q: %w", s, errMalformed)
	}
	if n >= v1Unlimited {
		return NoLimit, nil
	}
	return n, nil
}

// memoryFiles names a hierarchy's memory files.
type memoryFiles struct {
	limit, usage, swapLimit, swapUsage string
}

var (
	memoryV1 = memoryFiles{"memory.limit_in_bytes", "memory.usage_in_bytes", "memory.memsw.limit_in_bytes", "memory.memsw.usage_in_bytes"}
	memoryV2 = memoryFiles{"memory.max", "memory.current", "memory.swap.max", "memory.swap.current"}
)

// Memory reads the memory figures of the process's memory cgroup. ok is
// false when no memory controller covers the process: none is mounted, or
// it is in v2's root cgroup, which has no memory.current (its figures are
// the host's).
//
// A v1 memory.stat carries hierarchical_memory_limit and
// hierarchical_memsw_limit, the kernel's own smallest limit along the path
// (above a partial mount's root too); they spare reading every ancestor.
// Without them (v2) the ancestors' limit files are read.
func (g *Group) Memory() (m Memory, ok bool, err error) {
	sc := getScratch()
	defer sc.put()
	p, ok := g.placeOf("memory")
	if !ok {
		return Memory{}, false, nil
	}
	files := memoryV1
	if p.v2 {
		files = memoryV2
	}
	data, dir, ok, err := p.readUp(files.usage, sc)
	if err != nil || !ok {
		return Memory{}, false, err
	}
	m.V2 = p.v2
	if m.Usage, err = parseUint(data); err != nil {
		return Memory{}, false, fmt.Errorf("%s: %w", filepath.Join(dir, files.usage), err)
	}
	data, err = readControl(filepath.Join(dir, "memory.stat"), sc)
	if err != nil {
		return Memory{}, false, err
	}
	ms, err := parseMemStat(data, p.v2)
	if err != nil {
		return Memory{}, false, err
	}
	m.Stat = ms.Stat
	if m.Limit, err = limitOf(p, dir, files.limit, ms.hierLimit, ms.hasHierLimit, sc); err != nil {
		return Memory{}, false, err
	}
	if m.Swap, err = readSwap(p, dir, files, ms, sc); err != nil {
		return Memory{}, false, err
	}
	return m, true, nil
}

// limitOf is the effective limit: v1's hierarchical figure from memory.stat
// when it has one, else the smallest value of the limit file along the path
// from dir to the hierarchy's root; NoLimit if no directory on the way has
// the file (v2's root has no memory.max).
func limitOf(p place, dir, file string, hierarchical uint64, hasHierarchical bool, sc *scratch) (uint64, error) {
	if !p.v2 && hasHierarchical {
		if hierarchical >= v1Unlimited {
			return NoLimit, nil
		}
		return hierarchical, nil
	}
	lim := NoLimit
	for _, d := range p.ancestors(dir) {
		data, err := readControl(filepath.Join(d, file), sc)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return 0, err
		}
		n, err := ParseLimit(data)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", filepath.Join(d, file), err)
		}
		lim = min(lim, n)
	}
	return lim, nil
}

// readSwap reads the swap figures, nil when the kernel keeps no swap
// accounting (v1 without swapaccount, v2 without memory.swap.*). v1's
// memory.stat has the swap in use (total_swap) and the memory+swap limit
// (hierarchical_memsw_limit) exactly when swap is accounted; v2 has files.
func readSwap(p place, dir string, files memoryFiles, ms memStat, sc *scratch) (*Swap, error) {
	var s *Swap
	if p.v2 {
		usage, err := readUint(filepath.Join(dir, files.swapUsage), sc)
		if os.IsNotExist(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, files.swapUsage), err)
		}
		s = &Swap{Usage: usage, Swappiness: -1}
	} else {
		usage, ok := ms.totalSwap, ms.hasTotalSwap
		if !ok {
			return nil, nil // no swap accounting
		}
		s = &Swap{Usage: usage, Swappiness: -1}
		if n, err := readUint(filepath.Join(dir, "memory.swappiness"), sc); err == nil && n <= 200 {
			s.Swappiness = int(n)
		}
	}
	lim, err := limitOf(p, dir, files.swapLimit, ms.hierMemsw, ms.hasHierMemsw, sc)
	if err != nil {
		return nil, err
	}
	s.Limit = lim
	return s, nil
}
