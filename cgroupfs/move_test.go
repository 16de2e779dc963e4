package cgroupfs

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
)

// moveReadEnv makes the test binary the reader of TestReaderMoves
// (moveReader).
const moveReadEnv = "CGROUPFS_MOVE_READ"

// moveReader reads meminfo and online (the two paths in moveReadEnv) at
// each line of its stdin and prints MemTotal and the CPU list, all from
// one thread: every read is made by the same task, whatever cgroup it has
// been moved to meanwhile.
func moveReader(paths string) int {
	runtime.LockOSThread()
	meminfo, online, _ := strings.Cut(paths, "\n")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		mem, err := os.ReadFile(meminfo)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		cpus, err := os.ReadFile(online)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		fmt.Printf("%s\nonline %s", memTotal(mem), cpus)
	}
	return 0
}

// TestReaderMoves: a process that keeps reading moves between two cgroups
// the test makes (256 MiB and CPU 0; 128 MiB and CPU 1, where there is
// one), and back: each read after a move shows the cgroup it is in now,
// never the one it has left (the server keeps the reader's
// /proc/TID/cgroup open and what its content means, see cgroup.Of).
func TestReaderMoves(t *testing.T) {
	mnt := serve(t)
	cpuB := "0"
	if runtime.NumCPU() > 1 {
		cpuB = "1"
	}
	a := []*livecg.Group{
		livecg.New(t, livecg.Memory, livecg.Name(), "memory.limit_in_bytes", "268435456"),
		livecg.New(t, livecg.Cpuset, livecg.Name(), "cpuset.cpus", "0", "cpuset.mems", "0"),
	}
	b := []*livecg.Group{
		livecg.New(t, livecg.Memory, livecg.Name(), "memory.limit_in_bytes", "134217728"),
		livecg.New(t, livecg.Cpuset, livecg.Name(), "cpuset.cpus", cpuB, "cpuset.mems", "0"),
	}
	cmd := livecg.Command(t, a, os.Args[0])
	cmd.Env = append(os.Environ(), moveReadEnv+"="+filepath.Join(mnt, "proc/meminfo")+"\n"+filepath.Join(mnt, "sys/devices/system/cpu/online"))
	h := piped(t, cmd)
	pid := cmd.Process.Pid
	read := func() (string, string) {
		t.Helper()
		if _, err := fmt.Fprintln(h.stdin); err != nil {
			t.Fatal(err)
		}
		return h.line(), h.line()
	}
	moveTo := func(groups []*livecg.Group) {
		t.Helper()
		for _, g := range groups {
			g.Set(t, "cgroup.procs", strconv.Itoa(pid))
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !inAll(pid, a) {
		if time.Now().After(deadline) {
			t.Fatalf("reader %d did not enter its cgroups", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	want := map[bool][2]string{
		true:  {"MemTotal:         262144 kB", "online 0"},
		false: {"MemTotal:         131072 kB", "online " + cpuB},
	}
	inA := true
	for round := range 6 {
		// Twice in each cgroup: the second read is one the server may
		// answer from what it kept of the first.
		for range 2 {
			if mem, online := read(); mem != want[inA][0] || online != want[inA][1] {
				t.Errorf("round %d, in %s: %q, %q; want %q", round, map[bool]string{true: "a", false: "b"}[inA], mem, online, want[inA])
			}
		}
		inA = !inA
		moveTo(map[bool][]*livecg.Group{true: a, false: b}[inA])
	}
	if rest := h.finish(); rest != "" {
		t.Errorf("the reader's last words: %q", rest)
	}
}
