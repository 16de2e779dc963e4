package main

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs"
	"github.com/ramproc/ramproc/internal/testenv"
)

// build compiles the command, to run it as a user does, in a directory
// that user nobody may enter too.
func build(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cgroupfs-bin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "cgroupfs")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ramproc/ramproc/cmd/cgroupfs").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestCommand runs the command: it prints the files' paths, serves them,
// and on SIGTERM unmounts and exits 0.
func TestCommand(t *testing.T) {
	testenv.RequireFUSE(t)
	bin := build(t)
	mnt := filepath.Join(t.TempDir(), "mnt") // missing: the command creates it
	cmd := exec.Command(bin, mnt)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	t.Cleanup(func() {
		cmd.Process.Kill()
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	})
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	var printed []string
	timeout := time.After(20 * time.Second)
	paths := cgroupfs.Paths(cgroupfs.Options{})
	for len(printed) < len(paths) {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the command ended after %q: %s", printed, stderr.Bytes())
			}
			printed = append(printed, l)
		case <-timeout:
			t.Fatalf("no paths printed in 20 s (got %q): %s", printed, stderr.Bytes())
		}
	}
	for i, p := range paths {
		if printed[i] != filepath.Join(mnt, p) {
			t.Errorf("line %d: %q, want %q", i, printed[i], filepath.Join(mnt, p))
		}
	}
	meminfo, err := os.ReadFile(filepath.Join(mnt, "proc/meminfo"))
	if err != nil || !bytes.HasPrefix(meminfo, []byte("MemTotal:")) {
		t.Errorf("proc/meminfo: %q, %v", meminfo, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v: %s", err, stderr.Bytes())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("still running 20 s after SIGTERM")
	}
	if m := testenv.MountsUnder(t, mnt); len(m) != 0 {
		t.Errorf("still mounted: %v", m)
	}
}

// TestCommandErrors: wrong use is one line on stderr saying what was wrong
// and how to use the command, and exit status 2; -h is the help, exit 0;
// an unprivileged user is told it needs root.
func TestCommandErrors(t *testing.T) {
	bin := build(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "cgroupfs: want one MOUNTPOINT, got 0 arguments; usage: cgroupfs"},
		{[]string{"a", "b"}, "cgroupfs: want one MOUNTPOINT, got 2 arguments; usage: cgroupfs"},
		{[]string{"-o", "noswap,bogus", "/x"}, `cgroupfs: "noswap,bogus" for flag -o: unknown option "bogus" (known: loadavg, noloadavg, swap, noswap, bycgroup_maxage=DURATION); usage: cgroupfs`},
		{[]string{"-o", "bycgroup_maxage=soon", "/x"}, `cgroupfs: "bycgroup_maxage=soon" for flag -o: bycgroup_maxage=soon: want a duration above 0, such as 100ms or 1s; usage: cgroupfs`},
		{[]string{"-x", "/x"}, "cgroupfs: flag provided but not defined: -x; usage: cgroupfs"},
	} {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || strings.Count(string(out), "\n") != 1 || !strings.HasPrefix(string(out), c.want) {
			t.Errorf("%q: %v, %q; want exit 2 and one line starting %q", c.args, err, out, c.want)
		}
	}
	out, err := exec.Command(bin, "-h").Output()
	if err != nil || !strings.HasPrefix(string(out), "usage: cgroupfs") || !strings.Contains(string(out), "noloadavg") {
		t.Errorf("-h: %v, %q; want the help on stdout, exit 0", err, out)
	}
	testenv.RequireRoot(t, "running the command as user nobody")
	cmd := exec.Command(bin, t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err = cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || string(out) != "cgroupfs: must run as root: it mounts FUSE and reads every process's cgroups (try sudo)\n" {
		t.Errorf("as nobody: %v, %q", err, out)
	}
}

// TestByCgroupMaxAgeOption: -o bycgroup_maxage=DURATION sets the bound
// of by-cgroup's files, beside the other options.
func TestByCgroupMaxAgeOption(t *testing.T) {
	o, mnt, restart, err := parseArgs([]string{"-o", "noswap,bycgroup_maxage=1s", "/x"})
	if err != nil || mnt != "/x" || restart || !o.NoSwap || o.ByCgroupMaxAge != time.Second {
		t.Errorf("parseArgs: %+v, %q, %v; want noswap and a bound of 1s", o, mnt, err)
	}
	if _, _, _, err := parseArgs([]string{"-o", "bycgroup_maxage=0", "/x"}); err == nil {
		t.Error("bycgroup_maxage=0 accepted")
	}
}
