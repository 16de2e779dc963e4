package procview

import (
	"bytes"
	"strconv"
	"unicode"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
)

// MeminfoField reads the value of one "Name:   N kB" line of a meminfo
// file, in kB; ok is false if there is no such line.
func MeminfoField(meminfo []byte, name string) (kb uint64, ok bool) {
	for len(meminfo) > 0 {
		line, rest, _ := bytes.Cut(meminfo, []byte("\n"))
		meminfo = rest
		k, v, found := bytes.Cut(line, []byte(":"))
		if !found || string(k) != name {
			continue
		}
		v = bytes.TrimLeftFunc(v, unicode.IsSpace)
		if end := bytes.IndexFunc(v, unicode.IsSpace); end >= 0 {
			v = v[:end]
		}
		if len(v) == 0 {
			return 0, false
		}
		n, err := strconv.ParseUint(string(v), 10, 64)
		return n, err == nil
	}
	return 0, false
}

// meminfoNames are the lines of meminfo that Meminfo writes the cgroup's
// figure into, and meminfoIndex their places in its table of values.
var meminfoNames = [...]string{
	"MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapCached",
	"Active", "Inactive", "Active(anon)", "Inactive(anon)", "Active(file)", "Inactive(file)",
	"Unevictable", "Dirty", "Writeback", "AnonPages", "Mapped", "Shmem",
	"KReclaimable", "Slab", "SReclaimable", "SUnreclaim", "AnonHugePages",
	"ShmemHugePages", "ShmemPmdMapped", "Zswap", "Zswapped", "SwapTotal", "SwapFree",
}

var meminfoIndex = func() map[string]int {
	m := make(map[string]int, len(meminfoNames))
	for i, n := range meminfoNames {
		m[n] = i
	}
	return m
}()

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
	st := m.Stat
	kb := func(b uint64) uint64 { return b / 1024 }
	// The values, in meminfoNames' order; has says which are set (swap's
	// only where the kernel accounts it per cgroup).
	vals := [len(meminfoNames)]uint64{
		total, free, min(total, free+kb(st.ActiveFile+st.InactiveFile+st.SlabReclaimable)), 0, kb(st.File), 0,
		kb(st.ActiveAnon + st.ActiveFile), kb(st.InactiveAnon + st.InactiveFile), kb(st.ActiveAnon), kb(st.InactiveAnon), kb(st.ActiveFile), kb(st.InactiveFile),
		kb(st.Unevictable), kb(st.Dirty), kb(st.Writeback), kb(st.Anon), kb(st.FileMapped), kb(st.Shmem),
		kb(st.SlabReclaimable), kb(st.Slab), kb(st.SlabReclaimable), kb(st.SlabUnreclaimable), kb(st.AnonHuge),
		0, 0, kb(st.Zswap), kb(st.Zswapped), 0, 0,
	}
	var has [len(meminfoNames)]bool
	for i := range has {
		has[i] = true
	}
	if swTotal, swUsed, ok := swapOf(host, m); ok {
		vals[len(vals)-2], vals[len(vals)-1] = swTotal, swTotal-swUsed
	} else {
		has[len(has)-2], has[len(has)-1] = false, false
	}
	out := make([]byte, 0, len(host)+64)
	for rest := host; len(rest) > 0; {
		var line []byte
		line, rest = nextLine(rest)
		name, _, found := bytes.Cut(line, []byte(":"))
		i, known := meminfoIndex[string(name)]
		if !found || !known || !has[i] {
			out = append(out, line...)
			continue
		}
		out = appendMeminfoLine(out, meminfoNames[i], vals[i])
		if line[len(line)-1] != '\n' {
			out = out[:len(out)-1] // the host's last line had no newline
		}
	}
	return out
}

// appendMeminfoLine writes one line as the kernel's show_val_kb does: the
// name and colon padded to 16 columns, the number right-aligned in 8.
func appendMeminfoLine(out []byte, name string, kb uint64) []byte {
	out = append(append(out, name...), ':')
	for n := len(name) + 1; n < 16; n++ {
		out = append(out, ' ')
	}
	if len(name)+1 >= 16 {
		out = append(out, ' ')
	}
	var num [20]byte
	digits := strconv.AppendUint(num[:0], kb, 10)
	for n := len(digits); n < 8; n++ {
		out = append(out, ' ')
	}
	return append(append(out, digits...), " kB\n"...)
}
