package cgroupfs

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
	"github.com/ramproc/ramproc/cgroupfs/procview"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/testenv"
)

// serve mounts the example's tree on a fresh directory, as main does, and
// returns the mount point; it is unmounted when the test ends. The
// directory is one that every user can reach (t.TempDir's parent is 0700).
func serve(t testing.TB) string {
	t.Helper()
	testenv.RequireFUSE(t)
	v, err := procview.New()
	if err != nil {
		t.Fatal(err)
	}
	return serveView(t, v)
}

// serveView is serve with a given view of the cgroups.
func serveView(t testing.TB, v *procview.View) string {
	t.Helper()
	return serveWith(t, v, Options{})
}

// serveWith is serveView with options.
func serveWith(t testing.TB, v *procview.View, o Options) string {
	t.Helper()
	testenv.RequireFUSE(t)
	t.Cleanup(v.Close)
	mnt, err := os.MkdirTemp("", "cgroupfs-mnt")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := fusebridge.Mount(mnt, fusebridge.Options{})
	if err != nil {
		os.Remove(mnt)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		os.Remove(mnt)
	})
	if err := Publish(srv.Root(), v, o); err != nil {
		t.Fatal(err)
	}
	return srv.Mountpoint()
}

// reader is a process started inside its cgroups that waits for the
// release (its stdin closing) before it execs argv, so that several
// readers can read at the same moment. Its pid is argv's pid.
type reader struct {
	cmd         *exec.Cmd
	release     io.Closer
	out, errout bytes.Buffer
}

func newReader(t *testing.T, groups []*livecg.Group, argv ...string) *reader {
	t.Helper()
	r := &reader{}
	r.cmd = livecg.Command(t, groups, append([]string{"sh", "-c", `read _; exec "$@"`, "sh"}, argv...)...)
	stdin, err := r.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	r.release = stdin
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.errout
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Bounded wait until the process is in its cgroups (it moves itself
	// before reading stdin).
	deadline := time.Now().Add(5 * time.Second)
	for !inAll(r.cmd.Process.Pid, groups) {
		if time.Now().After(deadline) {
			t.Fatalf("reader %d did not enter its cgroups", r.cmd.Process.Pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return r
}

func inAll(pid int, groups []*livecg.Group) bool {
	for _, g := range groups {
		data, _ := os.ReadFile(filepath.Join(g.Dir, "cgroup.procs"))
		if !strings.Contains("\n"+string(data), "\n"+strconv.Itoa(pid)+"\n") {
			return false
		}
	}
	return true
}

// race releases the readers together and waits for all of them (bounded:
// a reader still running after 10 s is killed and the test fails).
func race(t *testing.T, readers ...*reader) {
	t.Helper()
	for _, r := range readers {
		r.release.Close()
	}
	for _, r := range readers {
		done := make(chan error, 1)
		go func() { done <- r.cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%v: %v: %s", r.cmd.Args, err, r.errout.Bytes())
			}
		case <-time.After(10 * time.Second):
			r.cmd.Process.Kill()
			<-done
			t.Fatalf("%v did not finish in 10 s", r.cmd.Args)
		}
	}
}

// memTotal is the MemTotal line of a meminfo file.
func memTotal(meminfo []byte) string {
	for _, line := range strings.Split(string(meminfo), "\n") {
		if strings.HasPrefix(line, "MemTotal:") {
			return line
		}
	}
	return ""
}

// TestMeminfo: a reader in a v1 memory cgroup limited to 256 MiB and one in
// an unlimited cgroup read meminfo at the same moment from the same mount;
// each sees its own cgroup's MemTotal, every round. In every other round
// the limited reader is user nobody, as a container's processes are users
// of their own.
func TestMeminfo(t *testing.T) {
	mnt := serve(t)
	limited := livecg.New(t, livecg.Memory, livecg.Name(), "memory.limit_in_bytes", "268435456")
	free := livecg.New(t, livecg.Memory, livecg.Name())
	host, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	hostTotal := memTotal(host)
	file := filepath.Join(mnt, "proc/meminfo")
	for round := 0; round < 5; round++ {
		argv := []string{"cat", file}
		if round%2 == 1 {
			argv = append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}, argv...)
		}
		in := newReader(t, []*livecg.Group{limited}, argv...)
		out := newReader(t, []*livecg.Group{free}, "cat", file)
		race(t, in, out)
		if got := memTotal(in.out.Bytes()); got != "MemTotal:         262144 kB" {
			t.Errorf("round %d, inside: %q, want MemTotal:         262144 kB", round, got)
		}
		if got := memTotal(out.out.Bytes()); got != hostTotal {
			t.Errorf("round %d, outside: %q, want the host's %q", round, got, hostTotal)
		}
		// The limited reader's file has the kernel's fields in the kernel's
		// order.
		if a, b := fieldNames(in.out.Bytes()), fieldNames(host); a != b {
			t.Errorf("fields differ from /proc/meminfo:\n%s\n%s", a, b)
		}
	}
}

func fieldNames(meminfo []byte) string {
	var names []string
	for _, line := range strings.Split(string(meminfo), "\n") {
		if k, _, ok := strings.Cut(line, ":"); ok {
			names = append(names, k)
		}
	}
	return strings.Join(names, " ")
}

// TestCpuset: readers in v1 cpusets limited to CPU 0 (and to CPU 1, where
// there is one) see only their CPUs in online and cpuinfo.
func TestCpuset(t *testing.T) {
	mnt := serve(t)
	hostInfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(strings.TrimSuffix(string(hostInfo), "\n\n"), "\n\n")
	cpus := []int{0}
	if runtime.NumCPU() > 1 && len(blocks) > 1 {
		cpus = append(cpus, 1)
	}
	var readers []*reader
	for _, cpu := range cpus {
		cs := livecg.New(t, livecg.Cpuset, livecg.Name(), "cpuset.cpus", strconv.Itoa(cpu), "cpuset.mems", "0")
		readers = append(readers, newReader(t, []*livecg.Group{cs}, "cat",
			filepath.Join(mnt, "sys/devices/system/cpu/online"), filepath.Join(mnt, "proc/cpuinfo")))
	}
	race(t, readers...)
	for i, cpu := range cpus {
		want := fmt.Sprintf("%d\n%s\n\n", cpu, blocks[cpu])
		if got := readers[i].out.String(); got != want {
			t.Errorf("cpuset %d: online+cpuinfo =\n%s\nwant\n%s", cpu, got, want)
		}
	}
}

// TestUptime: a reader in a fresh cgroup sees the age of the cgroup's
// oldest process (a sleep started first), not the host's uptime.
func TestUptime(t *testing.T) {
	mnt := serve(t)
	g := livecg.New(t, livecg.Memory, livecg.Name())
	initProc := livecg.Start(t, []*livecg.Group{g}, "sleep", "60")
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", initProc.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	st, err := procview.ParseStat(stat)
	if err != nil {
		t.Fatal(err)
	}
	started := time.Duration(st.StartTicks) * 10 * time.Millisecond
	before := hostUptime(t)
	r := newReader(t, []*livecg.Group{g}, "cat", filepath.Join(mnt, "proc/uptime"))
	race(t, r)
	after := hostUptime(t)
	up, idle, err := procview.ParseUptime(r.out.Bytes())
	if err != nil {
		t.Fatalf("%q: %v", r.out.Bytes(), err)
	}
	// Rounding: /proc/uptime and the reply have 10 ms steps; the host's
	// uptime may be a read shared for up to DefaultHostMaxAge.
	slack := 20 * time.Millisecond
	if up < before-started-slack-procview.DefaultHostMaxAge || up > after-started+slack {
		t.Errorf("uptime %v, want between %v and %v (host uptime minus the sleep's start)", up, before-started, after-started)
	}
	if idle < 0 || idle > time.Duration(runtime.NumCPU())*up+slack {
		t.Errorf("idle %v beyond %d CPUs x %v", idle, runtime.NumCPU(), up)
	}
}

func hostUptime(t *testing.T) time.Duration {
	t.Helper()
	data, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	up, _, err := procview.ParseUptime(data)
	if err != nil {
		t.Fatal(err)
	}
	return up
}

// TestSelfAndPids: pids/self names each reader's own pid (two readers at
// the same moment, and this multi-threaded test process, whose reading
// thread is not its main one); pids/<pid>/status exists for the pids of
// the reader's cgroup and is ENOENT for others.
func TestSelfAndPids(t *testing.T) {
	mnt := serve(t)
	self := filepath.Join(mnt, "pids/self")
	a := livecg.New(t, livecg.Memory, livecg.Name())
	b := livecg.New(t, livecg.Memory, livecg.Name())
	sleeperA := livecg.Start(t, []*livecg.Group{a}, "sleep", "60").Process.Pid
	sleeperB := livecg.Start(t, []*livecg.Group{b}, "sleep", "60").Process.Pid

	ra := newReader(t, []*livecg.Group{a}, "readlink", self)
	rb := newReader(t, []*livecg.Group{b}, "readlink", self)
	race(t, ra, rb)
	for _, r := range []*reader{ra, rb} {
		if got, want := strings.TrimSpace(r.out.String()), strconv.Itoa(r.cmd.Process.Pid); got != want {
			t.Errorf("readlink pids/self = %q, want the reader's pid %s", got, want)
		}
	}
	// From another thread than the main one: still the process's pid.
	done := make(chan string)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		target, err := os.Readlink(self)
		if err != nil {
			target = err.Error()
		}
		done <- target
	}()
	if got := <-done; got != strconv.Itoa(os.Getpid()) {
		t.Errorf("readlink pids/self in the test process = %q, want %d", got, os.Getpid())
	}

	// A reader in a sees itself (through self) and a's sleeper, not b's.
	r := newReader(t, []*livecg.Group{a}, "cat", filepath.Join(self, "status"),
		filepath.Join(mnt, "pids", strconv.Itoa(sleeperA), "status"))
	race(t, r)
	got := r.out.String()
	for _, want := range []string{
		"Name:\tcat\n", fmt.Sprintf("\nPid:\t%d\n", r.cmd.Process.Pid), fmt.Sprintf("\nPPid:\t%d\n", os.Getpid()),
		"Name:\tsleep\n", fmt.Sprintf("\nPid:\t%d\n", sleeperA),
	} {
		if !strings.Contains(got, want) {
			t.Errorf("status files lack %q:\n%s", want, got)
		}
	}
	miss := newReader(t, []*livecg.Group{a}, "sh", "-c", `cat "$1" 2>&1; echo "exit $?"`, "sh",
		filepath.Join(mnt, "pids", strconv.Itoa(sleeperB), "status"))
	race(t, miss)
	if out := miss.out.String(); !strings.Contains(out, "No such file or directory") || !strings.HasSuffix(out, "exit 1\n") {
		t.Errorf("status of a pid outside the reader's cgroup: %q, want ENOENT", out)
	}
	ls := newReader(t, []*livecg.Group{b}, "ls", filepath.Join(mnt, "pids"))
	race(t, ls)
	names := strings.Fields(ls.out.String())
	for name, want := range map[string]bool{
		strconv.Itoa(sleeperB): true, strconv.Itoa(ls.cmd.Process.Pid): true, strconv.Itoa(sleeperA): false,
		"self": true,
	} {
		if has := contains(names, name); has != want {
			t.Errorf("ls pids in b: %q listed %v, want %v (listing %v)", name, has, want, names)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// BenchmarkMeminfo: open+read+close of proc/meminfo through the mount
// (per caller: a LOOKUP and an OPEN, the cgroup files read each time),
// next to the kernel's own /proc/meminfo.
func BenchmarkMeminfo(b *testing.B) {
	for _, c := range []struct{ name, path string }{{"cgroupfs", ""}, {"procfs", "/proc/meminfo"}} {
		b.Run(c.name, func(b *testing.B) {
			path := c.path
			if path == "" {
				path = filepath.Join(serve(b), "proc/meminfo")
			}
			buf := make([]byte, 8192)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				f, err := os.Open(path)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := f.Read(buf); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
	}
}

// TestWriteErrnos: writing to the files fails as it does on the kernel's
// own: as root, open(O_WRONLY) of a /proc file succeeds and write(2) fails
// (EIO, or EINVAL for a pid's status), a sysfs file refuses the open
// (EACCES); as user nobody every open for writing is EACCES.
func TestWriteErrnos(t *testing.T) {
	mnt := serve(t)
	pid := strconv.Itoa(os.Getpid())
	for _, c := range []struct{ ours, real string }{
		{"proc/meminfo", "/proc/meminfo"},
		{"proc/cpuinfo", "/proc/cpuinfo"},
		{"proc/uptime", "/proc/uptime"},
		{"proc/stat", "/proc/stat"},
		{"proc/loadavg", "/proc/loadavg"},
		{"proc/diskstats", "/proc/diskstats"},
		{"proc/swaps", "/proc/swaps"},
		{"proc/slabinfo", "/proc/slabinfo"},
		{"pids/" + pid + "/status", "/proc/" + pid + "/status"},
		{"sys/devices/system/cpu/online", "/sys/devices/system/cpu/online"},
	} {
		if got, want := writeErrno(filepath.Join(mnt, c.ours)), writeErrno(c.real); got != want {
			t.Errorf("%s: %s, want %s as %s gives", c.ours, got, want, c.real)
		}
		// As nobody: the shell's message names the errno.
		sh := func(path string) string {
			out, _ := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
				"sh", "-c", `echo x 2>&1 > "$1" || echo " status $?"`, "sh", path).CombinedOutput()
			return strings.ReplaceAll(string(out), path, "FILE")
		}
		if got, want := sh(filepath.Join(mnt, c.ours)), sh(c.real); got != want {
			t.Errorf("%s as nobody: %q, want %q", c.ours, got, want)
		}
	}
}

// writeErrno opens path for writing and writes a byte: "open: errno",
// "write: errno" or "ok".
func writeErrno(path string) string {
	fd, err := syscall.Open(path, syscall.O_WRONLY, 0)
	if err != nil {
		return "open: " + err.Error()
	}
	defer syscall.Close(fd)
	if _, err := syscall.Write(fd, []byte("x")); err != nil {
		return "write: " + err.Error()
	}
	return "ok"
}

// TestPureV2 serves the files as on a machine with only cgroup v2 (the
// view leaves out the v1 hierarchies; v2 here carries no memory or cpuset
// controller, which are bound to v1): membership, the pid list and uptime
// follow the v2 cgroups, and meminfo falls back to the host's file.
func TestPureV2(t *testing.T) {
	v, err := procview.New()
	if err != nil {
		t.Fatal(err)
	}
	if v.Cgroups.Unified == nil {
		testenv.Missing(t, "no cgroup v2 hierarchy is mounted")
	}
	v.Cgroups = &cgroup.Hierarchies{Proc: v.Cgroups.Proc, Unified: v.Cgroups.Unified}
	mnt := serveView(t, v)
	a := livecg.New(t, livecg.Unified, livecg.Name())
	b := livecg.New(t, livecg.Unified, livecg.Name())
	sleeperA := livecg.Start(t, []*livecg.Group{a}, "sleep", "60").Process.Pid
	sleeperB := livecg.Start(t, []*livecg.Group{b}, "sleep", "60").Process.Pid
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", sleeperA))
	if err != nil {
		t.Fatal(err)
	}
	st, err := procview.ParseStat(stat)
	if err != nil {
		t.Fatal(err)
	}
	before := hostUptime(t)
	ls := newReader(t, []*livecg.Group{a}, "ls", filepath.Join(mnt, "pids"))
	up := newReader(t, []*livecg.Group{a}, "cat", filepath.Join(mnt, "proc/uptime"))
	mi := newReader(t, []*livecg.Group{a}, "cat", filepath.Join(mnt, "proc/meminfo"))
	race(t, ls, up, mi)
	after := hostUptime(t)
	names := strings.Fields(ls.out.String())
	for name, want := range map[string]bool{
		strconv.Itoa(sleeperA): true, strconv.Itoa(ls.cmd.Process.Pid): true, strconv.Itoa(sleeperB): false,
	} {
		if has := contains(names, name); has != want {
			t.Errorf("ls pids in v2 cgroup a: %s listed %v, want %v (%v)", name, has, want, names)
		}
	}
	got, _, err := procview.ParseUptime(up.out.Bytes())
	started := time.Duration(st.StartTicks) * 10 * time.Millisecond
	if slack := 20 * time.Millisecond; err != nil || got < before-started-slack-procview.DefaultHostMaxAge || got > after-started+slack {
		t.Errorf("uptime %v (%v), want the age of a's first process, %v to %v", got, err, before-started, after-started)
	}
	host, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	if memTotal(mi.out.Bytes()) != memTotal(host) {
		t.Errorf("meminfo without a memory controller: %q, want the host's %q", memTotal(mi.out.Bytes()), memTotal(host))
	}
}

// TestMeminfoMany: twelve readers in four cgroups (64, 128 and 256 MiB, and
// none) released at once; each gets its own cgroup's MemTotal, never a
// neighbour's, and MemFree and MemAvailable stay within it.
func TestMeminfoMany(t *testing.T) {
	mnt := serve(t)
	host, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(mnt, "proc/meminfo")
	want := map[*livecg.Group]string{}
	var groups []*livecg.Group
	for _, mib := range []int{64, 128, 256, 0} {
		var g *livecg.Group
		if mib == 0 {
			g = livecg.New(t, livecg.Memory, livecg.Name())
			want[g] = memTotal(host)
		} else {
			g = livecg.New(t, livecg.Memory, livecg.Name(), "memory.limit_in_bytes", strconv.Itoa(mib<<20))
			want[g] = fmt.Sprintf("MemTotal:       %8d kB", mib<<10)
		}
		groups = append(groups, g)
	}
	var readers []*reader
	var of []*livecg.Group
	for i := 0; i < 3; i++ {
		for _, g := range groups {
			readers = append(readers, newReader(t, []*livecg.Group{g}, "cat", file))
			of = append(of, g)
		}
	}
	race(t, readers...)
	for i, r := range readers {
		out := r.out.Bytes()
		if got := memTotal(out); got != want[of[i]] {
			t.Errorf("reader %d in %s: %q, want %q", i, of[i].Path, got, want[of[i]])
			continue
		}
		total, _ := procview.MeminfoField(out, "MemTotal")
		free, _ := procview.MeminfoField(out, "MemFree")
		avail, _ := procview.MeminfoField(out, "MemAvailable")
		// (The host's own MemAvailable may be below its MemFree: the
		// kernel subtracts its reserves. A cgroup's is free + reclaimable.)
		if free > total || avail > total || (of[i] != groups[3] && free > avail) {
			t.Errorf("reader %d in %s: MemTotal %d, MemFree %d, MemAvailable %d", i, of[i].Path, total, free, avail)
		}
	}
}
