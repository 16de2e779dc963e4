package cgroupfs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
	"github.com/ramproc/ramproc/cgroupfs/loadavg"
	"github.com/ramproc/ramproc/cgroupfs/procview"
	"github.com/ramproc/ramproc/internal/testenv"
)

// The live tests of the files beyond meminfo, cpuinfo and uptime: readers
// in real cgroups the tests make, through a real mount.

// usageTicks reads the cgroup's cpuacct.usage_all as clock ticks per CPU
// (user and system each truncated, as /proc/stat's are).
func usageTicks(t *testing.T, g *livecg.Group) []uint64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(g.Dir, "cpuacct.usage_all"))
	if err != nil {
		t.Fatal(err)
	}
	per, err := cgroup.ParseUsageAll(data)
	if err != nil {
		t.Fatal(err)
	}
	var ticks []uint64
	for _, c := range per {
		ticks = append(ticks, uint64(c.User/(10*time.Millisecond)+c.System/(10*time.Millisecond)))
	}
	return ticks
}

// TestStat: a reader in a one-CPU cpuset and a cpuacct cgroup of its own,
// where a busy loop has run, sees one cpuN line, its CPU's, whose user +
// system time is the cgroup's (between two readings of cpuacct.usage_all
// around the read), and a sum line equal to it; the other lines are the
// host's kinds in the host's order.
func TestStat(t *testing.T) {
	mnt := serve(t)
	name := livecg.Name()
	cs := livecg.New(t, livecg.Cpuset, name, "cpuset.cpus", "0", "cpuset.mems", "0")
	acct := livecg.New(t, "/sys/fs/cgroup/cpuacct", name)
	busy := livecg.Start(t, []*livecg.Group{cs, acct}, "sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
	if err := busy.Wait(); err != nil {
		t.Fatal(err)
	}
	before := usageTicks(t, acct)
	r := newReader(t, []*livecg.Group{cs, acct}, "cat", filepath.Join(mnt, "proc/stat"))
	race(t, r)
	after := usageTicks(t, acct)
	lines := strings.Split(r.out.String(), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "cpu  ") || !strings.HasPrefix(lines[1], "cpu0 ") || strings.HasPrefix(lines[2], "cpu") {
		t.Fatalf("want the sum line and cpu0 only:\n%s", r.out.String())
	}
	f := strings.Fields(lines[1])
	user, _ := strconv.ParseUint(f[1], 10, 64)
	system, _ := strconv.ParseUint(f[3], 10, 64)
	if user+system < before[0] || user+system > after[0] || user+system == 0 {
		t.Errorf("cpu0 user+system %d, want the cgroup's %d..%d", user+system, before[0], after[0])
	}
	if strings.Join(f[1:], " ") != strings.Join(strings.Fields(lines[0])[1:], " ") {
		t.Errorf("the sum line %q is not cpu0's %q", lines[0], lines[1])
	}
	host, _ := os.ReadFile("/proc/stat")
	var hostKinds, kinds []string
	for _, l := range strings.Split(string(host), "\n") {
		if k, _, _ := strings.Cut(l, " "); k != "" && !strings.HasPrefix(k, "cpu") {
			hostKinds = append(hostKinds, k)
		}
	}
	for _, l := range lines[2:] {
		if k, _, _ := strings.Cut(l, " "); k != "" {
			kinds = append(kinds, k)
		}
	}
	if strings.Join(kinds, " ") != strings.Join(hostKinds, " ") {
		t.Errorf("other lines %v, want the host's %v", kinds, hostKinds)
	}
}

// TestLoadavg: two busy loops in a memory cgroup; a reader's first read
// registers the cgroup (zeros), and after three samples (taken by the test,
// not a timer) it reads the kernel's fixed-point average of 2 runnable
// tasks, 2/2 tasks and the highest task id.
func TestLoadavg(t *testing.T) {
	v, err := procview.New()
	if err != nil {
		t.Fatal(err)
	}
	v.Load = &loadavg.Sampler{Proc: "/proc", Interval: time.Hour}
	mnt := serveView(t, v)
	g := livecg.New(t, livecg.Memory, livecg.Name())
	a := livecg.Start(t, []*livecg.Group{g}, "sh", "-c", "while :; do :; done")
	b := livecg.Start(t, []*livecg.Group{g}, "sh", "-c", "while :; do :; done")
	file := filepath.Join(mnt, "proc/loadavg")
	r := newReader(t, []*livecg.Group{g}, "cat", file)
	race(t, r)
	if want := fmt.Sprintf("0.00 0.00 0.00 0/1 %d\n", r.cmd.Process.Pid); r.out.String() != want {
		t.Errorf("first read %q, want %q", r.out.String(), want)
	}
	for range 3 {
		v.Load.Sample()
	}
	r = newReader(t, []*livecg.Group{g}, "cat", file)
	race(t, r)
	var avg [3]uint64
	for i, e := range []uint64{1884, 2014, 2037} {
		for range 3 {
			// The kernel's calc_load with 2 active tasks.
			n := avg[i]*e + 2*2048*(2048-e)
			if 2*2048 >= avg[i] {
				n += 2047
			}
			avg[i] = n / 2048
		}
	}
	want := string(loadavg.Format(loadavg.Load{Avg: avg, Running: 2, Total: 2, Last: max(a.Process.Pid, b.Process.Pid)}))
	if r.out.String() != want {
		t.Errorf("after 3 samples %q, want %q", r.out.String(), want)
	}
	// Outside any cgroup of its own (this test's process): the host's.
	if got, _ := os.ReadFile(file); len(strings.Fields(string(got))) != 5 {
		t.Errorf("host loadavg %q", got)
	}
}

// TestPressure: a reader in a v2 cgroup reads its cgroup's cpu.pressure
// (its total between two readings of the cgroup's file around the read);
// a reader in the v2 root, the host's /proc/pressure format.
func TestPressure(t *testing.T) {
	mnt := serve(t)
	g := livecg.New(t, livecg.Unified, livecg.Name())
	if _, err := os.Stat(filepath.Join(g.Dir, "cpu.pressure")); err != nil {
		testenv.Missing(t, "no cpu.pressure in v2 cgroups (PSI off)")
	}
	total := func(data []byte) uint64 {
		_, v, _ := strings.Cut(strings.Fields(string(data))[4], "=")
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		return n
	}
	for _, res := range []string{"cpu", "io", "memory"} {
		before, err := os.ReadFile(filepath.Join(g.Dir, res+".pressure"))
		if err != nil {
			t.Fatal(err)
		}
		r := newReader(t, []*livecg.Group{g}, "cat", filepath.Join(mnt, "proc/pressure", res))
		race(t, r)
		after, _ := os.ReadFile(filepath.Join(g.Dir, res+".pressure"))
		got := r.out.Bytes()
		if !bytes.HasPrefix(got, []byte("some avg10=")) || !bytes.Contains(got, []byte("\nfull avg10=")) ||
			total(got) < total(before) || total(got) > total(after) {
			t.Errorf("%s: %q, want the cgroup's (%q .. %q)", res, got, before, after)
		}
	}
	host, _ := os.ReadFile("/proc/pressure/cpu")
	got, err := os.ReadFile(filepath.Join(mnt, "proc/pressure/cpu"))
	if err != nil || len(strings.Fields(string(got))) != len(strings.Fields(string(host))) {
		t.Errorf("root's pressure %q %v, want the host's format %q", got, err, host)
	}
}

// TestSwapsSlabinfoDiskstats: a reader in a 256 MiB memory cgroup and a
// blkio cgroup of its own sees swaps with the host's header and its
// cgroup's swap (none without swap on the host), slabinfo as the kernel
// keeps it for the cgroup (on kernels since 5.9 its header only), and
// diskstats lines of the host's devices only.
func TestSwapsSlabinfoDiskstats(t *testing.T) {
	mnt := serve(t)
	name := livecg.Name()
	mem := livecg.New(t, livecg.Memory, name, "memory.limit_in_bytes", "268435456")
	blk := livecg.New(t, "/sys/fs/cgroup/blkio", name)
	r := newReader(t, []*livecg.Group{mem, blk}, "sh", "-c", `cat "$1/swaps"; echo ==; cat "$1/slabinfo"; echo ==; cat "$1/diskstats"`, "sh", filepath.Join(mnt, "proc"))
	race(t, r)
	parts := strings.Split(r.out.String(), "==\n")
	if len(parts) != 3 {
		t.Fatalf("output %q", r.out.String())
	}
	hostSwaps, _ := os.ReadFile("/proc/swaps")
	header, _, _ := strings.Cut(string(hostSwaps), "\n")
	if !strings.HasPrefix(parts[0], header+"\n") {
		t.Errorf("swaps %q, want the host's header %q", parts[0], header)
	}
	hostMem, _ := os.ReadFile("/proc/meminfo")
	if sw, _ := procview.MeminfoField(hostMem, "SwapTotal"); sw == 0 && parts[0] != header+"\n" {
		t.Errorf("swaps without swap on the host: %q", parts[0])
	}
	hostSlab, _ := os.ReadFile("/proc/slabinfo")
	kernel, _ := os.ReadFile(filepath.Join(mem.Dir, "memory.kmem.slabinfo"))
	if len(kernel) == 0 {
		kernel = procview.SlabinfoHeader(hostSlab)
	}
	if parts[1] != string(kernel) {
		t.Errorf("slabinfo %q, want %q", parts[1], kernel)
	}
	hostDisks, _ := os.ReadFile("/proc/diskstats")
	for _, l := range strings.Split(strings.TrimSuffix(parts[2], "\n"), "\n") {
		f := strings.Fields(l)
		if l == "" {
			continue
		}
		if len(f) < 14 || !strings.Contains(string(hostDisks), fmt.Sprintf("%4s %7s %s ", f[0], f[1], f[2])) {
			t.Errorf("diskstats line %q is not of a host device", l)
		}
	}
}

// TestOptions: noloadavg leaves proc/loadavg out; noswap shows a confined
// reader no swap.
func TestOptions(t *testing.T) {
	v, err := procview.New()
	if err != nil {
		t.Fatal(err)
	}
	mnt := serveWith(t, v, Options{NoLoadavg: true, NoSwap: true})
	if _, err := os.Stat(filepath.Join(mnt, "proc/loadavg")); !os.IsNotExist(err) {
		t.Errorf("proc/loadavg with noloadavg: %v", err)
	}
	g := livecg.New(t, livecg.Memory, livecg.Name(), "memory.limit_in_bytes", "268435456")
	r := newReader(t, []*livecg.Group{g}, "cat", filepath.Join(mnt, "proc/meminfo"))
	race(t, r)
	if sw, ok := procview.MeminfoField(r.out.Bytes(), "SwapTotal"); !ok || sw != 0 {
		t.Errorf("SwapTotal with noswap: %d %v", sw, ok)
	}
}
