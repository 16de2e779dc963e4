// Package testenv holds what ramproc's tests share: the rule that FUSE tests
// never skip silently in CI, and a private tmpfs to serve as the oracle.
//
// A test that needs something of the machine (root, /dev/fuse, a command,
// a cgroup hierarchy, FUSE passthrough) says so through Missing or one of
// the Require helpers built on it, never with t.Skip or t.Fatal of its
// own: outside CI it skips with one line naming what is missing and how to
// get it; under CI=true it fails, because a CI run that skipped proved
// nothing.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// InCI reports whether the tests run under CI (the CI variable is set), where
// a missing prerequisite is a failure, not a skip.
func InCI() bool { return os.Getenv("CI") != "" }

// RequireFUSE stops the test unless this process can mount FUSE file
// systems itself (root and /dev/fuse). Outside CI it skips with the reason;
// in CI it fails, because a CI run that skipped the FUSE tests proved
// nothing.
func RequireFUSE(t testing.TB) {
	t.Helper()
	Missing(t, FUSEMissing())
}

// RequireRoot stops the test unless it runs as root; what says what needs
// it (e.g. "running a process as nobody").
func RequireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, what+" needs root")
	}
}

// RequireCommand stops the test unless name is on $PATH; install says
// where it comes from (e.g. "apt-get install fuse3").
func RequireCommand(t testing.TB, name, install string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		Missing(t, name+" is not installed ("+install+")")
	}
}

// RequireUnprivilegedFUSE stops the test unless a user other than root
// (the tests use nobody) can mount FUSE file systems here: fusermount3
// installed and /dev/fuse open to every user. Debian and Ubuntu make it
// mode 0666; some containers make it 0600, which only root may use; .ci/run
// makes it 0666 as Debian does. The test itself leaves the device's mode
// alone: it is the machine's, not the test's.
func RequireUnprivilegedFUSE(t testing.TB) {
	t.Helper()
	RequireFUSE(t)
	RequireCommand(t, "fusermount3", "apt-get install fuse3")
	if st, err := os.Stat("/dev/fuse"); err != nil || st.Mode().Perm()&0o006 != 0o006 {
		mode := "missing"
		if err == nil {
			mode = fmt.Sprintf("mode %#o", st.Mode().Perm())
		}
		Missing(t, "unprivileged FUSE mounts need /dev/fuse open to every user (mode 0666, as Debian makes it); it is "+mode)
	}
}

// Missing stops the test for a missing prerequisite, why, unless why is
// empty: it skips outside CI and fails under CI, where a skip would hide
// that the test proved nothing.
func Missing(t testing.TB, why string) {
	t.Helper()
	if why == "" {
		return
	}
	if InCI() {
		t.Fatal(why)
	}
	t.Skip(why)
}

// MountsUnder lists the mount points at dir or below it, from
// /proc/self/mountinfo.
func MountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var list []string
	for _, line := range strings.Split(string(data), "\n") {
		// id parent major:minor root mountpoint ...
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			list = append(list, f[4])
		}
	}
	return list
}

// Tmpfs mounts a fresh, private tmpfs on a temporary directory and returns
// the directory; it is unmounted when the test ends. options is the tmpfs
// mount data, e.g. "size=1m" (empty for the defaults). Like RequireFUSE,
// it needs root: without it the test is skipped, or failed under CI.
func Tmpfs(t testing.TB, options string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "mounting the tmpfs oracle needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, options); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount tmpfs %s: %v", dir, err)
		}
	})
	return dir
}

// Output is where a test sends what a program it runs prints for people
// (log lines on stderr): os.Stderr under -v; otherwise a file that the
// test's log shows only if the test fails, so that a passing run prints
// nothing but its summary. It is a file, not a pipe, so that a process
// that outlives the program (a fusermount3 daemon) holds up nothing.
func Output(t testing.TB) *os.File {
	t.Helper()
	if testing.Verbose() {
		return os.Stderr
	}
	f, err := os.CreateTemp("", "ramproc-test-output")
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(f.Name()) // read back through the descriptor
	t.Cleanup(func() {
		defer f.Close()
		if !t.Failed() {
			return
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd())); err == nil && len(b) > 0 {
			t.Logf("what the programs it ran printed:\n%s", b)
		}
	})
	return f
}
