package procview

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
)

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// names lists the field names of a meminfo file, in order.
func names(b []byte) []string {
	var n []string
	for _, line := range strings.Split(string(b), "\n") {
		if k, _, ok := strings.Cut(line, ":"); ok {
			n = append(n, k)
		}
	}
	return n
}

// line returns the line of b that starts with name + ":".
func line(b []byte, name string) string {
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+":") {
			return l
		}
	}
	return ""
}

func TestMeminfoLimited(t *testing.T) {
	host := read(t, "meminfo")
	m := cgroup.Memory{Limit: 256 << 20, Usage: 100 << 20, Stat: cgroup.Stat{
		File: 40 << 20, Anon: 50 << 20, Shmem: 1 << 20, FileMapped: 2 << 20,
		ActiveAnon: 30 << 20, InactiveAnon: 20 << 20, ActiveFile: 25 << 20, InactiveFile: 15 << 20,
		Slab: 6 << 20, SlabReclaimable: 4 << 20, SlabUnreclaimable: 2 << 20,
	}}
	out := Meminfo(host, m)
	if !slices.Equal(names(out), names(host)) {
		t.Fatalf("field names or order differ:\n%v\n%v", names(out), names(host))
	}
	for name, want := range map[string]string{
		"MemTotal":       "MemTotal:         262144 kB",
		"MemFree":        "MemFree:          159744 kB",
		"MemAvailable":   "MemAvailable:     204800 kB", // free + 40 MiB file + 4 MiB reclaimable slab
		"Buffers":        "Buffers:               0 kB",
		"Cached":         "Cached:            40960 kB",
		"Active":         "Active:            56320 kB",
		"Inactive":       "Inactive:          35840 kB",
		"Active(anon)":   "Active(anon):      30720 kB",
		"Inactive(file)": "Inactive(file):    15360 kB",
		"AnonPages":      "AnonPages:         51200 kB",
		"Shmem":          "Shmem:              1024 kB",
		"Slab":           "Slab:               6144 kB",
		"SUnreclaim":     "SUnreclaim:         2048 kB",
		"ShmemHugePages": "ShmemHugePages:        0 kB",
	} {
		if got := line(out, name); got != want {
			t.Errorf("got  %q\nwant %q", got, want)
		}
	}
	// Fields without a cgroup figure are the host's lines, byte for byte.
	for _, name := range []string{"PageTables", "Committed_AS", "VmallocTotal", "HugePages_Total", "Hugepagesize", "SwapTotal", "DirectMap4k"} {
		if line(out, name) != line(host, name) {
			t.Errorf("%s: %q, want the host's %q", name, line(out, name), line(host, name))
		}
	}
	// Every rewritten line is aligned as the kernel aligns it.
	for _, l := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		if strings.HasSuffix(l, " kB") && len(l) < 27 {
			t.Errorf("misaligned %q", l)
		}
	}
}

func TestMeminfoHost(t *testing.T) {
	host := read(t, "meminfo")
	hostTotal, _ := MeminfoField(host, "MemTotal")
	for _, lim := range []uint64{cgroup.NoLimit, hostTotal * 1024, hostTotal*1024 + 4096, 1 << 61} {
		if out := Meminfo(host, cgroup.Memory{Limit: lim, Usage: 1 << 20}); !bytes.Equal(out, host) {
			t.Errorf("limit %d (not below the host's memory): the file changed", lim)
		}
	}
	// Usage above the limit (it happens briefly): no underflow.
	out := Meminfo(host, cgroup.Memory{Limit: 64 << 20, Usage: 65 << 20, Stat: cgroup.Stat{ActiveFile: 100 << 20}})
	if line(out, "MemFree") != "MemFree:               0 kB" || line(out, "MemAvailable") != "MemAvailable:      65536 kB" {
		t.Errorf("over the limit: %q %q", line(out, "MemFree"), line(out, "MemAvailable"))
	}
}

func TestMeminfoSwap(t *testing.T) {
	host := bytes.Replace(read(t, "meminfo"), []byte(line(read(t, "meminfo"), "SwapTotal")), []byte("SwapTotal:       1048576 kB"), 1)
	m := cgroup.Memory{Limit: 256 << 20, Usage: 1 << 20, Swap: &cgroup.Swap{Limit: 512 << 20, Usage: 1 << 20, Swappiness: 60}}
	out := Meminfo(host, m)
	if line(out, "SwapTotal") != "SwapTotal:        524288 kB" || line(out, "SwapFree") != "SwapFree:         523264 kB" {
		t.Errorf("swap: %q %q", line(out, "SwapTotal"), line(out, "SwapFree"))
	}
	m.Swap.Limit = cgroup.NoLimit
	if out := Meminfo(host, m); line(out, "SwapTotal") != "SwapTotal:       1048576 kB" {
		t.Errorf("no swap limit: %q, want the host's swap", line(out, "SwapTotal"))
	}
	m.Swap.Swappiness = 0
	if out := Meminfo(host, m); line(out, "SwapTotal") != "SwapTotal:          1024 kB" || line(out, "SwapFree") != "SwapFree:              0 kB" {
		t.Errorf("swappiness 0: %q %q, want only the swap in use", line(out, "SwapTotal"), line(out, "SwapFree"))
	}
}

func TestCpuinfo(t *testing.T) {
	host := read(t, "cpuinfo")
	set, _ := cgroup.ParseCPUList("1,3")
	out := Cpuinfo(host, set)
	var procs []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "processor") {
			procs = append(procs, l)
		}
	}
	if !slices.Equal(procs, []string{"processor\t: 1", "processor\t: 3"}) {
		t.Errorf("processor lines %q", procs)
	}
	blocks := strings.Split(strings.TrimSuffix(string(host), "\n\n"), "\n\n")
	if want := blocks[1] + "\n\n" + blocks[3] + "\n\n"; string(out) != want {
		t.Errorf("the kept blocks differ from the host's blocks 1 and 3")
	}
	all, _ := cgroup.ParseCPUList("0-3")
	if !bytes.Equal(Cpuinfo(host, all), host) {
		t.Error("all CPUs: the file changed")
	}
}

func TestParseStat(t *testing.T) {
	st, err := ParseStat([]byte("42 (a) (b) c) S 7 42 42 0 -1 4194304 102 0 0 0 0 0 0 0 20 0 1 0 60845 3133440 386 18446744073709551615\n"))
	if err != nil || st.Comm != "a) (b) c" || st.PPid != 7 || st.StartTicks != 60845 {
		t.Errorf("%+v %v", st, err)
	}
	for _, bad := range []string{"", "42 (x S 1", "42 (x) S 1 2 3"} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestParseUptime(t *testing.T) {
	up, idle, err := ParseUptime([]byte("608.45 1063.87\n"))
	if err != nil || up != 608450*time.Millisecond || idle != 1063870*time.Millisecond {
		t.Errorf("%v %v %v", up, idle, err)
	}
	if got := string(Uptime(up, idle)); got != "608.45 1063.87\n" {
		t.Errorf("Uptime = %q", got)
	}
}

// stat is a /proc/PID/stat line with the given parent and start time.
func stat(pid, ppid int, start uint64) string {
	return fmt.Sprintf("%d (sh) S %d 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 %d 1000 10 1\n", pid, ppid, start)
}

// viewFixture is a host with 4 CPUs, up 1000 s, and a v1 container /ctr
// (pids 10 and 11, in a sub-cgroup) limited to 256 MiB on CPUs 1 and 3;
// pid 1 is in the root cgroups.
func viewFixture(t *testing.T) *View {
	root := t.TempDir()
	files := map[string]string{
		"proc/meminfo":                     string(read(t, "meminfo")),
		"proc/cpuinfo":                     string(read(t, "cpuinfo")),
		"proc/uptime":                      "1000.00 3000.00\n",
		"proc/1/cgroup":                    "5:cpuacct:/\n4:memory:/\n3:cpuset:/\n0::/\n",
		"proc/1/stat":                      stat(1, 0, 1),
		"proc/10/cgroup":                   "5:cpuacct:/ctr\n4:memory:/ctr\n3:cpuset:/ctr\n0::/\n",
		"proc/10/stat":                     stat(10, 1, 50000),
		"proc/10/status":                   "Name:\tsh\nPid:\t10\nPPid:\t1\n",
		"proc/11/cgroup":                   "5:cpuacct:/ctr\n4:memory:/ctr/app\n3:cpuset:/ctr\n0::/\n",
		"proc/11/stat":                     stat(11, 10, 60000),
		"sys/devices/system/cpu/online":    "0-3\n",
		"memory/cgroup.procs":              "1\n",
		"memory/memory.limit_in_bytes":     "9223372036854771712\n",
		"memory/memory.usage_in_bytes":     "1000000000\n",
		"memory/memory.stat":               "total_cache 0\n",
		"memory/ctr/cgroup.procs":          "10\n",
		"memory/ctr/memory.limit_in_bytes": "268435456\n",
		"memory/ctr/memory.usage_in_bytes": "104857600\n",
		"memory/ctr/memory.stat":           "total_cache 0\n",
		"memory/ctr/app/cgroup.procs":      "11\n",
		"cpuset/cpuset.effective_cpus":     "0-3\n",
		"cpuset/ctr/cpuset.effective_cpus": "1,3\n",
		"cpuacct/ctr/cpuacct.usage":        "100000000000\n",
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := &cgroup.Hierarchies{Proc: filepath.Join(root, "proc"), V1: map[string]cgroup.Mount{}}
	for _, c := range []string{"memory", "cpuset", "cpuacct"} {
		h.V1[c] = cgroup.Mount{Dir: filepath.Join(root, c), Root: "/"}
	}
	return &View{Cgroups: h, Proc: filepath.Join(root, "proc"), Sys: filepath.Join(root, "sys")}
}

func TestView(t *testing.T) {
	v := viewFixture(t)
	check := func(what string, got []byte, err error, want string) {
		t.Helper()
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", what, got, err, want)
		}
	}
	mi, err := v.Meminfo(11)
	check("MemTotal of 11", []byte(line(mi, "MemTotal")), err, "MemTotal:         262144 kB")
	mi, err = v.Meminfo(1)
	check("meminfo of 1", mi, err, string(read(t, "meminfo")))

	on, err := v.Online(10)
	check("online of 10", on, err, "1,3\n")
	on, err = v.Online(1)
	check("online of 1", on, err, "0-3\n")
	ci, err := v.Cpuinfo(10)
	if n := strings.Count(string(ci), "processor\t:"); err != nil || n != 2 {
		t.Errorf("cpuinfo of 10: %d blocks, %v", n, err)
	}

	// The oldest member of /ctr (10) started at 500 s: up 500 s; 2 CPUs for 500 s
	// minus the 100 s the cgroup used.
	up, err := v.Uptime(10)
	check("uptime of 10", up, err, "500.00 900.00\n")
	// 11 is in the sub-cgroup /ctr/app alone: its own start, 600 s.
	up, err = v.Uptime(11)
	check("uptime of 11", up, err, "400.00 700.00\n")
	up, err = v.Uptime(1)
	check("uptime of 1", up, err, "1000.00 3000.00\n")

	pids, err := v.Pids(10)
	if err != nil || !slices.Equal(pids, []int{10, 11}) {
		t.Errorf("pids of 10 = %v, %v (with the sub-cgroup's)", pids, err)
	}
	for _, c := range []struct {
		pid, other int
		want       bool
	}{{10, 11, true}, {11, 10, false}, {11, 11, true}, {10, 1, false}, {1, 10, true}, {10, 12, false}} {
		if got, err := v.Sees(c.pid, c.other); err != nil || got != c.want {
			t.Errorf("Sees(%d, %d) = %v, %v", c.pid, c.other, got, err)
		}
	}
	st, err := v.Status(10)
	check("status of 10", st, err, "Name:\tsh\nPid:\t10\nPPid:\t1\n")
	if _, err := v.Meminfo(12); !os.IsNotExist(err) {
		t.Errorf("meminfo for a pid that does not exist: %v", err)
	}
}
