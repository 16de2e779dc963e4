// Package cgroupfstest runs the cgroupfs command (cmd/cgroupfs) in tests and
// benchmarks as a user does: built once per test binary, started on a
// fresh mount point, its printed paths read, and stopped when the test
// ends.
//
// The command is built without -race, also under -race: benchmarks
// measure it, and a restart costs the same either way. With the test flag
// -cgroupfs.profile=DIR it is built with the cgroupfsprof tag (see
// cmd/cgroupfs/profile.go), and Server.Profile writes its CPU and heap
// profiles into DIR:
//
//	go test -run '^$' -bench VsLXCFS -benchtime=1x ./cgroupfs -args -cgroupfs.profile=/tmp/prof
package cgroupfstest

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/internal/testenv"
)

var profileDir = flag.String("cgroupfs.profile", "", "build the cgroupfs command with profiling and write its profiles into this directory (Server.Profile)")

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

// Binary builds the command once per test binary, in a directory every
// user may enter, and returns its path. Call RemoveBuilds from TestMain.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "cgroupfs-bin"); buildErr != nil {
			return
		}
		os.Chmod(binDir, 0o755)
		binPath = filepath.Join(binDir, "cgroupfs")
		args := []string{"build", "-o", binPath}
		if *profileDir != "" {
			args = append(args, "-tags", "cgroupfsprof")
		}
		if out, err := exec.Command("go", append(args, "github.com/ramproc/ramproc/cmd/cgroupfs")...).CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("go build cgroupfs: %v", buildErr)
	}
	return binPath
}

var (
	staticOnce sync.Once
	staticPath string
	staticErr  error
)

// StaticBinary builds the command once per test binary without cgo, as a
// file that runs in a container image with no C library (a container
// runtime's test copies it into the container's root file system), and
// returns its path. Call RemoveBuilds from TestMain.
func StaticBinary(t testing.TB) string {
	t.Helper()
	Binary(t) // makes binDir
	staticOnce.Do(func() {
		staticPath = filepath.Join(binDir, "cgroupfs-static")
		cmd := exec.Command("go", "build", "-o", staticPath, "github.com/ramproc/ramproc/cmd/cgroupfs")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			staticErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if staticErr != nil {
		t.Fatalf("go build cgroupfs (CGO_ENABLED=0): %v", staticErr)
	}
	return staticPath
}

// RemoveBuilds deletes what Binary and StaticBinary built.
func RemoveBuilds() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// Server is a cgroupfs command serving a mount point.
type Server struct {
	// Mnt is the mount point, Pid the command's process.
	Mnt string
	Pid int
	// Printed are the lines it printed at start: the paths it serves.
	Printed []string

	t        testing.TB
	cmd      *exec.Cmd
	log      string // its stderr
	exited   chan error
	profiles int
}

// stderr is what the command has written to its stderr.
func (s *Server) stderr() string {
	data, _ := os.ReadFile(s.log)
	return string(data)
}

// Start runs the command with args and a mount point (a directory that
// does not exist yet, in one every user may reach) and returns once it
// has printed its n paths (bounded: 20 s). It is stopped, and its mount
// point detached if it is still there, when the test ends.
func Start(t testing.TB, n int, args ...string) *Server {
	t.Helper()
	testenv.RequireFUSE(t)
	bin := Binary(t)
	dir, err := os.MkdirTemp("", "cgroupfs-cmd")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	s := &Server{Mnt: filepath.Join(dir, "mnt"), t: t, exited: make(chan error, 1)}
	s.cmd = exec.Command(bin, append(args, s.Mnt)...)
	if *profileDir != "" {
		s.cmd.Env = append(os.Environ(), "CGROUPFS_PROFILE_DIR="+*profileDir)
	}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// Its stderr goes to a file, which the test may read while it runs.
	s.log = filepath.Join(dir, "stderr")
	logf, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	s.cmd.Stderr = logf
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.Pid = s.cmd.Process.Pid
	t.Cleanup(func() {
		if s.Stop() != nil {
			s.cmd.Process.Kill()
		}
		if len(testenv.MountsUnder(t, s.Mnt)) > 0 {
			syscall.Unmount(s.Mnt, syscall.MNT_DETACH)
		}
		os.RemoveAll(dir)
	})
	// Room for more than it prints: the copier never waits on a test
	// that has stopped reading.
	lines := make(chan string, 256)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		io.Copy(io.Discard, stdout)
		s.exited <- s.cmd.Wait()
		close(s.exited)
	}()
	timeout := time.After(20 * time.Second)
	for len(s.Printed) < n {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("cgroupfs ended after printing %q: %s", s.Printed, s.stderr())
			}
			s.Printed = append(s.Printed, l)
		case <-timeout:
			t.Fatalf("cgroupfs printed %q in 20 s, want %d paths: %s", s.Printed, n, s.stderr())
		}
	}
	go func() {
		for range lines {
		}
	}()
	return s
}

// Stop sends SIGTERM and returns the command's exit (an error if it is
// still running 20 s later). A second Stop returns nil.
func (s *Server) Stop() error {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err, ok := <-s.exited:
		if ok && err != nil {
			return fmt.Errorf("%v: %s", err, s.stderr())
		}
		return nil
	case <-time.After(20 * time.Second):
		return fmt.Errorf("cgroupfs still runs 20 s after SIGTERM: %s", s.stderr())
	}
}

// Profile has the server write its profiles (with -cgroupfs.profile:
// DIR/cpu-N.pprof since the last call, DIR/heap-N.pprof now) and logs
// their names with what; without the flag it does nothing.
func (s *Server) Profile(what string) {
	if *profileDir == "" {
		return
	}
	s.profiles++
	heap := filepath.Join(*profileDir, fmt.Sprintf("heap-%d.pprof", s.profiles))
	s.cmd.Process.Signal(syscall.SIGUSR1)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if st, err := os.Stat(heap); err == nil && st.Size() > 0 {
			break
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %s from cgroupfs in 10 s: %s", heap, s.stderr())
		}
	}
	s.t.Logf("profiles %s: %s, cpu-%d.pprof", what, heap, s.profiles)
}
