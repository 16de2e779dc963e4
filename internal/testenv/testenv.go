// Package testenv holds what ramproc's tests share: the rule that FUSE tests
// never skip silently in CI, and a private tmpfs to serve as the oracle.
package testenv

import (
	"os"
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
