package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/ramfile"
)

func runMount(args []string) int {
	fl := flag.NewFlagSet("ramproc mount", flag.ContinueOnError)
	fl.SetOutput(io.Discard) // errors are reported in one line below
	name := fl.String("name", "ramfile", "name of the RAM file in the mount")
	modeStr := fl.String("mode", "0666", "permission bits of the RAM file, in octal")
	maxSizeStr := fl.String("max-size", "50%", "capacity of the RAM file: bytes with an optional k/m/g/t suffix (powers of 1024), a percentage of physical RAM, or 0 for no limit; the default is tmpfs's")
	// As root the file is meant for every local user, as /proc files are;
	// unprivileged mounts need user_allow_other in /etc/fuse.conf for it.
	allowOther := fl.Bool("allow-other", fusebridge.DefaultAllowOther(), "let other users reach the file (the allow_other mount option; default on when root)")
	ptStr := fl.String("passthrough", "auto", "FUSE passthrough: auto (when root on Linux >= 6.9), on (fail without it) or off (forward every read and write through this process)")
	noOpen := fl.Bool("no-open", false, "answer OPEN with ENOSYS: the kernel then sends no OPEN/RELEASE and caches every file across opens (open+read+close near tmpfs speed); implies -passthrough off")
	stats := fl.Bool("stats", false, "also publish a read-only 'stats' file with live server counters (refreshed once a second where it is cached: with passthrough it is served over a second, no-open connection, so reading it costs no request)")
	debug := fl.Bool("debug", false, "log every FUSE request to stderr")
	fl.Usage = func() {} // flag calls it on every error; help is printed below
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(fl, "usage: ramproc mount [flags] MOUNTPOINT\n\nServes a RAM-backed file in MOUNTPOINT until Ctrl-C or SIGTERM and prints the file's path on stdout.")
			return 0
		}
		return usageError("mount", err.Error())
	}
	if fl.NArg() != 1 {
		return usageError("mount", "give exactly one MOUNTPOINT directory, e.g. ramproc mount /tmp/ramproc")
	}
	mode, err := strconv.ParseUint(*modeStr, 8, 32)
	if err != nil || mode > 0o7777 {
		return usageError("mount", fmt.Sprintf("-mode %q is not an octal permission such as 0666", *modeStr))
	}
	capacity, err := parseSize(*maxSizeStr)
	if err != nil {
		return usageError("mount", fmt.Sprintf("-max-size: %v", err))
	}
	var pt fusebridge.Passthrough
	if *noOpen && *ptStr == "auto" {
		*ptStr = "off"
	}
	switch *ptStr {
	case "auto":
		pt = fusebridge.PassthroughAuto
	case "on":
		pt = fusebridge.PassthroughRequired
	case "off":
		pt = fusebridge.PassthroughOff
	default:
		return usageError("mount", fmt.Sprintf("-passthrough %q: use auto, on or off", *ptStr))
	}

	// Catch the signals before anything is mounted, so that a signal
	// arriving at any point from here on unmounts cleanly.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	level := slog.LevelWarn
	if *debug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	store, err := bytestore.New(bytestore.Options{Capacity: capacity})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ramproc mount: cannot allocate the RAM file: %v\n", err)
		return 1
	}
	defer store.Close()

	srv, err := fusebridge.Mount(fl.Arg(0), fusebridge.Options{
		AllowOther:  *allowOther,
		OwnerOnly:   !*allowOther,
		Passthrough: pt,
		Logger:      logger,
		Debug:       *debug,
		NoOpen:      *noOpen,
		// The stats file then costs no request to cat, while the RAM file
		// keeps passthrough.
		NoOpenHandlers: true,
	})
	if err != nil {
		return usageError("mount", err.Error())
	}
	file := ramfile.New(store)
	if _, err := srv.Create(*name, handler.ModeFromUnix(uint32(mode)), file); err != nil {
		srv.Unmount()
		return usageError("mount", fmt.Sprintf("-name %q: %v", *name, err))
	}
	if *stats {
		se, err := srv.Create("stats", 0o444, statsHandler(store, srv, time.Now()))
		if err != nil {
			srv.Unmount()
			return usageError("mount", fmt.Sprintf("publishing stats: %v (choose another -name)", err))
		}
		if *noOpen || srv.HandlersNoOpen() {
			// The kernel serves the generated text from its cache until
			// the entry is invalidated: refresh it once a second.
			go func() {
				t := time.NewTicker(time.Second)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
						se.Invalidate()
					}
				}
			}()
		}
	}

	path := filepath.Join(srv.Mountpoint(), *name)
	// The human line first: the path on stdout is what scripts wait for,
	// so by the time it appears everything else has been said.
	fmt.Fprintf(os.Stderr, "ramproc: serving the RAM file %s (mode %04o, max size %s, %s); Ctrl-C unmounts\n",
		path, mode, describeSize(capacity), ioPath(srv))
	fmt.Println(path)

	gone := make(chan struct{})
	go func() { srv.Wait(); close(gone) }()
	select {
	case <-ctx.Done():
	case <-gone:
		fmt.Fprintf(os.Stderr, "ramproc: %s was unmounted from outside; stopping\n", srv.Mountpoint())
	}
	if err := srv.Unmount(); err != nil {
		fmt.Fprintf(os.Stderr, "ramproc mount: %v\n", err)
		return 1
	}
	return 0
}

func ioPath(srv *fusebridge.Server) string {
	if srv.Passthrough() {
		return "kernel passthrough"
	}
	return "I/O forwarded through this process"
}

// statsHandler is a generated file, /proc style: its text is made afresh at
// every open from the live state of the store.
func statsHandler(store *bytestore.Store, srv *fusebridge.Server, start time.Time) handler.Generated {
	return func(ctx context.Context) ([]byte, error) {
		st, err := store.Stat()
		if err != nil {
			return nil, err
		}
		return fmt.Appendf(nil, "size %d\nblocks %d\npassthrough %t\nuptime_seconds %.0f\n",
			st.Size, st.Blocks, srv.Passthrough(), time.Since(start).Seconds()), nil
	}
}

// printHelp prints a command's synopsis and its flags to stderr.
func printHelp(fl *flag.FlagSet, synopsis string) {
	fmt.Fprintf(os.Stderr, "%s\n\nflags:\n", synopsis)
	fl.SetOutput(os.Stderr)
	fl.PrintDefaults()
	fl.SetOutput(io.Discard)
}

// usageError prints a one-line error that says what to do and returns the
// usage exit status.
func usageError(cmd, msg string) int {
	fmt.Fprintf(os.Stderr, "ramproc %s: %s (run 'ramproc %s -h' for help)\n", cmd, msg, cmd)
	return exitUsage
}
