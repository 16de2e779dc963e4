package cgroupfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
	"github.com/ramproc/ramproc/internal/cgroupfstest"
)

// The side-by-side benchmark: the real LXCFS and the cgroupfs command, each
// a process of its own, serve the same files; readers in a container's
// cgroups (256 MiB, one CPU) open, read to EOF and close one file through
// a bind mount of it, as a container reads its /proc, for a fixed time,
// alternating between the two servers. It reports the rates, the ratio to
// LXCFS and both servers' RSS (logged: -v):
//
//	go test -run '^$' -bench VsLXCFS -benchtime=1x ./cgroupfs

// The test binary is also the readers: started with benchReadEnv set, it
// reads that file in a loop (see benchReader).
const (
	benchReadEnv = "CGROUPFS_BENCH_READ"
	benchForEnv  = "CGROUPFS_BENCH_FOR"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(benchReadEnv); path != "" {
		os.Exit(benchReader(path))
	}
	if path := os.Getenv(restartReadEnv); path != "" {
		os.Exit(restartReader(path))
	}
	if paths := os.Getenv(moveReadEnv); paths != "" {
		os.Exit(moveReader(paths))
	}
	code := m.Run()
	cgroupfstest.RemoveBuilds()
	os.Exit(code)
}

// benchReader waits for its stdin to close (the start signal shared by all
// readers), then opens, reads to EOF and closes path for the time in
// benchForEnv, and prints the number of cycles and the nanoseconds taken.
func benchReader(path string) int {
	d, err := time.ParseDuration(os.Getenv(benchForEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	io.Copy(io.Discard, os.Stdin)
	buf := make([]byte, 64<<10)
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, "open:", err)
			return 1
		}
		for {
			k, err := syscall.Read(fd, buf)
			if err != nil {
				fmt.Fprintln(os.Stderr, "read:", err)
				return 1
			}
			if k == 0 {
				break
			}
		}
		syscall.Close(fd)
		n++
	}
	fmt.Println(n, time.Since(start).Nanoseconds())
	return 0
}

// bind bind-mounts file onto a fresh file in dir and returns its path; it
// is unmounted at the end (before the servers stop: cleanups run last
// first).
func bind(t testing.TB, file, dir, prefix string) string {
	t.Helper()
	target := filepath.Join(dir, prefix+"_"+filepath.Base(file))
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(file, target, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind %s: %v", file, err)
	}
	t.Cleanup(func() { syscall.Unmount(target, syscall.MNT_DETACH) })
	return target
}

// rate runs n readers of path in groups for d and returns their summed
// rate of open+read+close cycles per second, and how many they made.
func rate(t testing.TB, groups []*livecg.Group, path string, n int, d time.Duration) (float64, int64) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	type reader struct {
		cmd   *exec.Cmd
		start io.Closer
		out   bytes.Buffer
		err   bytes.Buffer
	}
	var rs []*reader
	for range n {
		r := &reader{cmd: livecg.Command(t, groups, self)}
		r.cmd.Env = append(os.Environ(), benchReadEnv+"="+path, benchForEnv+"="+d.String())
		r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.err
		if r.start, err = r.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := r.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	// Bounded wait until every reader is in the cgroups.
	deadline := time.Now().Add(10 * time.Second)
	for _, r := range rs {
		for !inAll(r.cmd.Process.Pid, groups) {
			if time.Now().After(deadline) {
				t.Fatalf("reader %d did not enter its cgroups", r.cmd.Process.Pid)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for _, r := range rs {
		r.start.Close()
	}
	total, opens := 0.0, int64(0)
	for _, r := range rs {
		if err := r.cmd.Wait(); err != nil {
			t.Fatalf("reader of %s: %v: %s", path, err, r.err.Bytes())
		}
		var cycles, ns int64
		if _, err := fmt.Sscan(r.out.String(), &cycles, &ns); err != nil || ns <= 0 {
			t.Fatalf("reader of %s printed %q: %v", path, r.out.String(), err)
		}
		total += float64(cycles) / (float64(ns) / 1e9)
		opens += cycles
	}
	return total, opens
}

// cpuTime is the CPU time a process has used (user and system, all its
// threads), from /proc/PID/stat, in clock ticks.
func cpuTime(t testing.TB, pid int) time.Duration {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, data)
	}
	return time.Duration(utime+stime) * (time.Second / 100)
}

// rssKiB is a process's resident set (VmRSS), in KiB.
func rssKiB(t testing.TB, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Fatal(errors.New("no VmRSS"))
	return 0
}

// lxcfsPid finds the pid of the lxcfs serving mnt, from its pid file.
func lxcfsPid(t testing.TB, mnt string) int {
	data, err := os.ReadFile(filepath.Join(filepath.Dir(mnt), "pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// benchFiles are the files both serve.
var benchFiles = []string{"proc/meminfo", "proc/cpuinfo", "proc/stat", "proc/uptime", "proc/loadavg", "proc/diskstats", "proc/swaps", "proc/slabinfo", "sys/devices/system/cpu/online"}

func BenchmarkVsLXCFS(b *testing.B) {
	lx := startLXCFS(b)
	srv := cgroupfstest.Start(b, len(Paths(Options{})))
	ours, ourPid := srv.Mnt, srv.Pid
	lxPid := lxcfsPid(b, lx)
	groups := livecg.Container(b)
	binds := b.TempDir()
	b.Logf("RSS idle: LXCFS %d KiB, cgroupfs %d KiB", rssKiB(b, lxPid), rssKiB(b, ourPid))
	srv.Profile("idle")
	for _, f := range benchFiles {
		paths := []string{bind(b, filepath.Join(lx, f), binds, "lxcfs"), bind(b, filepath.Join(ours, f), binds, "cgroupfs")}
		for _, n := range []int{1, 4} {
			b.Run(fmt.Sprintf("%s/readers=%d", filepath.Base(f), n), func(b *testing.B) { sideBySide(b, groups, paths, []int{lxPid, ourPid}, n) })
		}
	}
	// The per-cgroup view: the container's own cgroup's meminfo, beside
	// LXCFS's meminfo and a tmpfs file of the same content (the speed of a
	// cached file, which the bound's kernel cache aims at).
	view := filepath.Join(ours, "by-cgroup", groups[0].Path, "proc/meminfo")
	paths := []string{bind(b, filepath.Join(lx, "proc/meminfo"), binds, "lxcfs-view"),
		bind(b, view, binds, "cgroupfs-view"), tmpfsCopy(b, view)}
	for _, n := range []int{1, 4} {
		b.Run(fmt.Sprintf("by-cgroup-meminfo/readers=%d", n), func(b *testing.B) { sideBySide(b, groups, paths, []int{lxPid, ourPid}, n) })
	}
	b.Logf("RSS after: LXCFS %d KiB, cgroupfs %d KiB", rssKiB(b, lxPid), rssKiB(b, ourPid))
	srv.Profile("after the runs")
	// 100 cgroups read: each one's files through by-cgroup (its loadavg
	// too, which the sampler then keeps).
	for range 100 {
		g := livecg.New(b, livecg.Memory, livecg.Name(), "memory.limit_in_bytes", "268435456")
		for _, f := range benchFiles {
			if _, err := os.ReadFile(filepath.Join(ours, "by-cgroup", g.Path, f)); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Logf("RSS after 100 cgroups read: cgroupfs %d KiB", rssKiB(b, ourPid))
	srv.Profile("after 100 cgroups")
}

// tmpfsCopy copies file into a tmpfs mounted for the benchmark and returns
// the copy's path; the tmpfs is unmounted at the end.
func tmpfsCopy(b *testing.B, file string) string {
	b.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		b.Fatalf("mount a tmpfs: %v", err)
	}
	b.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	dst := filepath.Join(dir, filepath.Base(file))
	if err := os.WriteFile(dst, data, 0o444); err != nil {
		b.Fatal(err)
	}
	return dst
}

// sideBySide measures n readers of paths[0] (LXCFS) and paths[1] (ours),
// and of paths[2] (a tmpfs file) if given, in five alternating rounds, so
// that a change of load on the machine weighs on all alike, and reports
// the median of each rate and of the rounds' ratios (a burst of other work
// on the machine moves one round, not the median), and the CPU time each
// server (pids: LXCFS's, ours) used per open over all its rounds: the
// figure that load on the machine moves least.
func sideBySide(b *testing.B, groups []*livecg.Group, paths []string, pids []int, n int) {
	const rounds = 5
	var lx, ours, ratio, tmp, tmpRatio []float64
	var cpu [2]time.Duration
	var opens [2]int64
	measure := func(i int) float64 {
		before := cpuTime(b, pids[i])
		r, k := rate(b, groups, paths[i], n, 200*time.Millisecond)
		cpu[i] += cpuTime(b, pids[i]) - before
		opens[i] += k
		return r
	}
	for range rounds {
		a := measure(0)
		c := measure(1)
		lx, ours, ratio = append(lx, a), append(ours, c), append(ratio, c/a)
		if len(paths) > 2 {
			f, _ := rate(b, groups, paths[2], n, 200*time.Millisecond)
			tmp, tmpRatio = append(tmp, f), append(tmpRatio, c/f)
		}
	}
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	b.ReportMetric(median(lx), "lxcfs-opens/s")
	b.ReportMetric(median(ours), "cgroupfs-opens/s")
	b.ReportMetric(median(ratio), "x-lxcfs")
	if len(tmp) > 0 {
		b.ReportMetric(median(tmp), "tmpfs-opens/s")
		b.ReportMetric(median(tmpRatio), "x-tmpfs")
	}
	b.ReportMetric(float64(cpu[0].Microseconds())/float64(max(1, opens[0])), "lxcfs-cpu-us/open")
	b.ReportMetric(float64(cpu[1].Microseconds())/float64(max(1, opens[1])), "cgroupfs-cpu-us/open")
	b.ReportMetric(0, "ns/op")
}
