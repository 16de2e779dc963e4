package cgroupfs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
	"github.com/ramproc/ramproc/cgroupfs/procview"
	"github.com/ramproc/ramproc/internal/testenv"
)

// startLXCFS runs the real LXCFS (Debian's lxcfs 5.0.3, with -l as the
// loadavg peer) in the foreground on a fresh directory, and returns the
// mount point; it is stopped and unmounted when the test ends. Without
// lxcfs the test is skipped (failed under CI, whose .ci/run installs it).
func startLXCFS(t testing.TB) string {
	t.Helper()
	testenv.RequireFUSE(t)
	bin, err := exec.LookPath("lxcfs")
	if err != nil {
		testenv.Missing(t, "lxcfs is not installed (apt-get install lxcfs): the comparison needs the real LXCFS")
	}
	// LXCFS keeps its runtime directory (/run/lxcfs) after it exits:
	// remove it at the end if this test made it.
	_, statErr := os.Stat("/run/lxcfs")
	ranBefore := statErr == nil
	dir, err := os.MkdirTemp("", "cgroupfs-lxcfs")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	// A pid file of its own: the default, /run/lxcfs.pid, is locked by a
	// system LXCFS where one runs.
	cmd := exec.Command(bin, "-f", "-l", "-p", filepath.Join(dir, "pid"), mnt)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// Killed: on SIGTERM it waits out its loadavg thread's 5 s sleep.
		// The mount it leaves is detached.
		cmd.Process.Kill()
		<-exited
		if len(testenv.MountsUnder(t, mnt)) > 0 {
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
		os.RemoveAll(dir)
		if !ranBefore {
			os.Remove("/run/lxcfs/controllers")
			os.Remove("/run/lxcfs/root")
			os.Remove("/run/lxcfs")
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(mnt, "proc/meminfo")); err == nil {
			return mnt
		}
		select {
		case <-exited:
			t.Fatalf("lxcfs exited: %s", log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("lxcfs did not mount in 20 s: %s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// compared are the files the comparison reads from both mounts.
var compared = []string{"proc/meminfo", "proc/cpuinfo", "proc/stat", "proc/loadavg", "proc/swaps", "proc/diskstats", "sys/devices/system/cpu/online"}

// TestAgainstLXCFS: a reader in a container's cgroups reads each file from
// the real LXCFS and from cgroupfs, one right after the other, and the
// figures agree field by field: MemTotal, MemFree (within the usage that
// moves between the two reads), SwapTotal, cpuinfo's processor list, the
// cpu lines of stat (user and system within a few ticks, idle within the
// host's idle time that passes between the reads), online; loadavg, swaps
// and diskstats have the same line formats. The differences that remain
// are in the README's table.
func TestAgainstLXCFS(t *testing.T) {
	lx := startLXCFS(t)
	ours := serve(t)
	groups := livecg.Container(t)
	var script strings.Builder
	for _, f := range compared {
		fmt.Fprintf(&script, `cat "$1/%s"; echo @@; cat "$2/%s"; echo @@; `, f, f)
	}
	r := newReader(t, groups, "sh", "-c", script.String(), "sh", lx, ours)
	race(t, r)
	parts := strings.Split(r.out.String(), "@@\n")
	if len(parts) != 2*len(compared)+1 {
		t.Fatalf("reader output %q", r.out.String())
	}
	got := map[string][2]string{}
	for i, f := range compared {
		got[f] = [2]string{parts[2*i], parts[2*i+1]}
	}

	mem := got["proc/meminfo"]
	field := func(i int, name string) int64 {
		v, ok := procview.MeminfoField([]byte(mem[i]), name)
		if !ok {
			t.Errorf("no %s in %q", name, mem[i])
		}
		return int64(v)
	}
	for _, name := range []string{"MemTotal", "SwapTotal"} {
		if a, b := field(0, name), field(1, name); a != b {
			t.Errorf("%s: LXCFS %d kB, cgroupfs %d kB", name, a, b)
		}
	}
	if a, b := field(0, "MemTotal"), field(1, "MemTotal"); a != 262144 || b != 262144 {
		t.Errorf("MemTotal %d and %d kB, want 262144", a, b)
	}
	// The reader's shell and cats allocate between the reads: allow 4 MiB.
	if a, b := field(0, "MemFree"), field(1, "MemFree"); a-b > 4096 || b-a > 4096 {
		t.Errorf("MemFree: LXCFS %d kB, cgroupfs %d kB", a, b)
	}

	processors := func(s string) []string {
		var l []string
		for _, line := range strings.Split(s, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "processor" {
				l = append(l, strings.TrimSpace(v))
			}
		}
		return l
	}
	if a, b := processors(got["proc/cpuinfo"][0]), processors(got["proc/cpuinfo"][1]); !slices.Equal(a, b) || len(a) != 1 {
		t.Errorf("cpuinfo processors: LXCFS %v, cgroupfs %v, want one", a, b)
	}
	if a, b := got["sys/devices/system/cpu/online"][0], got["sys/devices/system/cpu/online"][1]; a != b || a != "0\n" {
		t.Errorf("online: LXCFS %q, cgroupfs %q", a, b)
	}

	cpuLines := func(s string) map[string][]int64 {
		m := map[string][]int64{}
		for _, line := range strings.Split(s, "\n") {
			f := strings.Fields(line)
			if len(f) == 11 && strings.HasPrefix(f[0], "cpu") {
				for _, v := range f[1:] {
					n, _ := strconv.ParseInt(v, 10, 64)
					m[f[0]] = append(m[f[0]], n)
				}
			}
		}
		return m
	}
	a, b := cpuLines(got["proc/stat"][0]), cpuLines(got["proc/stat"][1])
	if len(a) != 2 || len(b) != 2 || a["cpu0"] == nil || b["cpu0"] == nil {
		t.Errorf("stat cpu lines: LXCFS %v, cgroupfs %v, want cpu and cpu0", a, b)
	}
	for name, la := range a {
		lb := b[name]
		for i := range min(len(la), len(lb)) {
			// user (0) and system (2) move by the reader's few ticks; idle
			// (3) by the host's idle time between the reads (under load,
			// up to a second of it).
			tol := int64(5)
			if i == 3 {
				tol = 100
			}
			if d := la[i] - lb[i]; d > tol || -d > tol {
				t.Errorf("stat %s field %d: LXCFS %d, cgroupfs %d", name, i+1, la[i], lb[i])
			}
		}
	}

	loadavgRE := regexp.MustCompile(`^\d+\.\d\d \d+\.\d\d \d+\.\d\d \d+/\d+ \d+\n$`)
	for i, who := range []string{"LXCFS", "cgroupfs"} {
		if l := got["proc/loadavg"][i]; !loadavgRE.MatchString(l) {
			t.Errorf("%s loadavg %q", who, l)
		}
		sw := strings.Split(strings.TrimSuffix(got["proc/swaps"][i], "\n"), "\n")
		if !strings.HasPrefix(sw[0], "Filename\t") {
			t.Errorf("%s swaps header %q", who, sw[0])
		}
		for _, line := range sw[1:] {
			if f := strings.Fields(line); len(f) != 5 || f[0] != "none" || f[1] != "virtual" {
				t.Errorf("%s swaps line %q", who, line)
			}
		}
		for _, line := range strings.Split(strings.TrimSuffix(got["proc/diskstats"][i], "\n"), "\n") {
			if f := strings.Fields(line); line != "" && (len(f) < 14 || len(f) > 20) {
				t.Errorf("%s diskstats line %q", who, line)
			}
		}
	}
	if a, b := len(strings.Split(got["proc/swaps"][0], "\n")), len(strings.Split(got["proc/swaps"][1], "\n")); a != b {
		t.Errorf("swaps: LXCFS %d lines, cgroupfs %d", a, b)
	}
	if a, b := len(strings.Split(got["proc/diskstats"][0], "\n")), len(strings.Split(got["proc/diskstats"][1], "\n")); a != b {
		t.Errorf("diskstats: LXCFS %d lines, cgroupfs %d", a, b)
	}
	if t.Failed() {
		for _, f := range compared {
			t.Logf("%s\n--- LXCFS:\n%s--- cgroupfs:\n%s", f, got[f][0], got[f][1])
		}
	}
}
