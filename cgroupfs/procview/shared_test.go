package procview

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
)

// boottime is CLOCK_BOOTTIME, the clock of /proc/uptime.
func boottime() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) // cannot fail for this clock
	return time.Duration(ts.Nano())
}

// TestHostSharedFresh: a host file shared by concurrent readers is never
// older than the bound when a read begins, and no reader sees an older
// content after a newer one. /proc/uptime is the host's clock in
// hundredths of a second: the content tells when it was made.
func TestHostSharedFresh(t *testing.T) {
	v := &View{Proc: "/proc", Sys: "/sys", HostMaxAge: DefaultHostMaxAge}
	errs := make([]error, 4)
	var wg sync.WaitGroup
	wg.Add(len(errs))
	for i := range errs {
		go func() {
			defer wg.Done()
			errs[i] = readUptimes(v, 2000)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Error(err)
	}
}

// readUptimes reads the host's uptime n times through v's shared read and
// checks each against the bound and the one before.
func readUptimes(v *View, n int) error {
	var last time.Duration
	for range n {
		begin := boottime()
		data, _, _, err := v.hostShared("/proc/uptime")
		if err != nil {
			return err
		}
		up, _, err := ParseUptime(data)
		if err != nil {
			return err
		}
		// Made at most the bound before the read began (and /proc/uptime
		// truncates to 10 ms).
		if up < begin-v.HostMaxAge-10*time.Millisecond {
			return fmt.Errorf("uptime %v read at %v: older than the bound %v", up, begin, v.HostMaxAge)
		}
		if up < last {
			return fmt.Errorf("uptime %v after %v: went back", up, last)
		}
		last = up
	}
	return nil
}

// cpuTotal sums the counters of the cpuN line (N = cpu) of a /proc/stat,
// in clock ticks, and returns user+system and idle apart.
func cpuTotal(t *testing.T, stat []byte, cpu int) (total, busy, idle uint64) {
	t.Helper()
	for _, line := range strings.Split(string(stat), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != "cpu"+strconv.Itoa(cpu) {
			continue
		}
		for i, s := range f[1:] {
			n, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			total += n
			switch i {
			case 0, 2:
				busy += n
			case 3:
				idle = n
			}
		}
		return total, busy, idle
	}
	t.Fatalf("no cpu%d line in %q", cpu, stat)
	return 0, 0, 0
}

// usageTicks is a cgroup's user+system time on CPU cpu from
// cpuacct.usage_all, in clock ticks (truncated, as the kernel's are).
func usageTicks(t *testing.T, dir string, cpu int) uint64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "cpuacct.usage_all"))
	if err != nil {
		t.Fatal(err)
	}
	per, err := cgroup.ParseUsageAll(data)
	if err != nil || cpu >= len(per) {
		t.Fatalf("usage_all %q: %v", data, err)
	}
	return clockTicks(per[cpu].User) + clockTicks(per[cpu].System)
}

// TestStatShared: with the host's stat shared among readers (the bound),
// a busy container's cpu0 line still reads as a fresh one: its user and
// system time is the cgroup's at that moment, and its total (idle and
// others' time counted in) is the host's CPU time at that moment, so that
// top's and vmstat's deltas between two reads are right. Each read is
// bracketed by reads of the truth (the host's /proc/stat, the cgroup's
// cpuacct.usage_all); the slack is the tick that a time truncated to ticks
// may differ by on either side, and the host's per-CPU counters, sampled
// at the tick for busy time, against the cgroup's exact time.
func TestStatShared(t *testing.T) {
	name := fmt.Sprintf("cgfour-%d", rand.Uint32())
	groups := []*livecg.Group{
		livecg.New(t, livecg.Memory, name, "memory.limit_in_bytes", "268435456"),
		livecg.New(t, livecg.Cpuset, name, "cpuset.cpus", "0", "cpuset.mems", "0"),
		livecg.New(t, "/sys/fs/cgroup/cpuacct", name),
	}
	busy := livecg.Start(t, groups, "sh", "-c", "while :; do :; done")
	v, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.HostMaxAge <= 0 {
		t.Fatal("New shares no host file")
	}
	const slack = 3
	var lastTotal uint64
	for i := range 200 {
		hostBefore, err := os.ReadFile("/proc/stat")
		if err != nil {
			t.Fatal(err)
		}
		cgBefore := usageTicks(t, groups[2].Dir, 0)
		got, err := v.Stat(busy.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		cgAfter := usageTicks(t, groups[2].Dir, 0)
		hostAfter, err := os.ReadFile("/proc/stat")
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(got, []byte("\ncpu1 ")) {
			t.Fatalf("stat of a one-CPU cpuset shows cpu1:\n%s", got)
		}
		total, cg, _ := cpuTotal(t, got, 0)
		lo, _, _ := cpuTotal(t, hostBefore, 0)
		hi, _, hostIdle := cpuTotal(t, hostAfter, 0)
		if cg+slack < cgBefore || cg > cgAfter+slack {
			t.Errorf("read %d: cpu0 user+system %d, the cgroup's was %d..%d", i, cg, cgBefore, cgAfter)
		}
		// The host's busy time is sampled at the tick, the cgroup's is
		// exact: where the cgroup's is the larger, the line adds up to
		// the host's idle time and the cgroup's.
		if hostUsed := hi - hostIdle; cgAfter > hostUsed {
			hi += cgAfter - hostUsed
		}
		if total+slack < lo || total > hi+slack {
			t.Errorf("read %d: cpu0 total %d ticks, the host's was %d..%d", i, total, lo, hi)
		}
		if total+1 < lastTotal {
			t.Errorf("read %d: cpu0 total %d after %d: went back", i, total, lastTotal)
		}
		lastTotal = max(lastTotal, total)
		if i%50 == 49 {
			time.Sleep(50 * time.Millisecond) // past the bound: a new shared read
		}
	}
}
