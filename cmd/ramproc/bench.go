package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/ramproc/ramproc/bench"
)

// serveBaselineFlag is the internal mode in which the bench runs its
// baseline server as a child of itself: "ramproc bench --serve-baseline
// MOUNTPOINT" serves go-fuse's fs.MemRegularFile until SIGTERM. It is not
// meant for people and is left out of the usage text.
const serveBaselineFlag = "serve-baseline"

// serveLibFlag is the internal mode that serves the library section's
// servers: "ramproc bench --serve-lib MOUNTPOINT --serve-lib-kind lib|lib-perop|gofuse-tree
// --serve-lib-files N" (bench.ServeLib, bench.ServeGoFuseTree).
const serveLibFlag = "serve-lib"

// internalFlags are left out of the usage text.
var internalFlags = map[string]bool{serveBaselineFlag: true, serveLibFlag: true, serveLibFlag + "-kind": true, serveLibFlag + "-files": true}

func runBench(args []string) int {
	fl := flag.NewFlagSet("ramproc bench", flag.ContinueOnError)
	def := bench.DefaultOptions()
	engine := fl.String("engine", def.Engine, "load generator: fio, go, or auto (fio when installed)")
	duration := fl.Duration("duration", def.Duration, "length of one run of one workload on one target")
	reps := fl.Int("reps", def.Reps, "runs of each workload on each target (the table shows the median)")
	quick := fl.Bool("quick", false, "a short smoke run: 1 rep, "+bench.QuickOptions().Duration.String()+" runs, small files (overrides -duration, -reps, -file-size, -mem-size)")
	asJSON := fl.Bool("json", false, "print the report as JSON instead of tables")
	targets := fl.String("targets", strings.Join(bench.AllTargets, ","), "comma-separated targets to measure (tmpfs is required)")
	workloads := fl.String("workloads", "", "comma-separated workloads to run (default all: "+strings.Join(bench.WorkloadNames(), ",")+"); "+bench.LibWorkload+" selects the library section (fusebridge's generated files against tmpfs and libfuse's hello_ll; not in the default)")
	fileSize := fl.String("file-size", benchSizeFlag(def.FileSize), "size of the data file the workloads run on (bytes, or with K, M, G suffix)")
	memSize := fl.String("mem-size", benchSizeFlag(def.MemSize), "bytes the memory workload writes (bytes, or with K, M, G suffix)")
	memDeadline := fl.Duration("mem-deadline", def.MemDeadline, "longest time the memory workload may write for, per target")
	ramproc := fl.String("ramproc", "", "ramproc binary to benchmark (default: this executable)")
	quiet := fl.Bool("quiet", false, "no progress lines on stderr")
	serveBaseline := fl.String(serveBaselineFlag, "", "internal: serve the MemRegularFile baseline on this mountpoint")
	serveLib := fl.String(serveLibFlag, "", "internal: serve a library section server on this mountpoint")
	serveLibKind := fl.String(serveLibFlag+"-kind", "lib", "internal: lib, lib-perop or gofuse-tree")
	serveLibFiles := fl.Int(serveLibFlag+"-files", def.LibTreeFiles, "internal: files in the tree")
	libFiles := fl.Int("lib-tree-files", def.LibTreeFiles, "files in the library section's tree (-workloads lib)")
	fl.Usage = func() {
		fmt.Fprint(fl.Output(), `usage: ramproc bench [flags]

Mounts a private tmpfs, ramproc with passthrough (ramproc), ramproc with
-passthrough off (ramproc-nopt), ramproc with -no-open (ramproc-noopen) and
a go-fuse fs.MemRegularFile server (memfile), runs every workload on each, interleaved, and prints figures,
ratios to tmpfs, the server's CPU time and whether the goals are met.
Needs root. Takes under 3 minutes (about 2.7 here) with the defaults. See 'go doc
github.com/ramproc/ramproc/bench' for how to read the table.

flags:
`)
		fl.VisitAll(func(f *flag.Flag) {
			if internalFlags[f.Name] {
				return
			}
			def := ""
			if f.DefValue != "" && f.DefValue != "false" {
				def = " (default " + f.DefValue + ")"
			}
			fmt.Fprintf(fl.Output(), "  -%s\n    \t%s%s\n", f.Name, f.Usage, def)
		})
	}
	// Errors are one line, like the other commands'; the flag list only
	// on -h.
	fl.SetOutput(io.Discard)
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fl.SetOutput(os.Stderr)
			fl.Usage()
			return 0
		}
		return usageError("bench", err.Error())
	}
	if fl.NArg() > 0 {
		return usageError("bench", fmt.Sprintf("unexpected argument %q; the bench takes only flags", fl.Arg(0)))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *serveBaseline != "" {
		if err := bench.ServeBaseline(ctx, *serveBaseline, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "ramproc bench: baseline server: %v\n", err)
			return 1
		}
		return 0
	}

	if *serveLib != "" {
		serve := bench.ServeLib
		switch *serveLibKind {
		case "gofuse-tree":
			serve = bench.ServeGoFuseTree
		case "lib-perop":
			serve = bench.ServeLibPerOpen
		}
		if err := serve(ctx, *serveLib, *serveLibFiles, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "ramproc bench: %s server: %v\n", *serveLibKind, err)
			return 1
		}
		return 0
	}

	o := def
	if *quick {
		o = bench.QuickOptions()
	} else {
		o.Duration, o.Reps, o.MemDeadline = *duration, *reps, *memDeadline
		var err error
		if o.FileSize, err = benchParseSize(*fileSize); err != nil {
			fmt.Fprintf(os.Stderr, "ramproc bench: -file-size: %v\n", err)
			return exitUsage
		}
		if o.MemSize, err = benchParseSize(*memSize); err != nil {
			fmt.Fprintf(os.Stderr, "ramproc bench: -mem-size: %v\n", err)
			return exitUsage
		}
	}
	o.Engine = *engine
	o.Targets = benchSplitList(*targets)
	o.Workloads = benchSplitList(*workloads)
	if !*quiet {
		o.Log = os.Stderr
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ramproc bench: %v\n", err)
		return 1
	}
	o.Ramproc = *ramproc
	if o.Ramproc == "" {
		o.Ramproc = exe
	}
	o.BaselineCommand = func(mountpoint string) *exec.Cmd {
		return exec.Command(exe, "bench", "--"+serveBaselineFlag, mountpoint)
	}
	o.LibCommand = func(kind, mountpoint string, treeFiles int) *exec.Cmd {
		return exec.Command(exe, "bench", "--"+serveLibFlag, mountpoint, "--"+serveLibFlag+"-kind", kind, "--"+serveLibFlag+"-files", strconv.Itoa(treeFiles))
	}
	if !*quick || *libFiles != def.LibTreeFiles {
		o.LibTreeFiles = *libFiles
	}
	if err := o.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "ramproc bench: %v\n", err)
		return exitUsage
	}

	rep, err := bench.Run(ctx, o)
	if rep != nil {
		var werr error
		if *asJSON {
			werr = rep.WriteJSON(os.Stdout)
		} else {
			if *quick {
				// One short repetition on small files measures noise as
				// much as speed: no verdicts on figures like that.
				for i := range rep.Rows {
					rep.Rows[i].Goals = nil
				}
				fmt.Fprintln(os.Stdout, quickNote)
			}
			werr = rep.WriteText(os.Stdout)
		}
		if werr != nil {
			fmt.Fprintf(os.Stderr, "ramproc bench: %v\n", werr)
			return 1
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			err = errors.New("interrupted; the report above is partial")
		}
		fmt.Fprintf(os.Stderr, "ramproc bench: %v\n", err)
		return 1
	}
	if rep.Failed {
		fmt.Fprintln(os.Stderr, "ramproc bench: some targets or runs failed; see the notes")
		return 1
	}
	return 0
}

// quickNote heads the table of a -quick run.
const quickNote = "-quick: one short repetition on small files; the figures are indicative only and no goals are judged (run without -quick for that)"

func benchSplitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// benchParseSize reads a data size for the bench: parseSize's format (64m,
// 1g, 4096), which must be positive.
func benchParseSize(s string) (int64, error) {
	n, err := parseSize(s)
	if err == nil && n <= 0 {
		err = fmt.Errorf("%q: the bench needs a positive size, e.g. 64m", s)
	}
	return n, err
}

func benchSizeFlag(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "G"
	case n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "M"
	}
	return strconv.FormatInt(n, 10)
}
