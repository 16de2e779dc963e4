package cgroup

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// MaxCPUs bounds the CPU numbers ParseCPUList accepts. The kernel's
// NR_CPUS is at most 8192; the bound keeps a malformed list ("0-4000000000")
// from allocating gigabytes.
const MaxCPUs = 1 << 16

// CPUSet is a set of CPU numbers, sorted ascending, without duplicates.
type CPUSet []int

// ParseCPUList parses the kernel's CPU list format ("0-3,8,10-11", as in
// cpuset.cpus and /sys/devices/system/cpu/online). An empty list (a
// cpuset not yet configured) is an empty set.
func ParseCPUList(s string) (CPUSet, error) {
	s = strings.TrimSpace(s)
	var set CPUSet
	if s == "" {
		return set, nil
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 || a >= MaxCPUs || lo != strconv.Itoa(a) {
			return nil, fmt.Errorf("cpu list %q: bad number %q", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a || b >= MaxCPUs || hi != strconv.Itoa(b) {
				return nil, fmt.Errorf("cpu list %q: bad range %q", s, part)
			}
		}
		for c := a; c <= b; c++ {
			set = append(set, c)
		}
		if len(set) > MaxCPUs {
			return nil, fmt.Errorf("cpu list %q: more than %d CPUs", s, MaxCPUs)
		}
	}
	slices.Sort(set)
	return slices.Compact(set), nil
}

// String formats the set in the kernel's list format, with ranges for
// runs of consecutive CPUs ("0-3,8").
func (s CPUSet) String() string {
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(s[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(s[j]))
		}
		i = j + 1
	}
	return b.String()
}

// Contains reports whether cpu is in the set.
func (s CPUSet) Contains(cpu int) bool {
	_, found := slices.BinarySearch(s, cpu)
	return found
}

// CPUs reads the CPUs the process's cpuset cgroup lets it run on: v2
// cpuset.cpus.effective, v1 cpuset.effective_cpus (or cpuset.cpus on
// kernels without it). ok is false when no cpuset controller covers the
// process.
func (g *Group) CPUs() (set CPUSet, ok bool, err error) {
	sc := getScratch()
	defer sc.put()
	p, ok := g.placeOf("cpuset")
	if !ok {
		return nil, false, nil
	}
	names := []string{"cpuset.effective_cpus", "cpuset.cpus"}
	if p.v2 {
		names = []string{"cpuset.cpus.effective"}
	}
	for _, name := range names {
		data, _, ok, err := p.readUp(name, sc)
		if err != nil {
			return nil, false, err
		}
		if !ok {
			continue
		}
		set, err := ParseCPUList(string(data))
		if err != nil {
			return nil, false, err
		}
		return set, true, nil
	}
	return nil, false, nil
}

// CPUTime reads the CPU time the process's cgroup (with its descendants)
// has used: v2 cpu.stat usage_usec, v1 cpuacct.usage. ok is false when
// neither is there.
func (g *Group) CPUTime() (d time.Duration, ok bool, err error) {
	sc := getScratch()
	defer sc.put()
	if p, ok := g.placeOf("cpuacct"); ok && !p.v2 {
		data, _, ok, err := p.readUp("cpuacct.usage", sc)
		if err != nil {
			return 0, false, err
		}
		if ok {
			ns, err := parseUint(data)
			if err != nil || ns > 1<<62 {
				return 0, false, fmt.Errorf("cpuacct.usage: %w", errMalformed)
			}
			return time.Duration(ns), true, nil
		}
	}
	p, ok := g.unified()
	if !ok {
		return 0, false, nil
	}
	data, _, ok, err := p.readUp("cpu.stat", sc)
	if err != nil || !ok {
		return 0, false, err
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		if v, found := bytes.CutPrefix(line, []byte("usage_usec ")); found {
			us, err := strconv.ParseUint(string(v), 10, 63)
			if err != nil {
				return 0, false, fmt.Errorf("cpu.stat: %w", errMalformed)
			}
			return time.Duration(us) * time.Microsecond, true, nil
		}
	}
	return 0, false, nil
}

// CPUUsage is the CPU time a cgroup (with its descendants) has used, split
// into user and system time.
type CPUUsage struct {
	// PerCPU holds the time used on each CPU, indexed by CPU number; nil
	// where the hierarchy keeps only totals (v2's cpu.stat).
	PerCPU []CPUTimes
	// Total is the sum over the CPUs.
	Total CPUTimes
}

// CPUTimes is user and system CPU time.
type CPUTimes struct {
	User, System time.Duration
}

// Usage reads the cgroup's CPU time: v1 cpuacct.usage_all (per CPU, user
// and system; cpuacct.usage_percpu, all counted as user, on kernels
// without it), else v2 cpu.stat's user_usec and system_usec (totals
// only). ok is false when neither is there, and in a root cgroup, whose
// figures are the host's /proc/stat.
func (g *Group) Usage() (u CPUUsage, ok bool, err error) {
	sc := getScratch()
	defer sc.put()
	if p, ok := g.placeOf("cpuacct"); ok && !p.v2 {
		if p.dir == p.mount.Dir {
			return CPUUsage{}, false, nil
		}
		for _, f := range []struct {
			name  string
			parse func([]byte) ([]CPUTimes, error)
		}{{"cpuacct.usage_all", ParseUsageAll}, {"cpuacct.usage_percpu", parsePercpu}} {
			data, dir, ok, err := p.readUp(f.name, sc)
			if err != nil {
				return CPUUsage{}, false, err
			}
			if ok {
				per, err := f.parse(data)
				if err != nil {
					return CPUUsage{}, false, fmt.Errorf("%s/%s: %w", dir, f.name, err)
				}
				return sumUsage(per), true, nil
			}
		}
	}
	p, ok := g.unified()
	if !ok || p.dir == p.mount.Dir {
		return CPUUsage{}, false, nil
	}
	data, dir, ok, err := p.readUp("cpu.stat", sc)
	if err != nil || !ok {
		return CPUUsage{}, false, err
	}
	var user, sys uint64
	var ok1, ok2 bool
	err = eachKV(data, "cpu.stat", func(k []byte, n uint64) {
		switch string(k) {
		case "user_usec":
			user, ok1 = n, true
		case "system_usec":
			sys, ok2 = n, true
		}
	})
	if err != nil {
		return CPUUsage{}, false, fmt.Errorf("%s/cpu.stat: %w", dir, err)
	}
	if !ok1 || !ok2 || user > 1<<53 || sys > 1<<53 {
		return CPUUsage{}, false, nil
	}
	return CPUUsage{Total: CPUTimes{time.Duration(user) * time.Microsecond, time.Duration(sys) * time.Microsecond}}, true, nil
}

func sumUsage(per []CPUTimes) CPUUsage {
	u := CPUUsage{PerCPU: per}
	for _, t := range per {
		u.Total.User += t.User
		u.Total.System += t.System
	}
	return u
}

// ParseUsageAll parses v1's cpuacct.usage_all: a header "cpu user system"
// and a line "N USER_NS SYSTEM_NS" per CPU, in CPU order. The result is
// indexed by CPU number.
func ParseUsageAll(data []byte) ([]CPUTimes, error) {
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) == 0 || strings.Join(strings.Fields(lines[0]), " ") != "cpu user system" {
		return nil, fmt.Errorf("usage_all: %w: no header", errMalformed)
	}
	var per []CPUTimes
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("usage_all: %w: line %q", errMalformed, line)
		}
		cpu, err1 := strconv.Atoi(f[0])
		user, err2 := strconv.ParseUint(f[1], 10, 62)
		sys, err3 := strconv.ParseUint(f[2], 10, 62)
		if err1 != nil || err2 != nil || err3 != nil || cpu != len(per) || cpu >= MaxCPUs {
			return nil, fmt.Errorf("usage_all: %w: line %q", errMalformed, line)
		}
		per = append(per, CPUTimes{User: time.Duration(user), System: time.Duration(sys)})
	}
	return per, nil
}

// parsePercpu parses cpuacct.usage_percpu: the nanoseconds of each CPU
// on one line. Without a split it is all user time.
func parsePercpu(data []byte) ([]CPUTimes, error) {
	var per []CPUTimes
	for _, f := range strings.Fields(string(data)) {
		ns, err := strconv.ParseUint(f, 10, 62)
		if err != nil || len(per) >= MaxCPUs {
			return nil, errMalformed
		}
		per = append(per, CPUTimes{User: time.Duration(ns)})
	}
	return per, nil
}
