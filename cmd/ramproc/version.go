package main

import (
	"fmt"
	"io"
	"runtime/debug"
)

// version, when set at link time (-ldflags "-X main.version=v1.2.3"),
// is the version printVersion reports instead of the module's.
var version string

// printVersion prints the module version, the VCS revision and whether the
// tree had uncommitted changes, and the Go version, from the build info
// the go command embeds. A binary built by 'go install ...@v1.2.3' reports
// v1.2.3; one built in a clone reports "(devel)" or a pseudo-version, and
// the revision when the build had VCS information (not with -buildvcs=false).
func printVersion(w io.Writer) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Fprintln(w, "ramproc: no build information (built without module support)")
		return
	}
	if version != "" {
		bi.Main.Version = version
	}
	rev, modified, when := "unknown", "", ""
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = " (modified)"
			}
		case "vcs.time":
			when = " " + s.Value
		}
	}
	fmt.Fprintf(w, "ramproc %s (module %s)\nrevision %s%s%s\n%s\n", bi.Main.Version, bi.Main.Path, rev, modified, when, bi.GoVersion)
}
