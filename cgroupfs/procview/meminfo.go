package procview

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
)

// MeminfoField reads the value of one "Name:   N kB" line of a meminfo
// file, in kB; ok is false if there is no such line.
func MeminfoField(meminfo []byte, name string) (kb uint64, ok bool) {
	for _, line := range bytes.Split(meminfo, []byte("\n")) {
		k, v, found := bytes.Cut(line, []byte(":"))
		if !found || string(k) != name {
			continue
		}
		f := strings.Fields(string(v))
		if len(f) == 0 {
			return 0, false
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		return n, err == nil
	}
	return 0, false
}

// Meminfo derives the /proc/meminfo that a process in a cgroup with memory
// figures m should see, from the host's /proc/meminfo: the same lines in
// the same order, with the kernel's alignment, and the cgroup's values
// where it has them:
//
//   - MemTotal is the cgroup's limit; a cgroup whose limit is the host's
//     memory or more (or none) gets the host's file unchanged, because it
//     may use all of the host's memory and the host's free figures are then
//     the ones that bind it;
//   - MemFree is the limit minus the usage, MemAvailable adds the page
//     cache and reclaimable slab the kernel could free (capped at
//     MemTotal), as LXCFS derives them;
//   - Cached, Active/Inactive (anon and file), Unevictable, Dirty,
//     Writeback, AnonPages, Mapped, Shmem, AnonHugePages, Slab,
//     SReclaimable (and KReclaimable), SUnreclaim, Zswap, Zswapped come
//     from memory.stat (v1 has no slab or zswap figures: 0); Buffers,
//     SwapCached, ShmemHugePages and ShmemPmdMapped are 0 (cgroups do not
//     account them apart);
//   - SwapTotal is the cgroup's swap limit (capped at the host's swap; the
//     swap in use when v1's swappiness is 0), SwapFree what is left, where
//     the kernel accounts swap per cgroup, the host's lines otherwise;
//   - every other line (PageTables, Committed_AS, HugePages_*, ...) is the
//     host's: the cgroup has no figure for it.
func Meminfo(host []byte, m cgroup.Memory) []byte {
	hostTotal, ok := MeminfoField(host, "MemTotal")
	if !ok || m.Limit == cgroup.NoLimit || m.Limit/1024 >= hostTotal {
		return host
	}
	total := m.Limit / 1024
	used := min(m.Usage/1024, total)
	free := total - used
	s := m.Stat
	kb := func(b uint64) uint64 { return b / 1024 }
	vals := map[string]uint64{
		"MemTotal":       total,
		"MemFree":        free,
		"MemAvailable":   min(total, free+kb(s.ActiveFile+s.InactiveFile+s.SlabReclaimable)),
		"Buffers":        0,
		"Cached":         kb(s.File),
		"SwapCached":     0,
		"Active":         kb(s.ActiveAnon + s.ActiveFile),
		"Inactive":       kb(s.InactiveAnon + s.InactiveFile),
		"Active(anon)":   kb(s.ActiveAnon),
		"Inactive(anon)": kb(s.InactiveAnon),
		"Active(file)":   kb(s.ActiveFile),
		"Inactive(file)": kb(s.InactiveFile),
		"Unevictable":    kb(s.Unevictable),
		"Dirty":          kb(s.Dirty),
		"Writeback":      kb(s.Writeback),
		"AnonPages":      kb(s.Anon),
		"Mapped":         kb(s.FileMapped),
		"Shmem":          kb(s.Shmem),
		"KReclaimable":   kb(s.SlabReclaimable),
		"Slab":           kb(s.Slab),
		"SReclaimable":   kb(s.SlabReclaimable),
		"SUnreclaim":     kb(s.SlabUnreclaimable),
		"AnonHugePages":  kb(s.AnonHuge),
		"ShmemHugePages": 0,
		"ShmemPmdMapped": 0,
		"Zswap":          kb(s.Zswap),
		"Zswapped":       kb(s.Zswapped),
	}
	if swTotal, swUsed, ok := swapOf(host, m); ok {
		vals["SwapTotal"] = swTotal
		vals["SwapFree"] = swTotal - swUsed
	}
	out := make([]byte, 0, len(host)+64)
	for _, line := range bytes.SplitAfter(host, []byte("\n")) {
		name, _, found := bytes.Cut(line, []byte(":"))
		v, known := vals[string(name)]
		if !found || !known {
			out = append(out, line...)
			continue
		}
		out = appendMeminfoLine(out, string(name), v)
		if !bytes.HasSuffix(line, []byte("\n")) {
			out = out[:len(out)-1] // the host's last line had no newline
		}
	}
	return out
}

// appendMeminfoLine writes one line as the kernel's show_val_kb does: the
// name and colon padded to 16 columns, the number right-aligned in 8.
func appendMeminfoLine(out []byte, name string, kb uint64) []byte {
	label := name + ":"
	if len(label) < 16 {
		label += strings.Repeat(" ", 16-len(label))
	} else {
		label += " "
	}
	return fmt.Appendf(out, "%s%8d kB\n", label, kb)
}
