package cgroup

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// TestUsage: v1 cpuacct.usage_all gives per-CPU user and system time (and
// usage_percpu, all user, where it is missing); v2 cpu.stat the totals;
// the root cgroup gives none (the host's /proc/stat is its figures).
func TestUsage(t *testing.T) {
	h, _ := fixture(t, []string{"cpuacct"}, true, map[string]string{
		"proc/1/cgroup":                  "2:cpuacct:/a\n0::/b\n",
		"proc/2/cgroup":                  "2:cpuacct:/c\n0::/b\n",
		"proc/3/cgroup":                  "2:cpuacct:/\n0::/b\n",
		"proc/4/cgroup":                  "0::/b\n",
		"cpuacct/a/cpuacct.usage_all":    "cpu user system\n0 1000000000 20000000\n1 5 0\n",
		"cpuacct/c/cpuacct.usage_percpu": "30000000 0 \n",
		"unified/b/cpu.stat":             "usage_usec 300\nuser_usec 200\nsystem_usec 100\n",
	})
	for pid, want := range map[int]*CPUUsage{
		1: {PerCPU: []CPUTimes{{time.Second, 20 * time.Millisecond}, {5, 0}}, Total: CPUTimes{time.Second + 5, 20 * time.Millisecond}},
		2: {PerCPU: []CPUTimes{{30 * time.Millisecond, 0}, {}}, Total: CPUTimes{30 * time.Millisecond, 0}},
		3: nil,
		4: {Total: CPUTimes{200 * time.Microsecond, 100 * time.Microsecond}},
	} {
		g, err := h.Of(pid)
		if err != nil {
			t.Fatal(err)
		}
		u, ok, err := g.Usage()
		if err != nil || ok != (want != nil) || (want != nil && !reflect.DeepEqual(u, *want)) {
			t.Errorf("pid %d: %+v %v %v, want %+v", pid, u, ok, err, want)
		}
	}
}

// TestIO: v1 reads the CFQ counters and adds service and wait times (and
// has none with the throttle counters alone); v2 reads io.stat.
func TestIO(t *testing.T) {
	h, _ := fixture(t, []string{"blkio"}, true, map[string]string{
		"proc/1/cgroup":                            "7:blkio:/a\n0::/\n",
		"proc/2/cgroup":                            "0::/b\n",
		"blkio/blkio.io_serviced_recursive":        "Total 0\n",
		"blkio/a/blkio.io_serviced_recursive":      "8:0 Read 10\n8:0 Write 20\n8:0 Sync 30\n8:0 Async 0\n8:0 Discard 1\n8:0 Total 31\nTotal 31\n",
		"blkio/a/blkio.io_service_bytes_recursive": "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\nTotal 12288\n",
		"blkio/a/blkio.io_service_time_recursive":  "8:0 Read 2000000\n8:0 Write 3000000\n8:0 Total 5000000\nTotal 5000000\n",
		"blkio/a/blkio.io_wait_time_recursive":     "8:0 Read 1000000\nTotal 1000000\n",
		"unified/b/io.stat":                        "8:16 rbytes=512 wbytes=1024 rios=1 wios=2 dbytes=0 dios=0 cost.vrate=100.00\n",
	})
	g, _ := h.Of(1)
	io, ok, err := g.IO()
	want := IOStat{Reads: 10, Writes: 20, Discards: 1, ReadBytes: 4096, WrittenBytes: 8192,
		ReadTime: 3 * time.Millisecond, WriteTime: 3 * time.Millisecond, TotalTime: 5 * time.Millisecond}
	if err != nil || !ok || io[Dev{8, 0}] != want || len(io) != 1 {
		t.Errorf("v1: %+v %v %v, want %+v", io, ok, err, want)
	}
	throttle, _ := fixture(t, []string{"blkio"}, false, map[string]string{
		"proc/3/cgroup": "7:blkio:/t\n",
		"blkio/blkio.throttle.io_serviced_recursive":   "Total 10\n",
		"blkio/t/blkio.throttle.io_serviced_recursive": "8:0 Read 10\nTotal 10\n",
	})
	g, _ = throttle.Of(3)
	if io, ok, err := g.IO(); ok || err != nil {
		t.Errorf("v1 with throttle counters only: %+v %v %v, want none", io, ok, err)
	}
	g, _ = h.Of(2)
	io, ok, err = g.IO()
	if want := (IOStat{Reads: 1, Writes: 2, ReadBytes: 512, WrittenBytes: 1024}); err != nil || !ok || io[Dev{8, 16}] != want {
		t.Errorf("v2: %+v %v %v, want %+v", io, ok, err, want)
	}
}

// TestPressureAndSlabinfo: PSI comes from the v2 cgroup (none in the v2
// root: the host's); slabinfo from v1 memory (none on v2).
func TestPressureAndSlabinfo(t *testing.T) {
	h, _ := fixture(t, []string{"memory"}, true, map[string]string{
		"proc/1/cgroup":                  "4:memory:/a\n0::/b\n",
		"proc/2/cgroup":                  "4:memory:/\n0::/\n",
		"unified/b/cpu.pressure":         "some avg10=1.00 avg60=0.00 avg300=0.00 total=5\n",
		"memory/a/memory.kmem.slabinfo":  "slabinfo - version: 2.1\n",
		"memory/a/memory.usage_in_bytes": "1\n",
	})
	g, _ := h.Of(1)
	if data, ok, err := g.Pressure("cpu"); err != nil || !ok || string(data) != "some avg10=1.00 avg60=0.00 avg300=0.00 total=5\n" {
		t.Errorf("cpu.pressure: %q %v %v", data, ok, err)
	}
	if _, _, err := g.Pressure("disk"); err == nil {
		t.Error("an unknown resource is read")
	}
	if data, ok, err := g.Slabinfo(); err != nil || !ok || string(data) != "slabinfo - version: 2.1\n" {
		t.Errorf("slabinfo: %q %v %v", data, ok, err)
	}
	g, _ = h.Of(2)
	if _, ok, err := g.Pressure("cpu"); ok || err != nil {
		t.Errorf("the v2 root's pressure: ok %v %v, want the host's", ok, err)
	}
	if _, ok, err := g.Slabinfo(); ok || err != nil {
		t.Errorf("the root's slabinfo: ok %v %v, want the host's", ok, err)
	}
}

// TestRemoved: a cgroup removed after /proc/PID/cgroup was read gives
// ErrRemoved, never its parent's figures (which a missing file in an
// existing v2 cgroup does give: the controller is not enabled there).
func TestRemoved(t *testing.T) {
	h, _ := fixture(t, []string{"memory"}, true, map[string]string{
		"proc/1/cgroup":                "4:memory:/gone\n0::/gone\n",
		"memory/memory.usage_in_bytes": "1\n",
		"memory/memory.stat":           "total_cache 1\n",
		"unified/cpu.stat":             "usage_usec 1\nuser_usec 1\nsystem_usec 0\n",
		"unified/cpu.pressure":         "some avg10=0.00 avg60=0.00 avg300=0.00 total=1\n",
	})
	g, _ := h.Of(1)
	if m, _, err := g.Memory(); !errors.Is(err, ErrRemoved) {
		t.Errorf("Memory of a removed cgroup: %+v, %v; want ErrRemoved", m, err)
	}
	if _, _, err := g.Usage(); !errors.Is(err, ErrRemoved) {
		t.Errorf("Usage: %v, want ErrRemoved", err)
	}
	if _, _, err := g.Pressure("cpu"); !errors.Is(err, ErrRemoved) {
		t.Errorf("Pressure: %v, want ErrRemoved", err)
	}
	if _, err := MembersOf(h.V1["memory"].Dir + "/gone"); err == nil {
		t.Error("MembersOf a removed cgroup: no error")
	}
}

func TestParseUsageAll(t *testing.T) {
	per, err := ParseUsageAll([]byte("cpu user system\n0 1 2\n1 3 4\n"))
	if err != nil || !reflect.DeepEqual(per, []CPUTimes{{1, 2}, {3, 4}}) {
		t.Errorf("%v %v", per, err)
	}
	for _, bad := range []string{"", "0 1 2\n", "cpu user system\n1 1 2\n", "cpu user system\n0 1\n", "cpu user system\n0 -1 2\n"} {
		if _, err := ParseUsageAll([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestAt: the Group of a cgroup path takes the path in every hierarchy
// that has it, the root in the others; a path the home hierarchy lacks is
// not a Group.
func TestAt(t *testing.T) {
	h, _ := fixture(t, []string{"memory", "cpuset"}, true, map[string]string{
		"memory/a/memory.usage_in_bytes": "1\n",
		"cpuset/cpuset.cpus":             "0-1\n",
	})
	g, ok := h.At("/a")
	if !ok || g.Membership.V1["memory"] != "/a" || g.Membership.V1["cpuset"] != "/" || g.Membership.Unified != "/" || g.Path() != "/a" {
		t.Errorf("At(/a) = %+v, %v", g, ok)
	}
	if _, ok := h.At("/b"); ok {
		t.Error("At a path that no hierarchy has")
	}
}
