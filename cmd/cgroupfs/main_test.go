package main

import (
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
	"github.com/ramproc/ramproc/internal/cgroupfstest"
	"github.com/ramproc/ramproc/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	cgroupfstest.RemoveBuilds()
	os.Exit(code)
}

// TestCommand runs the command: it prints the files' paths, serves them,
// and on SIGTERM unmounts and exits 0.
func TestCommand(t *testing.T) {
	paths := cgroupfs.Paths(cgroupfs.Options{})
	srv := cgroupfstest.Start(t, len(paths)) // its mount point is missing: the command makes it
	for i, p := range paths {
		if srv.Printed[i] != filepath.Join(srv.Mnt, p) {
			t.Errorf("line %d: %q, want %q", i, srv.Printed[i], filepath.Join(srv.Mnt, p))
		}
	}
	meminfo, err := os.ReadFile(filepath.Join(srv.Mnt, "proc/meminfo"))
	if err != nil || !bytes.HasPrefix(meminfo, []byte("MemTotal:")) {
		t.Errorf("proc/meminfo: %q, %v", meminfo, err)
	}
	if err := srv.Stop(); err != nil {
		t.Errorf("after SIGTERM: %v; want exit 0", err)
	}
	if m := testenv.MountsUnder(t, srv.Mnt); len(m) != 0 {
		t.Errorf("still mounted: %v", m)
	}
}

// TestCommandErrors: wrong use is one line on stderr saying what was wrong
// and how to use the command, and exit status 2; -h is the help, exit 0;
// an unprivileged user is told it needs root.
func TestCommandErrors(t *testing.T) {
	bin := cgroupfstest.Binary(t)
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
