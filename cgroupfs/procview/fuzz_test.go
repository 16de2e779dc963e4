package procview

import (
	"bytes"
	"slices"
	"testing"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
)

func FuzzMeminfo(f *testing.F) {
	f.Add("MemTotal:       24683584 kB\nMemFree:        24357780 kB\nHugePages_Total:       0\n", uint64(256<<20), uint64(1<<20), uint64(1<<20))
	f.Add("MemTotal: 5 kB\nMemTotal: 7 kB\n", uint64(1024), uint64(0), uint64(0))
	f.Add("garbage", uint64(1), uint64(2), uint64(3))
	f.Fuzz(func(t *testing.T, host string, limit, usage, file uint64) {
		out := Meminfo([]byte(host), cgroup.Memory{Limit: limit, Usage: usage, Stat: cgroup.Stat{ActiveFile: file},
			Swap: &cgroup.Swap{Limit: limit, Usage: usage}})
		// Same lines, same names, same order: only values change.
		a, b := bytes.Split([]byte(host), []byte("\n")), bytes.Split(out, []byte("\n"))
		if len(a) != len(b) || !slices.Equal(names([]byte(host)), names(out)) {
			t.Fatalf("host %q became %q", host, out)
		}
		total, ok1 := MeminfoField(out, "MemTotal")
		free, ok2 := MeminfoField(out, "MemFree")
		avail, ok3 := MeminfoField(out, "MemAvailable")
		if ok1 && ok2 && free > total && !bytes.Equal(out, []byte(host)) {
			t.Fatalf("MemFree %d > MemTotal %d in %q", free, total, out)
		}
		if ok1 && ok3 && avail > total && !bytes.Equal(out, []byte(host)) {
			t.Fatalf("MemAvailable %d > MemTotal %d in %q", avail, total, out)
		}
	})
}

func FuzzCpuinfo(f *testing.F) {
	f.Add("processor\t: 0\nflags\t: x\n\nprocessor\t: 1\nflags\t: y\n\n", "1")
	f.Add("processor : 7\n", "0-3")
	f.Fuzz(func(t *testing.T, host, list string) {
		set, err := cgroup.ParseCPUList(list)
		if err != nil {
			return
		}
		out := Cpuinfo([]byte(host), set)
		if len(out) > len(host) {
			t.Fatalf("output longer than the host's file")
		}
		for _, l := range bytes.SplitAfter(out, []byte("\n")) {
			if cpu, ok := processorLine(l); ok && !set.Contains(cpu) {
				t.Fatalf("cpu %d kept, not in %v", cpu, set)
			}
		}
	})
}

func FuzzParseStat(f *testing.F) {
	f.Add(stat(10, 1, 50000))
	f.Add("42 (a) (b) c) S 7 42 42 0 -1 4194304 102 0 0 0 0 0 0 0 20 0 1 0 60845 3133440\n")
	f.Add("1 (x")
	f.Fuzz(func(t *testing.T, s string) {
		st, err := ParseStat([]byte(s))
		if err == nil && ticks(st.StartTicks) < 0 {
			t.Fatalf("%q: start %d overflows", s, st.StartTicks)
		}
	})
}

func FuzzParseUptime(f *testing.F) {
	f.Add("608.45 1063.87\n")
	f.Add("1e400 1")
	f.Fuzz(func(t *testing.T, s string) {
		up, idle, err := ParseUptime([]byte(s))
		if err == nil && (up < 0 || idle < 0) {
			t.Fatalf("%q: negative %v %v", s, up, idle)
		}
	})
}
