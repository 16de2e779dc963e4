package procview

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
)

const hostStat = `cpu  400 10 200 4000 50 0 5 0 0 0
cpu0 100 5 50 1000 10 0 1 0 0 0
cpu1 100 5 50 1000 20 0 2 0 0 0
cpu2 100 0 50 1000 10 0 1 0 0 0
cpu3 100 0 50 1000 10 0 1 0 0 0
intr 100 1 2
ctxt 2000
btime 1700000000
processes 300
procs_running 2
procs_blocked 0
softirq 10 1 2
`

// TestSystemStat: LXCFS's rule: the cpuset's CPUs only, with their own
// numbers; user and system from the cgroup; idle = the host's idle plus the
// host's busy time that is not the cgroup's; the sum line again; the rest
// the host's.
func TestSystemStat(t *testing.T) {
	set := cgroup.CPUSet{1, 3}
	u := &cgroup.CPUUsage{PerCPU: []cgroup.CPUTimes{{}, {User: 300 * time.Millisecond, System: 100 * time.Millisecond}, {}, {User: 1500 * time.Millisecond}}}
	got := string(SystemStat([]byte(hostStat), set, u))
	rest := hostStat[strings.Index(hostStat, "intr"):]
	// cpu1: busy 100+5+50+20+2 = 177, the cgroup's 30+10 = 40: idle 1000+137.
	// cpu3: busy 161, the cgroup's 150: idle 1011.
	want := "cpu  180 0 10 2148 0 0 0 0 0 0\ncpu1 30 0 10 1137 0 0 0 0 0 0\ncpu3 150 0 0 1011 0 0 0 0 0 0\n" + rest
	if got != want {
		t.Errorf("per-CPU usage:\n%s\nwant\n%s", got, want)
	}
	// v2: totals only, shared equally.
	got = string(SystemStat([]byte(hostStat), set, &cgroup.CPUUsage{Total: cgroup.CPUTimes{User: 2 * time.Second, System: 0}}))
	want = "cpu  200 0 0 2138 0 0 0 0 0 0\ncpu1 100 0 0 1077 0 0 0 0 0 0\ncpu3 100 0 0 1061 0 0 0 0 0 0\n" + rest
	if got != want {
		t.Errorf("totals:\n%s\nwant\n%s", got, want)
	}
	// No CPU accounting: the host's lines of the cpuset's CPUs.
	got = string(SystemStat([]byte(hostStat), set, nil))
	want = "cpu  200 5 100 2000 30 0 3 0 0 0\ncpu1 100 5 50 1000 20 0 2 0 0 0\ncpu3 100 0 50 1000 10 0 1 0 0 0\n" + rest
	if got != want {
		t.Errorf("no usage:\n%s\nwant\n%s", got, want)
	}
	// No cpuset, no usage: the host's file.
	if got := string(SystemStat([]byte(hostStat), nil, nil)); got != hostStat {
		t.Errorf("all CPUs, no usage:\n%s", got)
	}
}

const hostDiskstats = `   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   8       0 sda 35799 6409 1532978 6751 4180 29680 2063752 6706 0 4568 14206 9906 73 950944 743 107 3
   8       1 sda1 1 0 8 0 0 0 0 0 0 0 0 0 0 0 0 0 0
`

// TestDiskstats: a line per device the cgroup used, with its figures, in
// the host's layout.
func TestDiskstats(t *testing.T) {
	io := map[cgroup.Dev]cgroup.IOStat{
		{Major: 8, Minor: 0}: {Reads: 10, Writes: 20, ReadBytes: 4096, WrittenBytes: 8192, ReadTime: 3 * time.Millisecond, TotalTime: 5 * time.Millisecond, Discards: 1},
		{Major: 8, Minor: 1}: {},
		{Major: 9, Minor: 9}: {Reads: 1},
	}
	got := string(Diskstats([]byte(hostDiskstats), io))
	want := "   8       0 sda 10 0 8 3 20 0 16 0 0 5 0 1 0 0 0 0 0\n"
	if got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
	// An older kernel's 14 fields: as many counters.
	old := "   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n"
	if got, want := string(Diskstats([]byte(old), io)), "   8       0 sda 10 0 8 3 20 0 16 0 0 5 0\n"; got != want {
		t.Errorf("11 counters: %q, want %q", got, want)
	}
}

// TestSwaps: the host's header and the cgroup's swap as one "none" line,
// none where the cgroup may not swap; the host's file without swap
// accounting.
func TestSwaps(t *testing.T) {
	header := "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
	hostSwaps := header + "/dev/vdb                                partition\t1048572\t\t0\t\t-2\n"
	meminfo := []byte("MemTotal:       4000000 kB\nSwapTotal:       1048572 kB\nSwapFree:        1048572 kB\n")
	m := cgroup.Memory{Limit: 256 << 20, Swap: &cgroup.Swap{Limit: 512 << 20, Usage: 1 << 20, Swappiness: 60}}
	want := header + "none                                    virtual\t524288\t\t1024\t\t0\n"
	if got := string(Swaps([]byte(hostSwaps), meminfo, m)); got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
	m.Swap.Swappiness = 0 // used only: 1 MiB
	if got := string(Swaps([]byte(hostSwaps), meminfo, m)); !strings.HasSuffix(got, "virtual\t1024\t\t1024\t\t0\n") {
		t.Errorf("swappiness 0: %q", got)
	}
	m.Swap = &cgroup.Swap{Swappiness: -1} // limit 0: noswap
	if got := string(Swaps([]byte(hostSwaps), meminfo, m)); got != header {
		t.Errorf("no swap: %q", got)
	}
	m.Swap = nil
	if got := string(Swaps([]byte(hostSwaps), meminfo, m)); got != hostSwaps {
		t.Errorf("no swap accounting: %q, want the host's", got)
	}
}

// TestViewFiles: the View's new files for a confined process and for one
// in the root cgroups, on the fixture host; a cgroup removed under a
// reader gives an error, not its parent's figures.
func TestViewFiles(t *testing.T) {
	v := viewFixture(t)
	root := filepath.Dir(v.Proc)
	for name, content := range map[string]string{
		"proc/stat":                             hostStat,
		"proc/diskstats":                        hostDiskstats,
		"proc/swaps":                            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
		"proc/slabinfo":                         "slabinfo - version: 2.1\n# name <active_objs>\nkmalloc-8 1 2 8 512 1 : tunables 0 0 0 : slabdata 0 0 0\n",
		"proc/pressure/cpu":                     "some host\n",
		"proc/loadavg":                          "9.99 9.99 9.99 1/1 1\n",
		"cpuacct/ctr/cpuacct.usage_all":         "cpu user system\n0 0 0\n1 1000000000 0\n2 0 0\n3 0 0\n",
		"memory/ctr/memory.kmem.slabinfo":       "",
		"blkio/ctr/blkio.io_serviced_recursive": "8:0 Read 10\nTotal 10\n",
		"blkio/blkio.io_serviced_recursive":     "Total 10\n",
	} {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v.Cgroups.V1["blkio"] = cgroup.Mount{Dir: filepath.Join(root, "blkio"), Root: "/"}
	os.WriteFile(filepath.Join(v.Proc, "10/cgroup"), []byte("7:blkio:/ctr\n5:cpuacct:/ctr\n4:memory:/ctr\n3:cpuset:/ctr\n0::/\n"), 0o644)

	st, err := v.Stat(10)
	if err != nil || !strings.HasPrefix(string(st), "cpu  100 0 0 2238 0 0 0 0 0 0\ncpu1 100 0 0 1077 0 0 0 0 0 0\ncpu3 0 0 0 1161 0 0 0 0 0 0\nintr") {
		t.Errorf("stat of 10: %q %v", st, err)
	}
	if st, err := v.Stat(1); err != nil || string(st) != hostStat {
		t.Errorf("stat of 1: %q %v, want the host's", st, err)
	}
	if d, err := v.Diskstats(10); err != nil || string(d) != "   8       0 sda 10 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n" {
		t.Errorf("diskstats of 10: %q %v", d, err)
	}
	if s, err := v.Slabinfo(10); err != nil || string(s) != "slabinfo - version: 2.1\n# name <active_objs>\n" {
		t.Errorf("slabinfo of 10 (empty cgroup file): %q %v, want the header", s, err)
	}
	if p, err := v.Pressure(10, "cpu"); err != nil || string(p) != "some host\n" {
		t.Errorf("pressure of 10 (v2 root): %q %v, want the host's", p, err)
	}
	if l, err := v.Loadavg(10); err != nil || string(l) != "9.99 9.99 9.99 1/1 1\n" {
		t.Errorf("loadavg without a sampler: %q %v, want the host's", l, err)
	}
	// The container's cgroup goes (its processes moved to /elsewhere, which
	// is gone too by the time it is read): an error, not the root's
	// figures.
	os.WriteFile(filepath.Join(v.Proc, "10/cgroup"), []byte("4:memory:/elsewhere\n3:cpuset:/elsewhere\n0::/\n"), 0o644)
	if mi, err := v.Meminfo(10); err == nil {
		t.Errorf("meminfo of a process whose cgroup is gone: %q, want an error", mi)
	}
}

func FuzzSystemStat(f *testing.F) {
	f.Add(hostStat, "1,3", uint64(1e9), uint64(2e9), true)
	f.Add("cpu0 1 2 3\ncpu 1 2\ncpux 1 2 3 4\ncpu1 99999999999999999999 1 1 1\n", "0-1", uint64(0), uint64(0), false)
	f.Fuzz(func(t *testing.T, host, list string, user, system uint64, perCPU bool) {
		set, err := cgroup.ParseCPUList(list)
		if err != nil {
			return
		}
		u := &cgroup.CPUUsage{Total: cgroup.CPUTimes{User: time.Duration(user >> 2), System: time.Duration(system >> 2)}}
		if perCPU {
			u.PerCPU = []cgroup.CPUTimes{u.Total, u.Total}
		}
		out := SystemStat([]byte(host), set, u)
		if !bytes.HasPrefix(out, []byte("cpu  ")) {
			t.Fatalf("no sum line first: %q", out)
		}
		for _, l := range bytes.Split(out, []byte("\n")) {
			name, _, ok := parseCPULine(append(l, '\n'))
			if ok && name != "" && len(set) > 0 {
				if n, err := strconv.Atoi(name); err == nil && !set.Contains(n) {
					t.Fatalf("cpu%s kept, not in %v: %q", name, set, out)
				}
			}
		}
	})
}

func FuzzDiskstats(f *testing.F) {
	f.Add(hostDiskstats, uint32(8), uint32(0), uint64(10))
	f.Add("8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n8 0\n", uint32(8), uint32(0), uint64(1))
	f.Fuzz(func(t *testing.T, host string, major, minor uint32, n uint64) {
		out := Diskstats([]byte(host), map[cgroup.Dev]cgroup.IOStat{{Major: major, Minor: minor}: {Reads: n, ReadBytes: n}})
		for _, l := range bytes.Split(bytes.TrimSuffix(out, []byte("\n")), []byte("\n")) {
			if len(l) > 0 && len(bytes.Fields(l)) < 14 {
				t.Fatalf("short line %q", l)
			}
		}
	})
}

func FuzzSwaps(f *testing.F) {
	f.Add("Filename\tType\n", "SwapTotal: 100 kB\n", uint64(1<<20), uint64(1<<10), 60)
	f.Add("", "SwapTotal: x kB\n", uint64(0), uint64(0), 0)
	f.Fuzz(func(t *testing.T, swaps, meminfo string, limit, usage uint64, swappiness int) {
		out := Swaps([]byte(swaps), []byte(meminfo), cgroup.Memory{Swap: &cgroup.Swap{Limit: limit, Usage: usage, Swappiness: swappiness}})
		if bytes.Count(out, []byte("\n")) > 2 {
			t.Fatalf("more than a header and a line: %q", out)
		}
	})
}

// TestMalformed: a kernel file that is not what the kernel writes is an
// error for the reader (an errno), never a panic nor figures made up from
// part of it.
func TestMalformed(t *testing.T) {
	v := viewFixture(t)
	root := filepath.Dir(v.Proc)
	for name, content := range map[string]string{
		"proc/stat":                     hostStat,
		"cpuacct/ctr/cpuacct.usage_all": "cpu user system\n0 1 x\n",
		"memory/ctr/memory.stat":        "total_cache many\n",
	} {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := v.Stat(10); err == nil {
		t.Errorf("stat with a malformed cpuacct.usage_all: %q", got)
	}
	if got, err := v.Meminfo(10); err == nil {
		t.Errorf("meminfo with a malformed memory.stat: %q", got)
	}
}
