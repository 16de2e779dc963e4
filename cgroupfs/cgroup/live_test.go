package cgroup_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
)

// The live tests read real cgroups they create (and remove) under the
// machine's hierarchies.

func discover(t *testing.T) *cgroup.Hierarchies {
	t.Helper()
	h, err := cgroup.Discover()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestLiveV1Memory(t *testing.T) {
	parent := livecg.New(t, livecg.Memory, livecg.Name(), "memory.limit_in_bytes", "268435456")
	child := livecg.New(t, livecg.Memory, strings.TrimPrefix(parent.Path, "/")+"/app")
	cmd := livecg.Start(t, []*livecg.Group{child}, "sleep", "60")
	pid := cmd.Process.Pid

	h := discover(t)
	g, err := h.Of(pid)
	if err != nil {
		t.Fatal(err)
	}
	// The process is in the cgroup once its shell has written itself
	// there, maybe before exec has charged the cgroup a page: a usage of 0
	// is read again (bounded).
	var m cgroup.Memory
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		var ok bool
		m, ok, err = g.Memory()
		if err != nil || !ok {
			t.Fatalf("Memory: ok=%v %v", ok, err)
		}
		if m.Usage != 0 || time.Now().After(deadline) {
			break
		}
	}
	if m.V2 || m.Limit != 256<<20 {
		t.Errorf("limit %d (v2 %v), want the parent's 268435456 from v1", m.Limit, m.V2)
	}
	if m.Usage == 0 || m.Usage > 256<<20 {
		t.Errorf("usage %d, want a running sleep's few pages", m.Usage)
	}
	if g.Path() != child.Path || g.IsRoot() {
		t.Errorf("path %q (root %v), want %q", g.Path(), g.IsRoot(), child.Path)
	}
	// From the parent's point of view: the child cgroup's process is a
	// member; the test process is not.
	outer := livecg.Start(t, []*livecg.Group{parent}, "sleep", "60")
	pg, err := h.Of(outer.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	pids, err := pg.Members()
	if want := []int{pid, outer.Process.Pid}; err != nil || !slices.Equal(pids, slices.Sorted(slices.Values(want))) {
		t.Errorf("members %v %v, want %v", pids, err, want)
	}
	for other, want := range map[int]bool{pid: true, outer.Process.Pid: true, os.Getpid(): false} {
		if in, err := pg.Contains(other); err != nil || in != want {
			t.Errorf("Contains(%d) = %v %v, want %v", other, in, err, want)
		}
	}
	if in, _ := g.Contains(outer.Process.Pid); in {
		t.Error("the sub-cgroup contains its parent's process")
	}
}

func TestLiveV1Cpuset(t *testing.T) {
	cs := livecg.New(t, livecg.Cpuset, livecg.Name(), "cpuset.cpus", "0", "cpuset.mems", "0")
	cmd := livecg.Start(t, []*livecg.Group{cs}, "sleep", "60")
	g, err := discover(t).Of(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	set, ok, err := g.CPUs()
	if err != nil || !ok || set.String() != "0" {
		t.Errorf("CPUs = %v %v %v, want 0", set, ok, err)
	}
}

// CpusetOf follows a process that moves between two cpusets (and only
// there), as Of does.
func TestLiveCpusetOfMoves(t *testing.T) {
	a := livecg.New(t, livecg.Cpuset, fmt.Sprintf("cgreq-%d", rand.Uint32()), "cpuset.cpus", "0", "cpuset.mems", "0")
	other := "0"
	if cpus, err := os.ReadFile(filepath.Join(livecg.Cpuset, "cpuset.effective_cpus")); err == nil {
		if set, err := cgroup.ParseCPUList(string(cpus)); err == nil && len(set) > 1 {
			other = strconv.Itoa(set[len(set)-1])
		}
	}
	b := livecg.New(t, livecg.Cpuset, fmt.Sprintf("cgreq-%d", rand.Uint32()), "cpuset.cpus", other, "cpuset.mems", "0")
	cmd := livecg.Start(t, []*livecg.Group{a}, "sleep", "60")
	h := discover(t)
	for i, in := range []*livecg.Group{a, b, a} {
		if i > 0 {
			if err := os.WriteFile(filepath.Join(in.Dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want := map[*livecg.Group]string{a: "0", b: other}[in]
		for _, of := range []func(int) (*cgroup.Group, error){h.Of, h.CpusetOf} {
			g, err := of(cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			if set, ok, err := g.CPUs(); err != nil || !ok || set.String() != want {
				t.Errorf("step %d: CPUs = %v %v %v, want %s (in %s)", i, set, ok, err, want, in.Path)
			}
		}
	}
}

// On this project's machines v2 carries no memory controller (it is bound
// to v1), so the v2 test checks what v2 offers: the path, membership and
// the CPU time, and that memory falls back (ok == false) when v2 is asked.
// Where the v2 root delegates memory, it checks memory.max too.
func TestLiveV2(t *testing.T) {
	g2 := livecg.New(t, livecg.Unified, livecg.Name())
	memoryV2 := false
	if data, err := os.ReadFile(filepath.Join(livecg.Unified, "cgroup.subtree_control")); err == nil {
		memoryV2 = slices.Contains(strings.Fields(string(data)), "memory")
	}
	if memoryV2 {
		g2.Set(t, "memory.max", "268435456")
	} else {
		t.Log("v2 has no memory controller here: memory is checked on v1 only")
	}
	cmd := livecg.Start(t, []*livecg.Group{g2}, "sh", "-c", "while :; do :; done")
	pid := cmd.Process.Pid
	h := discover(t)
	g, err := h.Of(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !g.Membership.HasUnified || g.Membership.Unified != g2.Path {
		t.Errorf("v2 path %q, want %q", g.Membership.Unified, g2.Path)
	}
	// As a pure v2 machine would see it: without the v1 hierarchies.
	pure := &cgroup.Hierarchies{Proc: h.Proc, Unified: h.Unified}
	pg, err := pure.Of(pid)
	if err != nil {
		t.Fatal(err)
	}
	if pg.IsRoot() || pg.Path() != g2.Path {
		t.Errorf("pure v2: path %q, root %v", pg.Path(), pg.IsRoot())
	}
	if pids, err := pg.Members(); err != nil || !slices.Equal(pids, []int{pid}) {
		t.Errorf("pure v2 members %v %v, want [%d]", pids, err, pid)
	}
	m, ok, err := pg.Memory()
	if err != nil || ok != memoryV2 || (memoryV2 && m.Limit != 256<<20) {
		t.Errorf("pure v2 memory = %+v, %v, %v; v2 memory controller: %v", m, ok, err, memoryV2)
	}
	// The busy loop burns CPU in the cgroup: its cpu.stat grows.
	d0, ok, err := pg.CPUTime()
	if err != nil || !ok {
		t.Fatalf("CPUTime: %v %v", ok, err)
	}
	for i := 0; i < 200; i++ {
		d, _, _ := pg.CPUTime()
		if d > d0 {
			return
		}
		time.Sleep(10 * time.Millisecond) // bounded: 200 x 10 ms
	}
	t.Errorf("cpu.stat usage did not grow while the cgroup's process was busy")
}

// TestPin: a Pin answers for the process it was opened for, follows it
// when it moves, and fails once it has exited (never answering for
// another process that takes the pid).
func TestPin(t *testing.T) {
	a := livecg.New(t, livecg.Memory, fmt.Sprintf("cgfour-%d", rand.Uint32()))
	b := livecg.New(t, livecg.Memory, fmt.Sprintf("cgfour-%d", rand.Uint32()))
	cmd := livecg.Start(t, []*livecg.Group{a}, "sleep", "60")
	h := discover(t)
	pin, err := h.Pin(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer pin.Close()
	for _, want := range []*livecg.Group{a, b} {
		if want == b {
			if err := os.WriteFile(filepath.Join(b.Dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		g, err := pin.Group()
		if err != nil || g.Path() != want.Path || g.Pid != cmd.Process.Pid {
			t.Fatalf("Group() = %v, %v; want path %s", g, err, want.Path)
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	if g, err := pin.Group(); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("Group() of an exited process = %v, %v; want ESRCH", g, err)
	}
}
