package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/internal/testenv"
)

// testBaselineEnv makes the test binary serve the baseline instead of
// running tests: the tests' stand-in for "ramproc bench --serve-baseline".
const testBaselineEnv = "RAMPROC_BENCH_TEST_SERVE_BASELINE"

func TestMain(m *testing.M) {
	if mnt := os.Getenv(testLibEnv); mnt != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		serve := ServeLib
		switch os.Getenv(testLibEnv + "_KIND") {
		case "gofuse-tree":
			serve = ServeGoFuseTree
		case "lib-perop":
			serve = ServeLibPerOpen
		}
		err := serve(ctx, mnt, testLibFiles, os.Stdout)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if mnt := os.Getenv(testBaselineEnv); mnt != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		err := ServeBaseline(ctx, mnt, os.Stdout)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	testenv.RemoveBuilds()
	os.Exit(code)
}

// testLibEnv makes the test binary serve a library section server: the
// tests' stand-in for "ramproc bench --serve-lib".
const testLibEnv = "RAMPROC_BENCH_TEST_SERVE_LIB"

// testLibFiles is the tests' tree size: small, the shape is what counts.
const testLibFiles = 300

func testLibCommand(kind, mnt string, treeFiles int) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), testLibEnv+"="+mnt, testLibEnv+"_KIND="+kind)
	return cmd
}

// TestLibSection runs the library section alone, briefly, and checks the
// shape of its rows: every peer that has a figure in a row has a positive
// one, each goal is checked, and the oldest content lib-gen-fresh read is
// reported. libfuse3-dev's hello_ll.c and a C compiler are prerequisites.
func TestLibSection(t *testing.T) {
	testenv.RequireFUSE(t)
	if _, err := os.Stat(HelloLLSource); err != nil {
		testenv.Missing(t, HelloLLSource+" is missing (apt-get install libfuse3-dev gcc pkg-config)")
	}
	o := QuickOptions()
	o.Workloads = []string{LibWorkload}
	o.LibCommand = testLibCommand
	o.LibTreeFiles = testLibFiles
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	// The age check is a benchmark's verdict, which a loaded machine may
	// move (fusebridge's TestFreshBound tests the bound); anything else
	// that failed is a failure here.
	for _, n := range rep.Notes {
		if !strings.HasPrefix(n, "lib-gen-fresh: a read returned content") {
			t.Errorf("the library section failed: %s", n)
		}
	}
	want := map[string][]string{
		"lib-gen-fresh":    {TargetTmpfs, PeerHelloLL, PeerLib},
		"lib-gen-perop":    {TargetTmpfs, PeerHelloLL, PeerGoFuse, PeerLib},
		"lib-gen-perop-pt": {TargetTmpfs, PeerHelloLL, PeerLib},
		"lib-percaller":    {TargetTmpfs, PeerHelloLL, PeerGoFuse, PeerLib},
		"lib-gofuse-hello": {TargetTmpfs, PeerHelloLL, PeerGoFuse},
		"lib-tree-catall":  {TargetTmpfs, PeerGoFuse, PeerLib},
		"lib-tree-rss":     {PeerGoFuse, PeerLib},
	}
	if len(rep.Rows) != len(want) {
		t.Fatalf("%d rows, want %d", len(rep.Rows), len(want))
	}
	for _, row := range rep.Rows {
		for _, p := range want[row.Workload] {
			if r := row.Results[p]; r == nil || r.Error != "" || !(r.Value > 0) {
				t.Errorf("%s on %s: %+v, want a positive figure", row.Workload, p, r)
			}
		}
		for _, g := range row.Goals {
			if g.Measured == nil {
				t.Errorf("%s: goal %s not measured", row.Workload, g.Goal)
			}
		}
		if w := row.Workload; (w == "lib-gen-perop" || w == "lib-gofuse-hello") && !strings.Contains(row.Note, "go-fuse") {
			t.Errorf("%s: note %q, want the split between go-fuse and the peers", w, row.Note)
		}
		if row.Workload == "lib-gen-fresh" && !strings.Contains(row.Note, "oldest content read") {
			t.Errorf("lib-gen-fresh: note %q, want the oldest content's age", row.Note)
		}
	}
	var text, js bytes.Buffer
	if err := rep.WriteText(&text); err != nil || !strings.Contains(text.String(), "lib-tree-catall") {
		t.Errorf("text report: %v\n%s", err, text.String())
	}
	// The main table's header (its engine, data file and targets) has
	// nothing to say about a report of the library section alone.
	for _, s := range []string{"targets:", "data file", "engine:"} {
		if strings.Contains(text.String(), s) {
			t.Errorf("text report of the library section alone has the main table's %q:\n%s", s, text.String())
		}
	}
	if err := rep.WriteJSON(&js); err != nil || !strings.Contains(js.String(), `"lib-gen-fresh"`) {
		t.Errorf("JSON report: %v", err)
	}
}

func testBaselineCommand(mnt string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), testBaselineEnv+"="+mnt)
	return cmd
}

// checkReport asserts the shape of a report, never its timings: every
// selected workload has a row, every target a positive figure in it, and
// the text and JSON forms hold them.
func checkReport(t *testing.T, rep *Report, targets []string) {
	t.Helper()
	for _, ti := range rep.Targets {
		if ti.Error != "" {
			t.Errorf("target %s: %s", ti.Name, ti.Error)
		}
	}
	if len(rep.Rows) != len(allWorkloads) {
		t.Errorf("%d rows, want %d", len(rep.Rows), len(allWorkloads))
	}
	for i, row := range rep.Rows {
		if i < len(allWorkloads) && row.Workload != allWorkloads[i].name {
			t.Errorf("row %d is %s, want %s", i, row.Workload, allWorkloads[i].name)
		}
		for _, tg := range targets {
			r := row.Results[tg]
			switch {
			case r == nil:
				t.Errorf("%s: no result for %s", row.Workload, tg)
			case r.Error != "":
				t.Errorf("%s on %s: %s", row.Workload, tg, r.Error)
			case !(r.Value > 0):
				t.Errorf("%s on %s: figure %v, want > 0", row.Workload, tg, r.Value)
			case tg != TargetTmpfs && row.Unit != unitBPB && r.ServerCPUPerOpUS == nil:
				t.Errorf("%s on %s: no server CPU time", row.Workload, tg)
			}
		}
		if len(row.Goals) != len(allWorkloads[i].goals) {
			t.Errorf("%s: %d goals checked, want %d", row.Workload, len(row.Goals), len(allWorkloads[i].goals))
		}
	}

	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", text.String())
	firstWords := map[string]int{}
	for _, line := range strings.Split(text.String(), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			firstWords[f[0]]++
		}
	}
	for _, w := range allWorkloads {
		if firstWords[w.name] == 0 {
			t.Errorf("the text has no row %s", w.name)
		}
	}
	for _, tg := range targets {
		if !strings.Contains(text.String(), tg) {
			t.Errorf("the text does not name target %s", tg)
		}
	}

	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("the JSON does not parse: %v\n%s", err, js.String())
	}
	if len(back.Rows) != len(rep.Rows) || len(back.Targets) != len(rep.Targets) {
		t.Errorf("the JSON has %d rows and %d targets, want %d and %d", len(back.Rows), len(back.Targets), len(rep.Rows), len(rep.Targets))
	}
	for _, row := range back.Rows {
		for _, tg := range targets {
			if r := row.Results[tg]; r == nil || !(r.Value > 0) {
				t.Errorf("JSON: %s on %s has no positive value", row.Workload, tg)
			}
		}
	}
}

// TestQuickBaseline runs the quick bench on tmpfs and the MemRegularFile
// baseline with the Go load generator, so it needs neither fio nor a
// working ramproc.
func TestQuickBaseline(t *testing.T) {
	testenv.RequireFUSE(t)
	o := QuickOptions()
	o.Engine = EngineGo
	o.Targets = []string{TargetTmpfs, TargetMemfile}
	o.BaselineCommand = testBaselineCommand
	o.Log = testLog{t}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed {
		t.Errorf("the report says something failed: notes %q", rep.Notes)
	}
	checkReport(t, rep, o.Targets)
	assertUnmounted(t, rep)
}

// TestQuickRamproc builds ramproc and runs the quick bench on all five
// targets with the Go load generator.
func TestQuickRamproc(t *testing.T) {
	testenv.RequireFUSE(t)
	exe := testenv.Ramproc(t)
	o := QuickOptions()
	// The Go generator: fio's ~0.25 s start-up per run would triple this
	// test's time. TestBenchCommand in cmd/ramproc runs fio through the
	// command.
	o.Engine = EngineGo
	o.Ramproc = exe
	o.BaselineCommand = func(mnt string) *exec.Cmd { return exec.Command(exe, "bench", "--serve-baseline", mnt) }
	o.Log = testLog{t}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range rep.Targets {
		if ti.Error != "" {
			t.Errorf("target %s: %s", ti.Name, ti.Error)
		}
	}
	if rep.Failed {
		t.Errorf("the report says something failed: notes %q", rep.Notes)
	}
	checkReport(t, rep, AllTargets)
	assertUnmounted(t, rep)
}

// assertUnmounted checks that the bench left none of its mounts behind.
func assertUnmounted(t *testing.T, rep *Report) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range rep.Targets {
		if ti.Mountpoint == "" {
			t.Errorf("target %s: no mountpoint in the report", ti.Name)
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 4 && f[4] == ti.Mountpoint {
				t.Errorf("%s still mounted: %s", ti.Name, line)
			}
		}
		if _, err := os.Stat(ti.Mountpoint); err == nil {
			t.Errorf("%s: mountpoint %s not removed", ti.Name, ti.Mountpoint)
		}
	}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestParseFio(t *testing.T) {
	out := []byte(`fio: a warning before the document
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "tmpfs",
      "groupid" : 0,
      "error" : 0,
      "read" : {"io_bytes" : 1632006144, "bw_bytes" : 5421947322, "iops" : 1323717.6, "runtime" : 301, "total_ios" : 398439},
      "write" : {"io_bytes" : 0, "bw_bytes" : 0, "iops" : 0, "runtime" : 0, "total_ios" : 0}
    },
    {
      "jobname" : "memfile",
      "groupid" : 1,
      "error" : 0,
      "read" : {"io_bytes" : 40960, "bw_bytes" : 136000, "iops" : 33.2, "runtime" : 300, "total_ios" : 10},
      "write" : {"io_bytes" : 0, "bw_bytes" : 0, "iops" : 0, "runtime" : 0, "total_ios" : 0}
    }
  ]
}`)
	got, err := parseFio(out, "randread")
	if err != nil {
		t.Fatal(err)
	}
	if s := got["tmpfs"]; s.ops != 398439 || s.bytes != 1632006144 || s.wall != 0.301 {
		t.Errorf("tmpfs parsed as %+v", s)
	}
	if s := got["memfile"]; s.ops != 10 || s.bytes != 40960 || s.wall != 0.3 {
		t.Errorf("memfile parsed as %+v", s)
	}
	if _, err := parseFio(out, "randwrite"); err == nil {
		t.Error("a write workload with no writes parsed")
	}
	if _, err := parseFio([]byte("fio: bad option"), "read"); err == nil {
		t.Error("output without JSON parsed")
	}
}

func TestFioArgs(t *testing.T) {
	w := &workload{name: "direct-rand-read-4k", fio: "randread", bs: 4096, jobs: 1, direct: true}
	args := fioArgs(w, []fioJob{{"tmpfs", "/a/ramfile"}, {"memfile", "/b/ramfile"}}, 64<<20, 500*time.Millisecond)
	for _, want := range []string{"--rw=randread", "--bs=4096", "--size=67108864",
		"--runtime=500ms", "--time_based", "--direct=1", "--invalidate=0", "--output-format=json"} {
		if !slices.Contains(args, want) {
			t.Errorf("fio args %q lack %s", args, want)
		}
	}
	tail := strings.Join(args[len(args)-5:], " ")
	if want := "--name=tmpfs --filename=/a/ramfile --name=memfile --stonewall --filename=/b/ramfile"; tail != want {
		t.Errorf("fio jobs are %q, want %q", tail, want)
	}
}

// TestFioRound runs one fio round over two tmpfs files, as the bench does
// for every repetition of a data workload.
func TestFioRound(t *testing.T) {
	testenv.RequireCommand(t, "fio", "apt-get install fio")
	fio, err := exec.LookPath("fio")
	if err != nil {
		t.Fatal(err)
	}
	dir := testenv.Tmpfs(t, "")
	var jobs []fioJob
	for _, name := range []string{"one", "two"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			t.Fatal(err)
		}
		if err := prefill(p, 1<<20); err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, fioJob{name: name, path: p})
	}
	w := &workload{name: "rand-read-4k-2j", fio: "randread", bs: 4096, jobs: 2}
	got, err := fioRun(context.Background(), fio, w, jobs, 1<<20, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range got {
		if !(s.ops > 0 && s.bytes == 4096*s.ops && s.wall > 0) {
			t.Errorf("job %s: %+v", jobs[i].name, s)
		}
	}
}

func TestProcReaders(t *testing.T) {
	// Spin a little so the CPU time is not 0 at a 10 ms resolution.
	x := 0
	for start := time.Now(); time.Since(start) < 30*time.Millisecond; {
		x++
	}
	if cpu, err := processCPU(os.Getpid()); err != nil || cpu <= 0 {
		t.Errorf("processCPU = %v, %v (spun %d times)", cpu, err, x)
	}
	if n, err := anonRSS(os.Getpid()); err != nil || n <= 0 {
		t.Errorf("anonRSS = %v, %v", n, err)
	}
	if _, err := shmemBytes(); err != nil {
		t.Errorf("shmemBytes: %v", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	ok := QuickOptions()
	ok.Targets = []string{TargetTmpfs}
	if err := ok.Validate(); err != nil {
		t.Errorf("tmpfs alone: %v", err)
	}
	for name, o := range map[string]Options{
		"engine":       {Engine: "dd", Targets: []string{TargetTmpfs}},
		"target":       {Targets: []string{TargetTmpfs, "ext4"}},
		"no tmpfs":     {Targets: []string{TargetMemfile}, BaselineCommand: testBaselineCommand},
		"workload":     {Targets: []string{TargetTmpfs}, Workloads: []string{"seq-write-3k"}},
		"no ramproc":   {Targets: []string{TargetTmpfs, TargetRamproc}},
		"no baseline":  {Targets: []string{TargetTmpfs, TargetMemfile}},
		"tiny file":    {Targets: []string{TargetTmpfs}, FileSize: 4096},
		"ragged file ": {Targets: []string{TargetTmpfs}, FileSize: 3<<20 + 1},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, o)
		}
	}
}
