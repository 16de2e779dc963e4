package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
	buildOut  []byte
)

// Ramproc builds the ramproc command once per test binary and returns its
// path, so tests drive it exactly as a user does: as a separate process.
// Under -race the command is built with -race too. Call RemoveBuilds from
// TestMain to delete it afterwards.
func Ramproc(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "ramproc-bin"); buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "ramproc")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		buildOut, buildErr = exec.Command("go", append(args, "github.com/ramproc/ramproc/cmd/ramproc")...).CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build ramproc: %v\n%s", buildErr, buildOut)
	}
	return binPath
}

// RemoveBuilds deletes what Ramproc built.
func RemoveBuilds() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}
