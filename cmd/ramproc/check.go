package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/filecheck"
)

// The checker's mmap and multi-process checks re-execute this binary as a
// child process; this hands such an invocation to filecheck before main
// runs (filecheck's own init does the same; this makes it visible here).
func init() { filecheck.MaybeRunChild() }

const checkUsage = `usage: ramproc check [flags] PATH

Checks that the existing file PATH behaves like a regular file on tmpfs:
every step runs on PATH and on a scratch file on tmpfs (the oracle), and
each check passes when both give the same results. Prints one line per
check and "N passed, N failed, N skipped"; exits 0 if nothing failed, 1 if
something did, 2 on usage errors.

The checks WRITE TO PATH. An empty PATH is left empty; a PATH that is not
empty is refused unless --destructive is given (its contents are then read
first and written back at the end, best effort).

With --read-only, other checks run, which never write: any readable
regular file (a /proc or /sys file, a generated file), each way of
reading it (read, readv, pread, lseek, sendfile, splice, copy_file_range,
mmap) compared with its own read(2) just before and after.

Flags:
`

// runCheck implements 'ramproc check'.
func runCheck(args []string) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	oracle := fs.String("oracle", "", "directory on a tmpfs for the oracle's scratch file (default /dev/shm, or a private tmpfs when root; with --read-only, for copy_file_range's scratch file)")
	oracleSize := fs.String("oracle-size", "", "PATH's capacity (e.g. 1m, as given to ramproc mount -max-size): compare writes and mmap stores beyond it with a private tmpfs of that size= (root; check capacity/mmap-beyond)")
	run := fs.String("run", "", "run only the checks whose names match this regular expression (see --list)")
	destructive := fs.Bool("destructive", false, "allow overwriting PATH when it is not empty")
	readOnly := fs.Bool("read-only", false, "run the read-only/ checks instead, which never write: any readable regular file, /proc and /sys files too, each way of reading it compared with its own read(2)")
	ops := fs.Int("ops", filecheck.DefaultOps, "number of operations of the randomized check")
	seed := fs.Int64("seed", 0, "seed of the randomized check (0: from the clock; the seed used is printed)")
	reload := fs.String("reload-cmd", "", "shell command that stops and restarts PATH's server, for seed/reload")
	unload := fs.String("unload-cmd", "", "shell command that stops PATH's server, for seed/reload (with --load-cmd)")
	load := fs.String("load-cmd", "", "shell command that starts PATH's server again, for seed/reload (with --unload-cmd)")
	restartCmd := fs.String("restart-cmd", "", "shell command that restarts PATH's server without unmounting (e.g. ramproc restart MOUNTPOINT), for seed/reload: descriptors kept open across it must keep working")
	timeout := fs.Duration("timeout", 60*time.Second, "limit for each command and each wait for a child process")
	shrink := fs.Duration("shrink-time", 30*time.Second, "time the randomized check may spend shrinking a failing sequence")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	list := fs.Bool("list", false, "list the names of the checks and exit")

	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "ramproc check: "+format+"\n", a...)
		return exitUsage
	}
	// Flags may come before or after PATH.
	var paths []string
	rest := args
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(os.Stderr)
				fmt.Fprint(os.Stderr, checkUsage)
				fs.PrintDefaults()
				return 0
			}
			return usageErr("%v; run 'ramproc check -h' for the flags", err)
		}
		if fs.NArg() == 0 {
			break
		}
		paths = append(paths, fs.Arg(0))
		rest = fs.Args()[1:]
	}

	if *list {
		for _, n := range filecheck.Names() {
			fmt.Println(n)
		}
		return 0
	}
	if len(paths) != 1 {
		return usageErr("give exactly one file to check: ramproc check [flags] PATH (see 'ramproc check -h')")
	}
	cfg := filecheck.Config{
		Path:           paths[0],
		OracleDir:      *oracle,
		Destructive:    *destructive,
		ReadOnly:       *readOnly,
		Ops:            *ops,
		Seed:           *seed,
		ReloadCmd:      *reload,
		UnloadCmd:      *unload,
		LoadCmd:        *load,
		RestartCmd:     *restartCmd,
		CommandTimeout: *timeout,
		ShrinkTimeout:  *shrink,
	}
	if *ops <= 0 {
		return usageErr("--ops must be positive")
	}
	if *oracleSize != "" {
		n, err := parseSize(*oracleSize)
		if err != nil || n <= 0 {
			return usageErr("--oracle-size %q: give the file's capacity in bytes with an optional k/m/g suffix, e.g. 1m", *oracleSize)
		}
		cfg.OracleSize = n
	}
	if *run != "" {
		re, err := regexp.Compile(*run)
		if err != nil {
			return usageErr("--run %q is not a regular expression: %v", *run, err)
		}
		cfg.Run = re
	}
	if isTerminal(os.Stderr) {
		cfg.Progress = os.Stderr
	}
	if *destructive && !*readOnly { // (Run refuses the two together)
		fmt.Fprintf(os.Stderr, "ramproc check: --destructive: the checks overwrite %s (its contents are written back at the end, best effort)\n", cfg.Path)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := filecheck.Run(ctx, cfg)
	if err != nil {
		var ue *filecheck.UsageError
		if errors.As(err, &ue) {
			return usageErr("%s", strings.TrimSpace(err.Error()))
		}
		fmt.Fprintf(os.Stderr, "ramproc check: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(os.Stderr, "ramproc check: %v\n", err)
			return 1
		}
	} else if err := rep.WriteText(os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "ramproc check: %v\n", err)
		return 1
	}
	if !rep.OK() {
		return 1
	}
	return 0
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
