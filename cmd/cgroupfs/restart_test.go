package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/cgroupfstest"
	"github.com/ramproc/ramproc/internal/testenv"
)

// 'cgroupfs -restart' of a mount point no server serves is one line saying
// how to start one, exit 1.
func TestRestartNotServed(t *testing.T) {
	bin := cgroupfstest.Binary(t)
	idle := t.TempDir()
	out, err := exec.Command(bin, "-restart", idle).CombinedOutput()
	var ee *exec.ExitError
	if want := "cgroupfs: no cgroupfs server serves " + idle + "; start one with 'cgroupfs " + idle + "'\n"; !errors.As(err, &ee) || ee.ExitCode() != 1 || string(out) != want {
		t.Errorf("-restart %s: %v, %q; want exit 1 and %q", idle, err, out, want)
	}
}

// What the systemd unit relies on (Type=notify, ExecReload=cgroupfs
// -restart): the server reports READY=1 once it serves; 'cgroupfs
// -restart' prints the new server's pid, the old server names it MAINPID
// and exits 0, the new one reports READY=1, serves, and on SIGTERM reports
// STOPPING=1 and unmounts.
func TestRestartTellsTheServiceManager(t *testing.T) {
	testenv.RequireFUSE(t)
	testenv.AdoptOrphans(t)
	if os.Geteuid() != 0 {
		testenv.Missing(t, "cgroupfs runs as root")
	}
	bin := cgroupfstest.Binary(t)
	sock := filepath.Join(t.TempDir(), "notify")
	recv := testenv.ListenNotify(t, sock)
	mnt := filepath.Join(t.TempDir(), "mnt")
	cmd := exec.Command(bin, mnt)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p := fusebridge.ServerPID(mnt); p > 0 {
			syscall.Kill(p, syscall.SIGKILL)
			testenv.Reap(p, 10*time.Second)
		}
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	})
	if msg := recv(); msg != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", msg)
	}
	out, err := exec.Command(bin, "-restart", mnt).CombinedOutput()
	_, pidStr, _ := strings.Cut(strings.TrimSpace(string(out)), "served by process ")
	pid, perr := strconv.Atoi(pidStr)
	if err != nil || perr != nil {
		t.Fatalf("cgroupfs -restart: %v, %q; want the new server's pid", err, out)
	}
	// The old server's MAINPID= and the new one's READY=1 come in either
	// order.
	got := []string{recv(), recv()}
	slices.Sort(got)
	if want := []string{"MAINPID=" + pidStr, "READY=1"}; !slices.Equal(got, want) {
		t.Errorf("notifications of the restart %q, want %q", got, want)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("the old server after handing over: %v, want exit 0", err)
	}
	if data, err := os.ReadFile(filepath.Join(mnt, "proc/meminfo")); err != nil || !strings.HasPrefix(string(data), "MemTotal:") {
		t.Errorf("proc/meminfo from the new server: %.40q, %v", data, err)
	}
	syscall.Kill(pid, syscall.SIGTERM)
	if msg := recv(); msg != "STOPPING=1" {
		t.Errorf("notification after SIGTERM %q, want STOPPING=1", msg)
	}
	if err := testenv.Reap(pid, 30*time.Second); err != nil {
		t.Errorf("the new server after SIGTERM: %v", err)
	}
	if m := testenv.MountsUnder(t, mnt); len(m) != 0 {
		t.Errorf("still mounted: %v", m)
	}
}
