package filecheck_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ramproc/ramproc/filecheck"
	"github.com/ramproc/ramproc/internal/testenv"
)

// newFile creates an empty file in dir.
func newFile(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "file")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// runConfig runs the checks cfg selects and logs the report.
func runConfig(t *testing.T, cfg filecheck.Config) *filecheck.Report {
	t.Helper()
	rep, err := filecheck.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	return rep
}

// logReport logs the text report.
func logReport(t *testing.T, rep *filecheck.Report) {
	t.Helper()
	var b strings.Builder
	rep.WriteText(&b)
	t.Log("\n" + b.String())
}

// requireAllPass fails the test unless every check but the skipped ones
// passed.
func requireAllPass(t *testing.T, rep *filecheck.Report, skipped ...string) {
	t.Helper()
	for _, res := range rep.Results {
		want := filecheck.Pass
		for _, s := range skipped {
			if res.Name == s {
				want = filecheck.Skip
			}
		}
		if res.Status != want {
			t.Errorf("%s: %s, want %s: %s", res.Name, res.Status, want, res.Reason)
			for _, d := range res.Details {
				t.Logf("    %s", d)
			}
		}
	}
}

// TestTmpfsPassesEverything: the checks do not reject the kernel's own
// tmpfs, with the default oracle (/dev/shm or a private tmpfs).
func TestTmpfsPassesEverything(t *testing.T) {
	dir := testenv.Tmpfs(t, "")
	path := newFile(t, dir)
	rep := runConfig(t, filecheck.Config{Path: path, Ops: 1000, Seed: 1})
	requireAllPass(t, rep, "seed/reload", "capacity/mmap-beyond")
	if want := len(filecheck.Names()) - len(readOnlyNames()); len(rep.Results) != want {
		t.Errorf("ran %d checks, want all %d but the read-only ones", len(rep.Results), want)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 0 {
		t.Errorf("the file is not left empty: %v, %v", st, err)
	}

	// And the read-only checks, on content of several pages.
	fillFile(t, path, 70000)
	requireAllPass(t, runReadOnly(t, path))
}

// TestTmpfsAgainstPrivateOracle: a tmpfs file against a second private
// tmpfs as the oracle, with a few random seeds.
func TestTmpfsAgainstPrivateOracle(t *testing.T) {
	path := newFile(t, testenv.Tmpfs(t, ""))
	oracle := testenv.Tmpfs(t, "")
	for _, seed := range []int64{2, 3} {
		rep, err := filecheck.Run(context.Background(), filecheck.Config{
			Path: path, OracleDir: oracle, Ops: 500, Seed: seed,
			Run: regexp.MustCompile(`^(random|semantics/.*)$`),
		})
		if err != nil {
			t.Fatal(err)
		}
		requireAllPass(t, rep)
		if rep.Seed != seed {
			t.Errorf("report seed %d, want %d", rep.Seed, seed)
		}
	}
	ents, _ := os.ReadDir(oracle)
	if len(ents) != 0 {
		t.Errorf("the oracle's scratch file is left behind: %v", ents)
	}
}

// TestTmpfsCapacity: a tmpfs file mounted with size=1m passes
// capacity/mmap-beyond with --oracle-size 1m (SIGBUS at the fault), and
// fails it when the file's capacity is not the one given.
func TestTmpfsCapacity(t *testing.T) {
	only := regexp.MustCompile(`^capacity/`)
	path := newFile(t, testenv.Tmpfs(t, "size=1m"))
	rep, err := filecheck.Run(context.Background(), filecheck.Config{Path: path, Run: only, OracleSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	requireAllPass(t, rep)
	if rep.Passed != 1 {
		t.Errorf("%s, want the capacity check to pass", rep.Summary())
	}
	path = newFile(t, testenv.Tmpfs(t, "size=2m"))
	rep, err = filecheck.Run(context.Background(), filecheck.Config{Path: path, Run: only, OracleSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if r := rep.Result("capacity/mmap-beyond"); r == nil || r.Status != filecheck.Fail || r.FirstDiff == nil || !strings.Contains(r.FirstDiff.Call, "pwrite") {
		t.Errorf("a 2 MiB tmpfs checked as 1 MiB: %+v, want a failure at the first pwrite", r)
	}
	rep, err = filecheck.Run(context.Background(), filecheck.Config{Path: path, Run: only})
	if err != nil {
		t.Fatal(err)
	}
	if r := rep.Result("capacity/mmap-beyond"); r == nil || r.Status != filecheck.Skip || !strings.Contains(r.Reason, "--oracle-size") {
		t.Errorf("without an oracle size: %+v, want a skip naming --oracle-size", r)
	}
}
