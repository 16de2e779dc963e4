// Command ramproc serves a RAM-backed file over FUSE, checks any file for
// regular-file conformance, and benchmarks both against tmpfs.
//
//	ramproc mount [flags] MOUNTPOINT   serve the RAM file until Ctrl-C
//	ramproc check [flags] PATH         compare PATH's behaviour with a tmpfs file
//	ramproc restart MOUNTPOINT         hand the mount to the binary on disk now
//	ramproc supervise PROGRAM [ARGS]   keep a server's descriptors; restart it after a crash
//	ramproc bench [flags]              ramproc vs tmpfs vs go-fuse MemRegularFile
//	ramproc version                    module version, VCS revision, Go version
//	ramproc SOURCE MOUNTPOINT -o OPTS  the mount-helper form (mount -t fuse.ramproc)
//
// The work lives in the packages; this file only dispatches.
package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
)

// exitUsage is the exit status for bad flags or arguments, as flag uses.
const exitUsage = 2

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		usage()
		return exitUsage
	}
	switch args[0] {
	case "mount":
		return runMount(args[1:])
	case "check":
		return runCheck(args[1:])
	case "restart":
		return runRestart(args[1:])
	case "supervise":
		return runSupervise(args[1:])
	case listenExecCmd:
		return runListenExec(args[1:])
	case "bench":
		return runBench(args[1:])
	case "version", "-version", "--version":
		printVersion(os.Stdout)
		return 0
	case "help", "-h", "-help", "--help":
		usage()
		return 0
	}
	// mount.fuse3 runs "ramproc SOURCE MOUNTPOINT -o OPTIONS", with -o
	// always (mount(8) passes at least rw): a first argument that is no
	// command and no flag, then another, and -o. Without -o it is more
	// likely a mistyped command than a mount.
	if len(args) >= 3 && !strings.HasPrefix(args[0], "-") && !strings.HasPrefix(args[1], "-") && slices.Contains(args, "-o") {
		return runHelper(args)
	}
	fmt.Fprintf(os.Stderr, "ramproc: unknown command %q; run 'ramproc help' for the list of commands\n", args[0])
	return exitUsage
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  ramproc mount [flags] MOUNTPOINT   serve a RAM-backed file in MOUNTPOINT until Ctrl-C
  ramproc check [flags] PATH         check that PATH behaves like a regular tmpfs file
  ramproc restart MOUNTPOINT         restart the server of MOUNTPOINT with the binary on disk now, keeping every descriptor
  ramproc supervise PROGRAM [ARGS]   run a server (ramproc mount ...) so that it survives a crash: keep its descriptors, start it again
  ramproc bench [flags]              benchmark ramproc against tmpfs and go-fuse MemRegularFile
  ramproc version                    print the module version, VCS revision and Go version
  ramproc SOURCE MOUNTPOINT -o OPTS  mount as mount(8) does (mount -t fuse.ramproc; SOURCE is ignored)
Run 'ramproc COMMAND -h' for a command's flags.
`)
}
