package cgroupfs

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
	"github.com/ramproc/ramproc/cgroupfs/procview"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/testenv"
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
	// Removed (withdrawn when inotify reports it: until then a read
	// may get content within the bound), then made anew with 64 MiB.
	if err := os.Remove(mem.Dir); err != nil {
		t.Fatal(err)
	}
	waitGone(t, base)
	if _, err := os.ReadFile(filepath.Join(base, "proc/meminfo")); err == nil {
		t.Error("a removed cgroup's meminfo is read")
	}
	again := livecg.New(t, livecg.Memory, name, "memory.limit_in_bytes", "67108864")
	_ = again
	if got := memTotal([]byte(read("proc/meminfo"))); got != "MemTotal:          65536 kB" {
		t.Errorf("the cgroup made anew: %q", got)
	}
}

// waitGone waits until a removed cgroup's directory is withdrawn (the
// inotify event handled), failing after a generous deadline.
func waitGone(t *testing.T, dir string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still there 30s after its cgroup was removed", dir)
		}
	}
}

// TestRequestsPerOpen counts what an open+read+close of a bind-mounted
// file costs: OPEN, READ, the EOF READ and RELEASE for a per-reader file
// (no LOOKUP through the bind, no GETATTR: proc is a static directory, and
// no FLUSH: the bridge refuses it once); by-cgroup's files, read within
// their bound (an hour here), cost none on a mount made by root, which
// serves them from the kernel's cache, and a per-reader file's otherwise.
func TestRequestsPerOpen(t *testing.T) {
	testenv.RequireFUSE(t)
	v, err := procview.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	mnt := t.TempDir()
	m := &fusebridge.Metrics{}
	srv, err := fusebridge.Mount(mnt, fusebridge.Options{Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Unmount() })
	if err := Publish(srv.Root(), v, Options{ByCgroupMaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	g := livecg.New(t, livecg.Memory, "bycgroup-"+livecg.Name(), "memory.limit_in_bytes", "268435456")
	perOpen := map[fusebridge.Op]uint64{fusebridge.OpOpen: 10, fusebridge.OpRead: 20, fusebridge.OpRelease: 10}
	cached := map[fusebridge.Op]uint64{}
	if !srv.HandlersNoOpen() {
		cached = perOpen
	}
	dir := t.TempDir()
	for _, c := range []struct {
		file string
		want map[fusebridge.Op]uint64
	}{
		{"proc/meminfo", perOpen},
		{"by-cgroup/proc/meminfo", cached},
		{"by-cgroup/" + g.Path[1:] + "/proc/meminfo", cached}, // made after Publish
	} {
		target := bind(t, filepath.Join(mnt, c.file), dir, strings.ReplaceAll(c.file, "/", "_"))
		// As a reader does: open, read(2) to EOF, close (os.ReadFile's
		// fstat would ask for fresh attributes). One cycle first: the
		// kernel asks once per connection whether FLUSH is wanted.
		cycle := func() {
			fd, err := syscall.Open(target, syscall.O_RDONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer syscall.Close(fd)
			buf := make([]byte, 64<<10)
			for {
				n, err := syscall.Read(fd, buf)
				if err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					return
				}
			}
		}
		open0, release0 := m.Requests(fusebridge.OpOpen), m.Requests(fusebridge.OpRelease)
		cycle()
		// (A no-open connection answers its first OPEN with ENOSYS, and
		// gets no RELEASE.)
		for i := 0; i < 500 && c.want[fusebridge.OpRelease] > 0 && m.Requests(fusebridge.OpRelease)-release0 < m.Requests(fusebridge.OpOpen)-open0; i++ {
			time.Sleep(10 * time.Millisecond) // RELEASE follows close(2) (bounded wait)
		}
		before := map[fusebridge.Op]uint64{}
		for _, op := range fusebridge.Ops() {
			before[op] = m.Requests(op)
		}
		for range 10 {
			cycle()
		}
		for i := 0; i < 500 && m.Requests(fusebridge.OpRelease)-before[fusebridge.OpRelease] < c.want[fusebridge.OpRelease]; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		for _, op := range fusebridge.Ops() {
			if got := m.Requests(op) - before[op]; got != c.want[op] {
				t.Errorf("%s: %d %s requests for 10 opens, want %d", c.file, got, op, c.want[op])
			}
		}
	}
}
