package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/ramproc/ramproc/bench"
	"github.com/ramproc/ramproc/internal/testenv"
)

func TestBenchUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--engine", "dd"},
		{"--targets", "tmpfs,ext4"},
		{"--targets", "memfile"}, // tmpfs, the reference, is required
		{"--workloads", "seq-write-3k"},
		{"--file-size", "lots"},
		{"--file-size", "4096"}, // smaller than the largest block
		{"--mem-size", "-1"},
		{"--no-such-flag"},
		{"extra-argument"},
	} {
		// The command, as a user runs it: what it prints stays in the
		// test (checked here), not in the test run's output.
		if code, out, errOut := runRamproc(t, append([]string{"bench"}, args...)...); code != exitUsage || out != "" || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "ramproc bench: ") {
			t.Errorf("ramproc bench %s: exit %d, stdout %q, stderr %q; want %d and one line", strings.Join(args, " "), code, out, errOut, exitUsage)
		}
	}
	if code, out, errOut := runRamproc(t, "bench", "-h"); code != 0 || !strings.Contains(out+errOut, "usage: ramproc bench") {
		t.Errorf("ramproc bench -h: exit %d, %q %q; want 0 and the usage", code, out, errOut)
	}
}

func TestBenchParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "64M": 64 << 20, "1g": 1 << 30, "8k": 8 << 10} {
		if got, err := benchParseSize(in); err != nil || got != want {
			t.Errorf("benchParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-5", "12X", "M"} {
		if _, err := benchParseSize(in); err == nil {
			t.Errorf("benchParseSize(%q) succeeded", in)
		}
	}
}

// TestBenchCommand runs the real command, as a user does, on a few
// workloads in quick mode and checks its JSON: every row has a positive
// figure for each of the five targets, which proves the ramproc mounts and
// the internal --serve-baseline mode work. It asserts no timing.
func TestBenchCommand(t *testing.T) {
	testenv.RequireFUSE(t)
	exe := ramprocBinary(t)
	workloads := []string{"seq-read-4k", "rand-write-4k", "open-read100-close-gen", "stat", "memory"}
	cmd := exec.Command(exe, "bench", "--quick", "--json", "--quiet", "--workloads", strings.Join(workloads, ","))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ramproc bench: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	var rep bench.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("the JSON does not parse: %v\n%s", err, stdout.String())
	}
	if len(rep.Rows) != len(workloads) {
		t.Fatalf("%d rows, want %d:\n%s", len(rep.Rows), len(workloads), stdout.String())
	}
	for i, row := range rep.Rows {
		if row.Workload != workloads[i] {
			t.Errorf("row %d is %s, want %s", i, row.Workload, workloads[i])
		}
		for _, tg := range bench.AllTargets {
			if r := row.Results[tg]; r == nil || r.Error != "" || !(r.Value > 0) {
				t.Errorf("%s on %s: %+v", row.Workload, tg, r)
			}
		}
	}
	if t.Failed() {
		t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
}

// A bad flag is one line with the command's prefix, not the flag list.
func TestBenchFlagErrorOneLine(t *testing.T) {
	for _, args := range [][]string{{"bench", "--bogus"}, {"bench", "extra"}} {
		out, code := runCmd(t, args...)
		if code != exitUsage || strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "ramproc bench: ") {
			t.Errorf("ramproc %s: exit %d, %q; want exit 2 and one line starting 'ramproc bench: '", strings.Join(args, " "), code, out)
		}
	}
}

// -quick says its figures are indicative and judges no goals.
func TestBenchQuickNoVerdicts(t *testing.T) {
	testenv.RequireFUSE(t)
	out, code := runCmd(t, "bench", "--quick", "--quiet", "--targets", "tmpfs,ramproc", "--workloads", "stat")
	if code != 0 || !strings.Contains(out, quickNote) || strings.Contains(out, "goals met") || regexp.MustCompile(`(yes|NO) [0-9]`).MatchString(out) {
		t.Errorf("ramproc bench --quick: exit %d:\n%s", code, out)
	}
}
