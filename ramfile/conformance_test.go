package ramfile_test

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/ramproc/ramproc/filecheck"
	"github.com/ramproc/ramproc/internal/testenv"
)

// TestConformance points the conformance tester (ramproc check) at the RAM
// file in every mode: every check the kernel's tmpfs passes, the RAM file
// passes too. The reload check is driven from cmd/ramproc, where a server
// can be stopped and started as a process.
func TestConformance(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			s := serve(t, m, 0)
			rep, err := filecheck.Run(context.Background(), filecheck.Config{
				Path:      s.path,
				OracleDir: testenv.Tmpfs(t, ""),
				Ops:       1000,
				Seed:      1,
			})
			if err != nil {
				t.Fatal(err)
			}
			var lines []string
			for _, r := range rep.Results {
				if r.Status == filecheck.Fail {
					t.Errorf("%s: %s %v %s", r.Name, r.Reason, r.FirstDiff, strings.Join(r.Details, "\n"))
				}
				lines = append(lines, string(r.Status)+" "+r.Name)
			}
			// The checks that need root must have run, not been skipped.
			if r := rep.Result("permissions/setid-clearing"); r == nil || r.Status != filecheck.Pass {
				t.Errorf("permissions/setid-clearing did not pass: %+v", r)
			}
			if len(rep.Results) < 20 {
				t.Errorf("only %d checks ran:\n%s", len(rep.Results), strings.Join(lines, "\n"))
			}
		})
	}
}

// TestConformanceAtCapacity: capacity/mmap-beyond, with the RAM file's
// capacity given to the checker as the oracle's size, passes in every mode.
func TestConformanceAtCapacity(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			s := serve(t, m, 1<<20)
			rep, err := filecheck.Run(context.Background(), filecheck.Config{
				Path:       s.path,
				OracleSize: 1 << 20,
				Run:        regexp.MustCompile(`^capacity/`),
			})
			if err != nil {
				t.Fatal(err)
			}
			r := rep.Result("capacity/mmap-beyond")
			if r == nil || r.Status != filecheck.Pass {
				t.Fatalf("capacity/mmap-beyond: %+v", r)
			}
		})
	}
}
