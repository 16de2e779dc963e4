package cgroupfs

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
)

// TestByCgroup: by-cgroup/<path>/ serves a cgroup's files to whoever reads
// them: this test's process (in none of the cgroups) and a reader in
// another cgroup read cgroup a's 256 MiB and one CPU; the directory lists
// the cgroups; a removed cgroup's name is ENOENT, and one made anew under
// the name shows its own figures.
func TestByCgroup(t *testing.T) {
	mnt := serve(t)
	name := livecg.Name()
	mem := livecg.New(t, livecg.Memory, name, "memory.limit_in_bytes", "268435456")
	livecg.New(t, livecg.Cpuset, name, "cpuset.cpus", "0", "cpuset.mems", "0")
	base := filepath.Join(mnt, "by-cgroup", name)
	read := func(rel string) string {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(base, rel))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	if got := memTotal([]byte(read("proc/meminfo"))); got != "MemTotal:         262144 kB" {
		t.Errorf("by-cgroup meminfo: %q", got)
	}
	if got := read("sys/devices/system/cpu/online"); got != "0\n" {
		t.Errorf("by-cgroup online: %q", got)
	}
	if got := read("proc/stat"); !strings.HasPrefix(got, "cpu  ") || strings.Contains(got, "\ncpu1 ") {
		t.Errorf("by-cgroup stat:\n%s", got)
	}
	other := livecg.New(t, livecg.Memory, livecg.Name(), "memory.limit_in_bytes", "134217728")
	r := newReader(t, []*livecg.Group{other}, "cat", filepath.Join(base, "proc/meminfo"), filepath.Join(mnt, "proc/meminfo"))
	race(t, r)
	if lines := strings.Split(r.out.String(), "\n"); !slices.Contains(lines, "MemTotal:         262144 kB") || !slices.Contains(lines, "MemTotal:         131072 kB") {
		t.Errorf("a reader in another cgroup: by-cgroup's and its own meminfo:\n%s", r.out.String())
	}
	entries, err := os.ReadDir(filepath.Join(mnt, "by-cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Contains(names, name) || !slices.Contains(names, "proc") {
		t.Errorf("by-cgroup lists %v, want %s and proc", names, name)
	}
	if _, err := os.Stat(filepath.Join(mnt, "by-cgroup", "no-such-cgroup")); !os.IsNotExist(err) {
		t.Errorf("a cgroup that does not exist: %v", err)
	}
	// Removed, then made anew with 64 MiB.
	if err := os.Remove(mem.Dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(base, "proc/meminfo")); err == nil {
		t.Error("a removed cgroup's meminfo is read")
	}
	again := livecg.New(t, livecg.Memory, name, "memory.limit_in_bytes", "67108864")
	_ = again
	if got := memTotal([]byte(read("proc/meminfo"))); got != "MemTotal:          65536 kB" {
		t.Errorf("the cgroup made anew: %q", got)
	}
}
