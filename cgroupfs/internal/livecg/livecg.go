// Package livecg makes real cgroups for the cgroupfs example's tests, runs
// processes inside them, and removes everything when the test ends, even
// when it fails: the processes are killed and the cgroups removed.
package livecg

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/internal/testenv"
)

// The hierarchies of the machines this project runs on (hybrid: memory and
// cpuset on v1, v2 at unified).
const (
	Memory  = "/sys/fs/cgroup/memory"
	Cpuset  = "/sys/fs/cgroup/cpuset"
	Unified = "/sys/fs/cgroup/unified"
)

var seq atomic.Int64

// Name returns a cgroup name no other test (nor another run at the same
// time) uses: cgroupfs-test-<pid>-<n>.
func Name() string {
	return fmt.Sprintf("cgroupfs-test-%d-%d", os.Getpid(), seq.Add(1))
}

// Group is a cgroup a test made.
type Group struct {
	// Mount is the hierarchy's mount point, Dir the cgroup's directory,
	// Path its cgroup path as /proc/PID/cgroup shows it.
	Mount, Dir, Path string
}

// New creates the cgroup rel (a path relative to the hierarchy's root, whose
// parent must exist) in the hierarchy mounted at mount, and writes the
// settings (file, value pairs) into it in order. It is removed when the
// test ends. Without root or without the hierarchy the test stops
// (testenv.Missing: a skip, or a failure under CI).
func New(t testing.TB, mount, rel string, settings ...string) *Group {
	t.Helper()
	testenv.RequireRoot(t, "creating cgroups")
	if _, err := os.Stat(filepath.Join(mount, "cgroup.procs")); err != nil {
		testenv.Missing(t, fmt.Sprintf("no cgroup hierarchy at %s: %v", mount, err))
	}
	g := &Group{Mount: mount, Dir: filepath.Join(mount, rel), Path: "/" + strings.Trim(rel, "/")}
	if err := os.Mkdir(g.Dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() { g.remove(t) })
	for i := 0; i+1 < len(settings); i += 2 {
		g.Set(t, settings[i], settings[i+1])
	}
	return g
}

// Set writes value into the cgroup's file.
func (g *Group) Set(t testing.TB, file, value string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(g.Dir, file), []byte(value), 0); err != nil {
		t.Fatalf("set %s/%s = %q: %v", g.Dir, file, value, err)
	}
}

// remove moves whatever is still in the cgroup to the hierarchy's root and
// removes the directory, retrying for a bounded time: a killed process
// leaves its cgroup a moment after it is reaped.
func (g *Group) remove(t testing.TB) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if data, err := os.ReadFile(filepath.Join(g.Dir, "cgroup.procs")); err == nil {
			for _, pid := range strings.Fields(string(data)) {
				_ = os.WriteFile(filepath.Join(g.Mount, "cgroup.procs"), []byte(pid), 0)
			}
		}
		err := syscall.Rmdir(g.Dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("remove cgroup %s: %v", g.Dir, err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Container makes the cgroups of a container as runtimes do: one name in
// every controller that LXCFS or cgroupfs reads, with 256 MiB of memory
// and one CPU (CPU 0).
func Container(t testing.TB) []*Group {
	name := Name()
	return []*Group{
		New(t, Memory, name, "memory.limit_in_bytes", "268435456"),
		New(t, Cpuset, name, "cpuset.cpus", "0", "cpuset.mems", "0"),
		New(t, "/sys/fs/cgroup/cpuacct", name),
		New(t, "/sys/fs/cgroup/cpu", name),
		New(t, "/sys/fs/cgroup/blkio", name),
	}
}

// Command returns a command that runs argv inside the cgroups: a shell
// writes its own pid into each cgroup's cgroup.procs, then execs argv, so
// argv runs inside from its first instruction. The caller starts it; the
// process is killed when the test ends.
func Command(t testing.TB, groups []*Group, argv ...string) *exec.Cmd {
	t.Helper()
	var script strings.Builder
	for i := range groups {
		fmt.Fprintf(&script, `echo $$ > "$%d/cgroup.procs" || exit 97; `, i+1)
	}
	script.WriteString(`shift ` + strconv.Itoa(len(groups)) + `; exec "$@"`)
	args := []string{"-c", script.String(), "sh"}
	for _, g := range groups {
		args = append(args, g.Dir)
	}
	cmd := exec.Command("/bin/sh", append(args, argv...)...)
	t.Cleanup(func() {
		if cmd.Process != nil && cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}

// Start starts argv inside the cgroups and returns once the process is in
// all of them (bounded: the test fails after 5 s).
func Start(t testing.TB, groups []*Group, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := Command(t, groups, argv...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for !in(pid, groups) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d did not enter its cgroups", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cmd
}

// in reports whether pid is listed in every group's cgroup.procs.
func in(pid int, groups []*Group) bool {
	for _, g := range groups {
		data, err := os.ReadFile(filepath.Join(g.Dir, "cgroup.procs"))
		if err != nil || !contains(strings.Fields(string(data)), strconv.Itoa(pid)) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
