// Command cgroupfs serves a cgroup-aware /proc, as LXCFS does for
// containers: MOUNTPOINT/proc/meminfo shows the memory limit and usage of
// the reading process's own cgroup, proc/cpuinfo and
// sys/devices/system/cpu/online its cpuset, proc/stat its CPUs and CPU
// time, and so on (package cgroupfs lists the files and their rules). A
// container bind-mounts the files over its own
// (mount --bind MOUNTPOINT/proc/meminfo /proc/meminfo).
//
//	go install github.com/ramproc/ramproc/cmd/cgroupfs@latest
//	cgroupfs [-o OPTIONS] MOUNTPOINT     (as root)
//
// It serves in the foreground, as lxcfs -f does, until SIGINT or SIGTERM,
// then unmounts and exits 0. OPTIONS is a comma-separated list:
//
//	noloadavg  no proc/loadavg (LXCFS serves it only with -l)
//	noswap     a confined reader sees no swap (LXCFS's -u)
//	loadavg, swap  the defaults, spelled out
//	bycgroup_maxage=DURATION  the freshness bound of by-cgroup's files
//	           (default 100ms): never read older, and read from the
//	           kernel's cache in between
//
// A server restarts without a trace (an upgrade: the binary on disk now
// takes the mount over, and containers that bind-mounted its files never
// see an error) on SIGUSR2 or when asked by
//
//	cgroupfs -restart MOUNTPOINT
//
// which prints the new server's pid (systemctl reload runs it).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/ramproc/ramproc/cgroupfs"
	"github.com/ramproc/ramproc/cgroupfs/loadavg"
	"github.com/ramproc/ramproc/cgroupfs/procview"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/service"
)

const usage = "usage: cgroupfs [-o noloadavg,noswap] MOUNTPOINT, or cgroupfs -restart MOUNTPOINT (as root; -h for help)"

const help = usage + `

Serves, until SIGINT or SIGTERM, the files below MOUNTPOINT that a
container bind-mounts over its own (mount --bind MOUNTPOINT/proc/meminfo
/proc/meminfo); each reader sees its own cgroup's figures.

  -o noloadavg  leave proc/loadavg out (LXCFS serves it only with -l)
  -o noswap     a confined reader sees no swap (LXCFS's -u)
  -o bycgroup_maxage=DURATION
                by-cgroup's files are never read older than this (default
                100ms), and are read from the kernel's cache in between
  -restart      restart the server of MOUNTPOINT with the cgroupfs binary
                on disk now, without unmounting: bind mounts of its files
                and open descriptors keep working (SIGUSR2 to the server
                does the same); prints the new server's pid
  -h            this help
`

func main() {
	o, mnt, restart, err := parseArgs(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		fmt.Print(help)
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cgroupfs: %v; %s\n", err, usage)
		os.Exit(2)
	}
	if restart {
		err = askRestart(mnt)
	} else {
		setGC()
		err = run(mnt, o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cgroupfs:", err)
		os.Exit(1)
	}
}

// gcPercent is the server's GOGC. Most of its heap lives as long as it
// does (go-fuse's request buffers, one per goroutine waiting for a
// request, and the by-cgroup tree); what it allocates per open is small
// and short-lived. At Go's default of 100 the heap grows to twice what
// lives before a collection, and the runtime keeps the pages it grew to;
// at 50, in three pairs of side-by-side benchmark runs (docs/cgroupfs.md),
// the server's RSS after the runs was 15.9-16.3 MiB against 19.1-23.8
// (18.5-23.2 against 23.2-27.2 after 100 cgroups were read through
// by-cgroup), for collections twice as often, whose cost the benchmark's
// noise did not show; the whole benchmark, whose peak comes from other
// rounds, ends about as high either way. A GOGC in the environment wins.
const gcPercent = 50

// setGC sets gcPercent unless GOGC is set.
func setGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
}

// parseArgs reads [-o OPTS]... [-restart] MOUNTPOINT.
func parseArgs(args []string) (cgroupfs.Options, string, bool, error) {
	var o cgroupfs.Options
	fs := flag.NewFlagSet("cgroupfs", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	restart := fs.Bool("restart", false, "restart the server of MOUNTPOINT")
	fs.Func("o", "options", func(s string) error {
		for _, opt := range strings.Split(s, ",") {
			switch opt {
			case "loadavg":
				o.NoLoadavg = false
			case "noloadavg":
				o.NoLoadavg = true
			case "swap":
				o.NoSwap = false
			case "noswap":
				o.NoSwap = true
			case "":
			default:
				if v, ok := strings.CutPrefix(opt, "bycgroup_maxage="); ok {
					d, err := time.ParseDuration(v)
					if err != nil || d <= 0 {
						return fmt.Errorf("bycgroup_maxage=%s: want a duration above 0, such as 100ms or 1s", v)
					}
					o.ByCgroupMaxAge = d
					continue
				}
				return fmt.Errorf("unknown option %q (known: loadavg, noloadavg, swap, noswap, bycgroup_maxage=DURATION)", opt)
			}
		}
		return nil
	})
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, "", false, err
		}
		return o, "", false, errors.New(strings.TrimPrefix(err.Error(), "invalid value "))
	}
	if fs.NArg() != 1 || fs.Arg(0) == "" {
		return o, "", false, fmt.Errorf("want one MOUNTPOINT, got %d arguments", fs.NArg())
	}
	return o, fs.Arg(0), *restart, nil
}

func run(mnt string, o cgroupfs.Options) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root: it mounts FUSE and reads every process's cgroups (try sudo)")
	}
	v, err := procview.New()
	if err != nil {
		return fmt.Errorf("reading the cgroup mounts: %w", err)
	}
	defer v.Close()
	say := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// Catch the signals before mounting: one arriving in between must
	// unmount too, not kill the server under a live mount.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	// A process started by a restart adopts its predecessor's mount in
	// Mount, and its loadavg figures below.
	inheriting := fusebridge.Inheriting()
	// Otherwise the zero Options: they let every user reach the files
	// when root mounts (a container's processes run as users of their
	// own).
	srv, err := fusebridge.Mount(mnt, fusebridge.Options{
		Restartable: true,
		Handover:    handover(v.Load, o),
		// Every file is small and read whole; each request reader's
		// buffer is this size (1 MiB by default: 7 of the 7.5 MiB of heap
		// in use were those buffers).
		MaxWrite: 128 << 10,
	})
	if err != nil {
		return err
	}
	// Before Ready, an adopting server must not unmount: a refusal leaves
	// the old process serving.
	abandon := srv.Unmount
	if inheriting {
		abandon = func() error { srv.Refuse(errors.New("the new process could not build its tree")); return nil }
		if err := adopt(srv, v.Load, o); err != nil {
			return err
		}
	}
	if err := cgroupfs.Publish(srv.Root(), v, o); err != nil {
		abandon()
		return err
	}
	// Listening before Ready: the next restart may be asked for as soon
	// as the predecessor reports this process; it is acted on from Ready
	// on.
	startRestarts, stopRestarts := service.ServeRestarts(srv, "cgroupfs", say)
	defer stopRestarts()
	if err := srv.Ready(); err != nil { // a restart's: serve from here on
		return err
	}
	startRestarts()
	if inheriting {
		say.Info("serving after a restart", "mountpoint", srv.Mountpoint(), "pid", os.Getpid())
	} else {
		for _, p := range cgroupfs.Paths(o) {
			fmt.Println(filepath.Join(srv.Mountpoint(), p))
		}
		fmt.Fprintln(os.Stderr, "cgroupfs: serving; Ctrl-C or SIGTERM unmounts")
	}
	// For systemd (Type=notify); after a restart the predecessor has named
	// this process MAINPID.
	if err := service.Notify("READY=1"); err != nil {
		say.Warn("cannot tell the service manager that the files are served", "err", err)
	}
	gone := make(chan struct{})
	go func() { srv.Wait(); close(gone) }()
	select {
	case <-stop:
	case <-gone:
		if srv.Restarted() {
			// The new process serves the mount: leave it mounted, once
			// the requester has its answer.
			stopRestarts()
			return nil
		}
		say.Info("unmounted from outside; stopping", "mountpoint", srv.Mountpoint())
	}
	service.Notify("STOPPING=1")
	return srv.Unmount()
}

// restartState is what a server hands to the process that replaces it:
// the load averages, so that proc/loadavg goes on from its figures rather
// than from zero (a re-sampled average would need 15 minutes to be right
// again), and the options, which must be the same.
type restartState struct {
	Version string // restartStateVersion
	Options cgroupfs.Options
	Loads   map[string]loadavg.Load `json:",omitempty"`
}

const restartStateVersion = "cgroupfs/1"

// handover is the mount's Options.Handover.
func handover(load *loadavg.Sampler, o cgroupfs.Options) func() ([]byte, []*os.File, error) {
	return func() ([]byte, []*os.File, error) {
		data, err := json.Marshal(restartState{Version: restartStateVersion, Options: o, Loads: load.Loads()})
		return data, nil, err
	}
}

// adopt takes the predecessor's state over, or refuses it (the old
// process then goes on serving) when this binary cannot read it or was
// started with other options.
func adopt(srv *fusebridge.Server, load *loadavg.Sampler, o cgroupfs.Options) error {
	data, _, _ := srv.Inherited()
	var st restartState
	if err := json.Unmarshal(data, &st); err != nil || st.Version != restartStateVersion {
		return srv.Refuse(fmt.Errorf("the running server's state (%.40q) is not one this cgroupfs reads (%s)", data, restartStateVersion))
	}
	if st.Options != o {
		return srv.Refuse(fmt.Errorf("the running server serves with options %+v, this one was given %+v", st.Options, o))
	}
	load.Restore(st.Loads)
	return nil
}

// askRestart is cgroupfs -restart MOUNTPOINT.
func askRestart(mnt string) error {
	abs, err := filepath.Abs(mnt)
	if err != nil {
		return err
	}
	pid, err := service.Ask("cgroupfs", abs, 2*time.Minute)
	if errors.Is(err, service.ErrNotServed) {
		return fmt.Errorf("no cgroupfs server serves %s; start one with 'cgroupfs %s'", abs, abs)
	}
	if err != nil {
		return err
	}
	fmt.Printf("%s: served by process %d\n", abs, pid)
	return nil
}
