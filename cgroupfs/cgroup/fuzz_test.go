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
