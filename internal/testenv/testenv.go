// Package testenv holds what ramproc's tests share: the rule that FUSE tests
// never skip silently in CI, and a private tmpfs to serve as the oracle.
package testenv

import (
	"os"
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
	why := ""
	if os.Geteuid() != 0 {
		why = "FUSE tests mount file systems directly and must run as root"
	} else if err := unix.Access("/dev/fuse", unix.R_OK|unix.W_OK); err != nil {
		why = "/dev/fuse is not usable: " + err.Error() + " (load the fuse module: modprobe fuse)"
	}
	if why == "" {
		return
	}
	if InCI() {
		t.Fatal(why)
	}
	t.Skip(why)
}

// Tmpfs mounts a fresh, private tmpfs on a temporary directory and returns
// the directory; it is unmounted when the test ends. options is the tmpfs
// mount data, e.g. "size=1m" (empty for the defaults). Like RequireFUSE,
// it needs root: without it the test is skipped, or failed under CI.
func Tmpfs(t testing.TB, options string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if InCI() {
			t.Fatal("mounting the tmpfs oracle needs root")
		}
		t.Skip("mounting the tmpfs oracle needs root")
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
