package procview

import (
	"bytes"
	"fmt"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
)

// swapOf is the swap a process of a cgroup with memory figures m sees, in
// kB, from the host's meminfo: the cgroup's swap limit (v2 memory.swap.max;
// v1 the memory+swap limit, since v1 may swap out all of a cgroup's
// memory) capped at the host's swap, only the swap in use when v1's
// swappiness is 0 (the kernel will not swap the cgroup out). ok is false where the kernel keeps no swap accounting for
// cgroups: the host's figures apply.
func swapOf(host []byte, m cgroup.Memory) (total, used uint64, ok bool) {
	sw := m.Swap
	if sw == nil {
		return 0, 0, false
	}
	total, _ = MeminfoField(host, "SwapTotal")
	if sw.Limit != cgroup.NoLimit {
		total = min(total, sw.Limit/1024)
	}
	used = min(sw.Usage/1024, total)
	if sw.Swappiness == 0 {
		total = used
	}
	return total, used, true
}

// Swaps derives the /proc/swaps that a process of a cgroup with memory
// figures m should see: the host's header, and, where the cgroup may swap
// (see Meminfo's SwapTotal), one line "none ... virtual" with its swap
// size and use in kB, as LXCFS shows it, in the kernel's column layout.
// hostSwaps is the host's /proc/swaps, hostMeminfo its /proc/meminfo.
func Swaps(hostSwaps, hostMeminfo []byte, m cgroup.Memory) []byte {
	total, used, ok := swapOf(hostMeminfo, m)
	if !ok {
		return hostSwaps
	}
	header, _, _ := bytes.Cut(hostSwaps, []byte("\n"))
	out := append(append([]byte(nil), header...), '\n')
	if total == 0 {
		return out
	}
	return fmt.Appendf(out, "%-40s%s\t%d\t%s%d\t%s%d\n", "none", "virtual", total, tab(total), used, tab(used), 0)
}

// tab is the kernel's column padding in /proc/swaps: a second tab after a
// number of fewer than 8 digits.
func tab(n uint64) string {
	if n < 10000000 {
		return "\t"
	}
	return ""
}
