package testenv

import (
	"flag"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// FUSEMissing says why this process cannot mount FUSE file systems itself,
// or returns "" when it can (root and a usable /dev/fuse): the one rule
// behind RequireFUSE and ExamplesNeedFUSE.
func FUSEMissing() string {
	if os.Geteuid() != 0 {
		return "FUSE tests mount file systems directly and must run as root"
	}
	if err := unix.Access("/dev/fuse", unix.R_OK|unix.W_OK); err != nil {
		return "/dev/fuse is not usable: " + err.Error() + " (load the fuse module: modprobe fuse)"
	}
	return ""
}

// ExamplesNeedFUSE is for the TestMain of a package whose runnable examples
// mount FUSE file systems, called before m.Run. An Example cannot skip
// itself: where FUSE is missing it prints Mount's error instead of its
// output and fails. So there this skips the package's examples (it adds
// "^Example" to -test.skip) with one line saying why. Under CI it leaves
// them to run and fail, as RequireFUSE fails a test there: a CI run that
// skipped them proved nothing.
func ExamplesNeedFUSE() {
	why := FUSEMissing()
	if why == "" || InCI() {
		return
	}
	if !flag.Parsed() {
		flag.Parse()
	}
	skip := "^Example"
	if f := flag.Lookup("test.skip"); f != nil && f.Value.String() != "" {
		skip = f.Value.String() + "|" + skip
	}
	if err := flag.Set("test.skip", skip); err != nil {
		fmt.Fprintln(os.Stderr, "testenv: cannot skip the examples:", err)
		return
	}
	fmt.Fprintln(os.Stderr, "skipping the runnable examples that mount:", why)
}
