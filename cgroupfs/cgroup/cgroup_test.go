package cgroup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// hybridMountinfo is this project's machines' layout: memory and cpuset
// (and others) on v1, v2 at /sys/fs/cgroup/unified.
const hybridMountinfo = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:40 / /mnt/with\040space rw - cgroup cgroup rw,pids
`

func TestParseMountinfo(t *testing.T) {
	h, err := ParseMountinfo([]byte(hybridMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
		"cpuset": "/sys/fs/cgroup/cpuset", "memory": "/sys/fs/cgroup/memory",
		"name=systemd": "/sys/fs/cgroup/systemd", "pids": "/mnt/with space",
	}
	got := map[string]string{}
	for c, m := range h.V1 {
		got[c] = m.Dir
		if m.Root != "/" {
			t.Errorf("%s: root %q", c, m.Root)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("v1 = %v, want %v", got, want)
	}
	if h.Unified == nil || h.Unified.Dir != "/sys/fs/cgroup/unified" {
		t.Errorf("unified = %+v", h.Unified)
	}

	pure, err := ParseMountinfo([]byte("30 1 0:26 /ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"))
	if err != nil || pure.Unified == nil || pure.Unified.Root != "/ctr" || len(pure.V1) != 0 {
		t.Errorf("pure v2: %+v, %v", pure, err)
	}
	if _, err := ParseMountinfo([]byte("30 1 0:26 / /x rw cgroup2\n")); err == nil {
		t.Error("a line without the - separator parsed")
	}
}

func TestParseProcCgroup(t *testing.T) {
	m, err := ParseProcCgroup([]byte("9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"name=systemd": "/", "memory": "/process_api/abc", "cpu": "/x", "cpuacct": "/x"}
	if !reflect.DeepEqual(m.V1, want) || !m.HasUnified || m.Unified != "/" {
		t.Errorf("got %+v", m)
	}
	m, err = ParseProcCgroup([]byte("0::/user.slice/a b:c\n"))
	if err != nil || m.Unified != "/user.slice/a b:c" || len(m.V1) != 0 {
		t.Errorf("v2 with a colon in the path: %+v, %v", m, err)
	}
	for _, bad := range []string{"garbage\n", "x:memory:/a\n", "1:memory:relative\n", "1:memory\n"} {
		if _, err := ParseProcCgroup([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// tree writes files (path -> content) under dir.
func tree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// fixture lays out a fake /proc and cgroup mounts under a temp dir:
// v1 controllers get a dir each, v2 gets "unified".
func fixture(t *testing.T, v1 []string, unified bool, files map[string]string) (*Hierarchies, string) {
	t.Helper()
	root := t.TempDir()
	h := &Hierarchies{Proc: filepath.Join(root, "proc"), V1: map[string]Mount{}}
	for _, c := range v1 {
		h.V1[c] = Mount{Dir: filepath.Join(root, c), Root: "/"}
	}
	if unified {
		h.Unified = &Mount{Dir: filepath.Join(root, "unified"), Root: "/"}
	}
	tree(t, root, files)
	return h, root
}

const v1Stat = `cache 1
rss 2
total_cache 4096000
total_rss 2048000
total_rss_huge 0
total_shmem 1024
total_mapped_file 8192
total_dirty 4096
total_writeback 0
total_swap 1048576
total_inactive_anon 1000000
total_active_anon 1048000
total_inactive_file 3000000
total_active_file 1096000
total_unevictable 0
hierarchical_memory_limit 268435456
`

func TestMemoryV1(t *testing.T) {
	// With the kernel's hierarchical_memory_limit, and without it (the
	// ancestors' limit files are read then).
	for _, stat := range []string{v1Stat, strings.Replace(v1Stat, "hierarchical_memory_limit 268435456\n", "", 1)} {
		testMemoryV1(t, stat)
	}
}

func testMemoryV1(t *testing.T, stat string) {
	h, _ := fixture(t, []string{"memory", "cpuset"}, true, map[string]string{
		"proc/100/cgroup":                            "4:memory:/ctr/sub\n3:cpuset:/\n0::/\n",
		"memory/memory.limit_in_bytes":               "9223372036854771712\n",
		"memory/memory.usage_in_bytes":               "999999999\n",
		"memory/memory.stat":                         "total_cache 1\n",
		"memory/ctr/memory.limit_in_bytes":           "268435456\n",
		"memory/ctr/memory.usage_in_bytes":           "1\n",
		"memory/ctr/memory.stat":                     "total_cache 2\n",
		"memory/ctr/memory.memsw.limit_in_bytes":     "9223372036854771712\n",
		"memory/ctr/sub/memory.limit_in_bytes":       "9223372036854771712\n",
		"memory/ctr/sub/memory.usage_in_bytes":       "104857600\n",
		"memory/ctr/sub/memory.stat":                 v1Stat,
		"memory/ctr/sub/memory.memsw.limit_in_bytes": "536870912\n",
		"memory/ctr/sub/memory.swappiness":           "60\n",
		"memory/memory.memsw.limit_in_bytes":         "9223372036854771712\n",
	})
	g, err := h.Of(100)
	if err != nil {
		t.Fatal(err)
	}
	m, ok, err := g.Memory()
	if err != nil || !ok {
		t.Fatalf("Memory: %v %v", ok, err)
	}
	if m.V2 || m.Limit != 256<<20 || m.Usage != 100<<20 {
		t.Errorf("v2 %v, limit %d (want the parent's 256 MiB), usage %d", m.V2, m.Limit, m.Usage)
	}
	want := Stat{File: 4096000, Anon: 2048000, Shmem: 1024, FileMapped: 8192, Dirty: 4096,
		InactiveAnon: 1000000, ActiveAnon: 1048000, InactiveFile: 3000000, ActiveFile: 1096000}
	if m.Stat != want {
		t.Errorf("stat %+v, want %+v (the total_ figures)", m.Stat, want)
	}
	if m.Swap == nil || m.Swap.Limit != 512<<20 || m.Swap.Usage != 1<<20 || m.Swap.Swappiness != 60 {
		t.Errorf("swap %+v, want limit 512 MiB, usage 1 MiB (total_swap), swappiness 60", m.Swap)
	}
	if g.IsRoot() || g.Path() != "/ctr/sub" {
		t.Errorf("IsRoot %v, Path %q", g.IsRoot(), g.Path())
	}
}

func TestMemoryV2(t *testing.T) {
	h, _ := fixture(t, []string{"cpuset"}, true, map[string]string{
		"proc/7/cgroup": "3:cpuset:/\n0::/ctr/sub/leaf\n",
		// memory is enabled in ctr and sub, not in leaf: leaf is
		// accounted in sub.
		"unified/memory.stat":                 "anon 1\n",
		"unified/ctr/memory.max":              "1073741824\n",
		"unified/ctr/memory.current":          "5\n",
		"unified/ctr/memory.stat":             "anon 5\n",
		"unified/ctr/memory.swap.max":         "max\n",
		"unified/ctr/sub/memory.max":          "max\n",
		"unified/ctr/sub/memory.current":      "52428800\n",
		"unified/ctr/sub/memory.stat":         "anon 1024\nfile 2048\nkernel 9\nslab_reclaimable 100\nslab_unreclaimable 200\nanon_thp 0\nfile_dirty 3\n",
		"unified/ctr/sub/memory.swap.max":     "104857600\n",
		"unified/ctr/sub/memory.swap.current": "4096\n",
		"unified/ctr/sub/leaf/cgroup.procs":   "7\n",
	})
	g, err := h.Of(7)
	if err != nil {
		t.Fatal(err)
	}
	m, ok, err := g.Memory()
	if err != nil || !ok {
		t.Fatalf("Memory: %v %v", ok, err)
	}
	if !m.V2 || m.Limit != 1<<30 || m.Usage != 50<<20 {
		t.Errorf("v2 %v, limit %d (want ctr's 1 GiB), usage %d (want sub's)", m.V2, m.Limit, m.Usage)
	}
	want := Stat{Anon: 1024, File: 2048, SlabReclaimable: 100, SlabUnreclaimable: 200, Slab: 300, Dirty: 3}
	if m.Stat != want {
		t.Errorf("stat %+v, want %+v", m.Stat, want)
	}
	if m.Swap == nil || m.Swap.Limit != 100<<20 || m.Swap.Usage != 4096 || m.Swap.Swappiness != -1 {
		t.Errorf("swap %+v", m.Swap)
	}
	if g.Path() != "/ctr/sub/leaf" {
		t.Errorf("path %q: on a machine with memory in v2 the v2 path is home", g.Path())
	}
}

func TestMemoryAbsent(t *testing.T) {
	// v2 root: no memory.current there; and no hierarchy at all.
	h, _ := fixture(t, nil, true, map[string]string{
		"proc/1/cgroup":            "0::/\n",
		"proc/2/cgroup":            "0::/ctr\n",
		"unified/memory.stat":      "anon 1\n",
		"unified/ctr/cgroup.procs": "2\n",
	})
	for _, pid := range []int{1, 2} {
		g, err := h.Of(pid)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok, err := g.Memory(); ok || err != nil {
			t.Errorf("pid %d: memory ok=%v err=%v, want not found (memory controller not enabled)", pid, ok, err)
		}
		if _, ok, err := g.CPUs(); ok || err != nil {
			t.Errorf("pid %d: cpus ok=%v err=%v, want not found", pid, ok, err)
		}
	}
	if _, err := h.Of(3); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Of(vanished pid) = %v, want ErrNotExist", err)
	}
	none := &Hierarchies{Proc: h.Proc}
	g, err := none.Of(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := g.Memory(); ok || !g.IsRoot() {
		t.Errorf("no hierarchies: memory found, or not root")
	}
}

func TestMemoryMalformed(t *testing.T) {
	h, _ := fixture(t, []string{"memory"}, false, map[string]string{
		"proc/5/cgroup":                  "4:memory:/a\n",
		"memory/a/memory.usage_in_bytes": "12\n",
		"memory/a/memory.limit_in_bytes": "lots\n",
		"memory/a/memory.stat":           "total_cache 1\n",
	})
	g, err := h.Of(5)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := g.Memory(); err == nil || !strings.Contains(err.Error(), "memory.limit_in_bytes") {
		t.Errorf("a malformed limit gave %v, want an error naming the file", err)
	}
}

func TestPartialMount(t *testing.T) {
	// A container given /ctr of the memory hierarchy at its mount point.
	h, root := fixture(t, []string{"memory"}, false, map[string]string{
		"proc/5/cgroup":                    "4:memory:/ctr/app\n",
		"proc/6/cgroup":                    "4:memory:/other\n",
		"memory/app/memory.usage_in_bytes": "12\n",
		"memory/app/memory.limit_in_bytes": "4096\n",
		"memory/app/memory.stat":           "total_cache 1\n",
	})
	h.V1["memory"] = Mount{Dir: filepath.Join(root, "memory"), Root: "/ctr"}
	g, _ := h.Of(5)
	if m, ok, err := g.Memory(); err != nil || !ok || m.Limit != 4096 {
		t.Errorf("inside the mount's root: %+v %v %v", m, ok, err)
	}
	g, _ = h.Of(6)
	if _, ok, err := g.Memory(); ok || err != nil {
		t.Errorf("outside the mount's root: ok=%v err=%v, want not found", ok, err)
	}
}

func TestCPUs(t *testing.T) {
	h, _ := fixture(t, []string{"cpuset"}, true, map[string]string{
		"proc/1/cgroup":                  "3:cpuset:/a\n0::/b\n",
		"cpuset/a/cpuset.cpus":           "0-7\n",
		"cpuset/a/cpuset.effective_cpus": "2-3,5\n",
		"proc/2/cgroup":                  "3:cpuset:/old\n0::/\n",
		"cpuset/old/cpuset.cpus":         "1\n",
	})
	for pid, want := range map[int]string{1: "2-3,5", 2: "1"} {
		g, _ := h.Of(pid)
		set, ok, err := g.CPUs()
		if err != nil || !ok || set.String() != want {
			t.Errorf("pid %d: %v %v %v, want %s", pid, set, ok, err, want)
		}
	}
	v2, _ := fixture(t, nil, true, map[string]string{
		"proc/1/cgroup":                   "0::/a/b\n",
		"unified/cpuset.cpus.effective":   "0-3\n",
		"unified/a/cpuset.cpus.effective": "1-2\n",
		"unified/a/b/cgroup.procs":        "1\n", // b has no cpuset of its own
	})
	g, _ := v2.Of(1)
	if set, ok, err := g.CPUs(); err != nil || !ok || set.String() != "1-2" {
		t.Errorf("v2: %v %v %v, want a's 1-2", set, ok, err)
	}
}

// CpusetOf reads /proc/PID/cpuset where cpuset is on v1, and is Of where
// it cannot (no such file, no v1 cpuset); a malformed content is an error,
// never another cgroup's CPUs.
func TestCpusetOf(t *testing.T) {
	h, _ := fixture(t, []string{"cpuset", "memory"}, true, map[string]string{
		"proc/1/cgroup":                    "4:memory:/m\n3:cpuset:/a\n0::/b\n",
		"proc/1/cpuset":                    "/a\n",
		"cpuset/a/cpuset.effective_cpus":   "2-3,5\n",
		"proc/2/cgroup":                    "3:cpuset:/old\n0::/\n", // no cpuset file: Of
		"cpuset/old/cpuset.effective_cpus": "1\n",
		"proc/3/cgroup":                    "3:cpuset:/a\n0::/\n",
		"proc/3/cpuset":                    "a\n",
	})
	for pid, want := range map[int]string{1: "2-3,5", 2: "1"} {
		g, err := h.CpusetOf(pid)
		if err != nil {
			t.Fatalf("pid %d: %v", pid, err)
		}
		set, ok, err := g.CPUs()
		if err != nil || !ok || set.String() != want {
			t.Errorf("pid %d: %v %v %v, want %s", pid, set, ok, err, want)
		}
	}
	if g, err := h.CpusetOf(3); err == nil {
		t.Errorf("malformed /proc/3/cpuset: got %+v, want an error", g.Membership)
	}
	if _, err := h.CpusetOf(4); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no process 4: %v, want ErrNotExist", err)
	}
	v2, _ := fixture(t, nil, true, map[string]string{
		"proc/1/cgroup":                   "0::/a\n",
		"proc/1/cpuset":                   "/elsewhere\n", // not read: v2 has all on one line
		"unified/a/cpuset.cpus.effective": "1-2\n",
	})
	g, _ := v2.CpusetOf(1)
	if set, ok, err := g.CPUs(); err != nil || !ok || set.String() != "1-2" {
		t.Errorf("v2: %v %v %v, want 1-2", set, ok, err)
	}
}

func TestCPUTime(t *testing.T) {
	h, _ := fixture(t, []string{"cpuacct"}, true, map[string]string{
		"proc/1/cgroup":           "2:cpuacct:/a\n0::/b\n",
		"proc/2/cgroup":           "0::/b\n",
		"cpuacct/a/cpuacct.usage": "1500000000\n",
		"unified/b/cpu.stat":      "usage_usec 2500000\nuser_usec 1\n",
	})
	for pid, want := range map[int]time.Duration{1: 1500 * time.Millisecond, 2: 2500 * time.Millisecond} {
		g, _ := h.Of(pid)
		if d, ok, err := g.CPUTime(); err != nil || !ok || d != want {
			t.Errorf("pid %d: %v %v %v, want %v", pid, d, ok, err, want)
		}
	}
}

func TestMembers(t *testing.T) {
	h, _ := fixture(t, []string{"memory"}, true, map[string]string{
		"proc/10/cgroup":                    "4:memory:/ctr\n0::/\n",
		"proc/11/cgroup":                    "4:memory:/ctr/sub\n0::/\n",
		"proc/12/cgroup":                    "4:memory:/ctrl\n0::/\n",
		"proc/13/cgroup":                    "4:memory:/\n0::/\n",
		"memory/cgroup.procs":               "1\n13\n",
		"memory/ctr/cgroup.procs":           "10\n",
		"memory/ctr/sub/cgroup.procs":       "11\n",
		"memory/ctr/sub/empty/cgroup.procs": "",
		"memory/ctrl/cgroup.procs":          "12\n",
	})
	g, _ := h.Of(10)
	pids, err := g.Members()
	if err != nil || !slices.Equal(pids, []int{10, 11}) {
		t.Errorf("members %v %v, want [10 11] (with the sub-cgroup's)", pids, err)
	}
	for pid, want := range map[int]bool{10: true, 11: true, 12: false, 13: false, 99: false} {
		if in, err := g.Contains(pid); err != nil || in != want {
			t.Errorf("Contains(%d) = %v %v, want %v", pid, in, err, want)
		}
	}
	root, _ := h.Of(13)
	if !root.IsRoot() {
		t.Error("pid 13 in / is not root")
	}
	pids, err = root.Members()
	if err != nil || !slices.Equal(pids, []int{10, 11, 12, 13}) {
		t.Errorf("root members %v %v, want every pid in proc", pids, err)
	}
	if in, _ := root.Contains(12); !in {
		t.Error("root does not contain 12")
	}
}

func TestParseCPUList(t *testing.T) {
	for in, want := range map[string]string{
		"0": "0", "0-1\n": "0-1", "3,1,2": "1-3", "0-3,8,10-11": "0-3,8,10-11", "": "", "5,5,4-6": "4-6",
	} {
		set, err := ParseCPUList(in)
		if err != nil || set.String() != want {
			t.Errorf("%q: %v %v, want %q", in, set, err, want)
		}
	}
	for _, bad := range []string{"a", "1-", "-1", "3-1", "1,,2", "01", "+1", "0-99999999", "1 2"} {
		if _, err := ParseCPUList(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	set, _ := ParseCPUList("1,3")
	if !set.Contains(3) || set.Contains(2) {
		t.Error("Contains")
	}
}

func TestParseLimit(t *testing.T) {
	for in, want := range map[string]uint64{"max\n": NoLimit, "9223372036854771712\n": NoLimit, "268435456\n": 256 << 20, "0": 0} {
		if got, err := ParseLimit([]byte(in)); err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", in, got, err, want)
		}
	}
	if _, err := ParseLimit([]byte("-1")); err == nil {
		t.Error("-1 parsed")
	}
}
