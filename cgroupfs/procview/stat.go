package procview

import (
	"bytes"
	"strconv"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
)

// SystemStat derives the /proc/stat that a process of a cgroup should see from
// the host's, as LXCFS does (without its --enable-cfs view):
//
//   - only the cpuN lines of the CPUs in set (nil: every CPU), with their
//     own numbers;
//   - where the cgroup's CPU time is known (u non-nil), each line is the
//     cgroup's user and system time on that CPU in clock ticks, 0 for
//     nice, iowait, irq, softirq, steal and the guest times, and for idle
//     the host's idle time plus the time the CPU spent on others' work
//     (its busy time minus the cgroup's); without a per-CPU split (v2's
//     cpu.stat has only totals) the totals are shared equally among the
//     set's CPUs; without u, the host's lines;
//   - the "cpu" line is the sum of the lines kept;
//   - every other line (intr, ctxt, btime, processes, procs_running, ...)
//     is the host's.
func SystemStat(host []byte, set cgroup.CPUSet, u *cgroup.CPUUsage) []byte {
	return systemStat(host, set, u, 0)
}

// systemStat is SystemStat of a host's file read elapsed ago (a shared
// read, see View.hostShared): each CPU's total time has grown by elapsed
// since, which the cgroup's time, read now, may include, so it is counted
// to the time spent on others' work or idle, as a fresh read would.
// Without it a busy cgroup's idle figure would step back by up to a tick
// between two reads of one shared content.
func systemStat(host []byte, set cgroup.CPUSet, u *cgroup.CPUUsage, elapsed time.Duration) []byte {
	type cpuLine struct {
		cpu    int
		fields [10]uint64
	}
	var kept []cpuLine
	var rest [][]byte
	for data := host; len(data) > 0; {
		var line []byte
		line, data = nextLine(data)
		name, fields, ok := parseCPULine(line)
		if !ok {
			rest = append(rest, line)
			continue
		}
		if name == "" {
			continue // the "cpu" line: summed again below
		}
		cpu, err := strconv.Atoi(name)
		if err != nil || cpu < 0 || strconv.Itoa(cpu) != name {
			rest = append(rest, line)
			continue
		}
		if set != nil && !set.Contains(cpu) {
			continue
		}
		kept = append(kept, cpuLine{cpu, fields})
	}
	if u != nil {
		var share cgroup.CPUTimes
		if u.PerCPU == nil && len(kept) > 0 {
			share = cgroup.CPUTimes{User: u.Total.User / time.Duration(len(kept)), System: u.Total.System / time.Duration(len(kept))}
		}
		for i := range kept {
			c := &kept[i]
			t := share
			if u.PerCPU != nil {
				t = cgroup.CPUTimes{}
				if c.cpu < len(u.PerCPU) {
					t = u.PerCPU[c.cpu]
				}
			}
			user, system := clockTicks(t.User), clockTicks(t.System)
			var hostUsed uint64
			for j, v := range c.fields {
				if j != 3 {
					hostUsed += v
				}
			}
			idle := c.fields[3]
			hostUsed += clockTicks(elapsed)
			if cg := user + system; hostUsed >= cg {
				idle += hostUsed - cg
			}
			c.fields = [10]uint64{user, 0, system, idle}
		}
	}
	var sum [10]uint64
	for _, c := range kept {
		for j, v := range c.fields {
			sum[j] += v
		}
	}
	out := make([]byte, 0, len(host))
	out = appendCPULine(out, "cpu ", sum)
	for _, c := range kept {
		out = appendCPULine(out, "cpu"+strconv.Itoa(c.cpu), c.fields)
	}
	for _, line := range rest {
		out = append(out, line...)
	}
	return out
}

// clockTicks converts CPU time to clock ticks (USER_HZ, 100 on every
// Linux), truncating as the kernel's cputime_to_clock_t does.
func clockTicks(d time.Duration) uint64 {
	if d < 0 {
		return 0
	}
	return uint64(d / (time.Second / 100))
}

// parseCPULine recognises a "cpu" or "cpuN" line of /proc/stat and returns
// N ("" for the sum line) and its counters (10 on kernels since 2.6.33;
// fewer are read as 0).
func parseCPULine(line []byte) (name string, fields [10]uint64, ok bool) {
	rest, found := bytes.CutPrefix(line, []byte("cpu"))
	if !found {
		return "", fields, false
	}
	var buf [12][]byte // no allocation per line: bytes.Fields would make one
	f := splitFields(rest, buf[:0])
	if len(f) < 2 {
		return "", fields, false
	}
	if rest[0] == ' ' {
		name = "" // "cpu  user nice ...": f holds only numbers
	} else {
		name, f = string(f[0]), f[1:]
	}
	if len(f) < 4 || len(f) > 10 {
		return "", fields, false
	}
	for i, v := range f {
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil || n > 1<<56 {
			return "", fields, false
		}
		fields[i] = n
	}
	return name, fields, true
}

// splitFields appends the space-separated fields of line to f, up to its
// capacity (a line with more is cut there: a cpu line with more than ten
// counters is refused anyway).
func splitFields(line []byte, f [][]byte) [][]byte {
	for len(f) < cap(f) {
		line = bytes.TrimLeft(line, " \t\n\v\f\r")
		if len(line) == 0 {
			break
		}
		end := bytes.IndexAny(line, " \t\n\v\f\r")
		if end < 0 {
			end = len(line)
		}
		f, line = append(f, line[:end]), line[end:]
	}
	return f
}

func appendCPULine(out []byte, name string, f [10]uint64) []byte {
	out = append(out, name...)
	for _, v := range f {
		out = strconv.AppendUint(append(out, ' '), v, 10)
	}
	return append(out, '\n')
}
