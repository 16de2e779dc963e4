// Package importtest proves that ramproc's public packages can be imported
// from another module, the way a user of a published copy does.
package importtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// publicPackages are the packages other programs build on; each must be
// importable (and usable) from a module that is not ramproc.
var publicPackages = []string{"handler", "fusebridge", "bytestore", "ramfile", "filecheck", "bench"}

const outsideMain = `package main

import (
	"context"
	"fmt"

	"github.com/ramproc/ramproc/bench"
	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/filecheck"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/ramfile"
)

func main() {
	g := handler.Generated(func(context.Context) ([]byte, error) { return []byte("hi\n"), nil })
	var opts fusebridge.Options
	var store *bytestore.Store
	var rf *ramfile.File
	var cfg filecheck.Config
	var rep bench.Report
	fmt.Println(g != nil, opts.NoOpen, store == nil, rf == nil, cfg.Path, rep.CPUs)
}
`

// TestOutsideModuleImports builds a throwaway module that requires
// github.com/ramproc/ramproc through a replace directive pointing at this
// checkout, imports every public package and runs the result.
func TestOutsideModuleImports(t *testing.T) {
	_, here, _, _ := runtime.Caller(0)
	root := filepath.Clean(filepath.Join(filepath.Dir(here), "..", ".."))
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gomod := "module example.com/outside\n\ngo 1.24.0\n\n" +
		"require github.com/ramproc/ramproc v0.0.0\n\n" +
		"replace github.com/ramproc/ramproc => " + root + "\n"
	for name, data := range map[string]string{"go.mod": gomod, "go.sum": string(sum), "main.go": outsideMain} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range publicPackages {
		if !strings.Contains(outsideMain, `"github.com/ramproc/ramproc/`+p+`"`) {
			t.Errorf("the outside module does not import public package %s", p)
		}
	}
	// -mod=mod lets go add the indirect requirements (go-fuse, x/sys) that
	// the replaced module's go.mod names; go.sum already has their hashes.
	cmd := exec.Command("go", "run", "-mod=mod", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run in a module outside ramproc: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), "true false true true  0"; got != want {
		t.Errorf("outside program printed %q, want %q", got, want)
	}
}
