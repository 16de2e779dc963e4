package cgroup

import (
	"slices"
	"strings"
	"testing"
)

// The seed corpora run in every `go test`; `go test -fuzz=FuzzX` explores.

func FuzzParseCPUList(f *testing.F) {
	for _, s := range []string{"0", "0-1\n", "0-3,8,10-11", "", "5,5,4-6", "1-", "65535", "0-65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		set, err := ParseCPUList(s)
		if err != nil {
			return
		}
		if !slices.IsSorted(set) || len(slices.Compact(slices.Clone(set))) != len(set) {
			t.Fatalf("%q: %v not sorted and unique", s, set)
		}
		// The formatted list parses back to the same set.
		again, err := ParseCPUList(set.String())
		if err != nil || !slices.Equal(again, set) {
			t.Fatalf("%q: %v formats as %q, which parses to %v, %v", s, set, set.String(), again, err)
		}
	})
}

// FuzzResolveCpuset: a content of /proc/PID/cpuset resolves to the cpuset
// cgroup it names, in the v1 cpuset hierarchy, or is refused; never to a
// directory outside the mount.
func FuzzResolveCpuset(f *testing.F) {
	for _, s := range []string{"/\n", "/a/b\n", "a\n", "/a", "", "/a\n/b\n", "/../..\n", "/a b\n"} {
		f.Add(s)
	}
	h := &Hierarchies{Proc: "/proc", V1: map[string]Mount{"cpuset": {Dir: "/sys/fs/cgroup/cpuset", Root: "/"}}}
	f.Fuzz(func(t *testing.T, s string) {
		pl, err := h.resolveCpuset([]byte(s))
		if err != nil {
			return
		}
		cg, _ := strings.CutSuffix(s, "\n")
		if pl.m.V1["cpuset"] != cg || len(pl.m.V1) != 1 || pl.m.HasUnified {
			t.Fatalf("%q: membership %+v", s, pl.m)
		}
		p := pl.v1["cpuset"]
		if p.ok && p.p.dir != h.V1["cpuset"].Dir && !strings.HasPrefix(p.p.dir, h.V1["cpuset"].Dir+"/") {
			t.Fatalf("%q: resolved to %s, outside the mount", s, p.p.dir)
		}
	})
}

func FuzzParseProcCgroup(f *testing.F) {
	f.Add("9:name=systemd:/\n4:memory:/a/b\n2:cpu,cpuacct:/x\n0::/\n")
	f.Add("0::/user.slice/a:b\n")
	f.Add("1:memory\n")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseProcCgroup([]byte(s))
		if err != nil {
			return
		}
		for c, p := range m.V1 {
			if c == "" || !strings.HasPrefix(p, "/") {
				t.Fatalf("%q: controller %q path %q", s, c, p)
			}
		}
		if m.HasUnified && !strings.HasPrefix(m.Unified, "/") {
			t.Fatalf("%q: unified path %q", s, m.Unified)
		}
		// Resolving any parsed path against a mount never panics and stays
		// inside the mount.
		for _, p := range m.V1 {
			if pl, ok := at(Mount{Dir: "/m", Root: "/r"}, p, false); ok && !strings.HasPrefix(pl.dir, "/m") {
				t.Fatalf("%q: %q resolved outside the mount: %q", s, p, pl.dir)
			}
		}
	})
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add(hybridMountinfo)
	f.Add("30 1 0:26 /ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
	f.Add("30 1 0:26 / /x\\0 rw - cgroup cgroup\n")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseMountinfo([]byte(s))
		if err != nil {
			return
		}
		for c := range h.V1 {
			if isOption(c) {
				t.Fatalf("%q: option %q taken for a controller", s, c)
			}
		}
	})
}

func FuzzParseStat(f *testing.F) {
	f.Add(v1Stat, false)
	f.Add("anon 1024\nfile 2048\nslab_reclaimable 1\n", true)
	f.Add("anon x\n", true)
	f.Fuzz(func(t *testing.T, s string, v2 bool) {
		st, err := ParseStat([]byte(s), v2)
		if err != nil {
			return
		}
		if !v2 && (st.Slab != 0 || st.Zswap != 0) {
			t.Fatalf("%q: v1 has no slab or zswap figures, got %+v", s, st)
		}
	})
}

func FuzzParseLimit(f *testing.F) {
	for _, s := range []string{"max\n", "9223372036854771712\n", "268435456\n", "-1", " 12 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseLimit([]byte(s))
		if err == nil && n != NoLimit && n >= v1Unlimited {
			t.Fatalf("%q: %d is above the unlimited threshold", s, n)
		}
	})
}

func FuzzParseUsageAll(f *testing.F) {
	f.Add("cpu user system\n0 38934641127 16777843563\n1 44365770942 20510219986\n")
	f.Add("cpu user system\n")
	f.Add("cpu user system\n0 1 99999999999999999999\n")
	f.Fuzz(func(t *testing.T, s string) {
		per, err := ParseUsageAll([]byte(s))
		if err != nil {
			return
		}
		for i, c := range per {
			if c.User < 0 || c.System < 0 {
				t.Fatalf("%q: cpu %d negative %+v", s, i, c)
			}
		}
	})
}

func FuzzParseBlkio(f *testing.F) {
	f.Add("8:0 Read 10\n8:0 Write 20\n8:0 Total 30\nTotal 30\n")
	f.Add("Total 0\n")
	f.Add("8:0 Read\n")
	f.Fuzz(func(t *testing.T, s string) {
		_ = ParseBlkio([]byte(s), func(d Dev, op string, n uint64) {
			if op == "" {
				t.Fatalf("%q: empty op", s)
			}
		})
	})
}

func FuzzParseIOStat(f *testing.F) {
	f.Add("8:16 rbytes=512 wbytes=1024 rios=1 wios=2 dbytes=0 dios=0\n")
	f.Add("254:0 rbytes=1 cost.vrate=100.00\n")
	f.Add("x:y rbytes=1\n")
	f.Fuzz(func(t *testing.T, s string) {
		stats, err := ParseIOStat([]byte(s))
		if err == nil && len(stats) > len(s) {
			t.Fatalf("%q: %d devices", s, len(stats))
		}
	})
}
