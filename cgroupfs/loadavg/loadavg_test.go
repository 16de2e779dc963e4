package loadavg

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestCalc: the kernel's fixed-point steps: a constant load of n tasks
// approaches n; no task decays toward 0.
func TestCalc(t *testing.T) {
	var l uint64
	for range 12 * 15 { // 15 minutes of 5 s samples
		l = calc(l, exp1, 2)
	}
	if got := string(Format(Load{Avg: [3]uint64{l, 0, fixed1 / 2}, Running: 2, Total: 5, Last: 99})); got != "2.00 0.00 0.50 2/5 99\n" {
		t.Errorf("Format = %q", got)
	}
	for range 12 * 15 {
		l = calc(l, exp1, 0)
	}
	if l > fixed1/100 {
		t.Errorf("after 15 idle minutes the 1-minute load is %d/%d", l, fixed1)
	}
}

// TestFormat: Format writes what the kernel's "%lu.%02lu ... %u/%d %d\n"
// does, for averages from 0 to past 1000 and every fraction.
func TestFormat(t *testing.T) {
	for a := uint64(0); a < 1100*fixed1; a += 97 {
		l := Load{Avg: [3]uint64{a, a / 3, a * 7 % (5 * fixed1)}, Running: int(a % 13), Total: int(a % 1000), Last: int(a)}
		want := ""
		for _, v := range l.Avg {
			v += fixed1 / 200
			want += fmt.Sprintf("%d.%02d ", v>>fshift, ((v&(fixed1-1))*100)>>fshift)
		}
		want += fmt.Sprintf("%d/%d %d\n", l.Running, l.Total, l.Last)
		if got := string(Format(l)); got != want {
			t.Fatalf("Format(%+v) = %q, want %q", l, got, want)
		}
	}
}

// TestSampler: on a fixture cgroup with three tasks (one running, one in
// D, one sleeping) in two processes, one in a sub-cgroup, the first read is
// zeros, each sample folds 2 runnable tasks in, a sampler restored from its
// Loads goes on from the same figures, and a cgroup left empty is dropped.
func TestSampler(t *testing.T) {
	root := t.TempDir()
	write := func(name, content string) {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stat := func(pid int, state string) string {
		return fmt.Sprintf("%d (a (b) c) %s 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n", pid, state)
	}
	cg := filepath.Join(root, "cg")
	write("cg/cgroup.procs", "10\n")
	write("cg/sub/cgroup.procs", "20\n")
	write("proc/10/task/10/stat", stat(10, "R"))
	write("proc/10/task/11/stat", stat(11, "S"))
	write("proc/20/task/20/stat", stat(20, "D"))
	s := &Sampler{Proc: filepath.Join(root, "proc")}
	defer s.Close()
	if got := s.Read(cg, 10); got != (Load{Total: 1, Last: 10}) {
		t.Errorf("first read %+v, want zeros with the reader", got)
	}
	for range 3 {
		if n := s.Sample(); n != 1 {
			t.Fatalf("%d cgroups sampled, want 1", n)
		}
	}
	want := calc(calc(calc(0, exp1, 2), exp1, 2), exp1, 2)
	if got := s.Read(cg, 10); got.Avg[0] != want || got.Running != 2 || got.Total != 3 || got.Last != 20 {
		t.Errorf("after 3 samples %+v, want 1-minute %d, 2/3 running, last 20", got, want)
	}
	// A restarted server's sampler takes the figures over and goes on
	// folding from them, not from zero.
	next := &Sampler{Proc: filepath.Join(root, "proc")}
	defer next.Close()
	next.Restore(s.Loads())
	if got := next.Read(cg, 10); got != s.Read(cg, 10) {
		t.Errorf("restored %+v, want the predecessor's %+v", got, s.Read(cg, 10))
	}
	if n := next.Sample(); n != 1 {
		t.Fatalf("restored sampler samples %d cgroups, want 1", n)
	}
	if got := next.Read(cg, 10); got.Avg[0] != calc(want, exp1, 2) {
		t.Errorf("restored sampler's next 1-minute load %d, want %d", got.Avg[0], calc(want, exp1, 2))
	}
	write("cg/cgroup.procs", "")
	write("cg/sub/cgroup.procs", "")
	if n := s.Sample(); n != 0 {
		t.Errorf("an empty cgroup is still sampled (%d)", n)
	}
}

func FuzzState(f *testing.F) {
	f.Add("1 (init) S 0")
	f.Add("1 (a) b) R 0")
	f.Add(")")
	f.Add("1 (x)")
	f.Fuzz(func(t *testing.T, s string) {
		State([]byte(s)) // never panics
	})
}
