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
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ramproc/ramproc/cgroupfs"
	"github.com/ramproc/ramproc/cgroupfs/procview"
	"github.com/ramproc/ramproc/fusebridge"
)

const usage = "usage: cgroupfs [-o noloadavg,noswap] MOUNTPOINT (as root; -h for help)"

const help = usage + `

Serves, until SIGINT or SIGTERM, the files below MOUNTPOINT that a
container bind-mounts over its own (mount --bind MOUNTPOINT/proc/meminfo
/proc/meminfo); each reader sees its own cgroup's figures.

  -o noloadavg  leave proc/loadavg out (LXCFS serves it only with -l)
  -o noswap     a confined reader sees no swap (LXCFS's -u)
  -o bycgroup_maxage=DURATION
                by-cgroup's files are never read older than this (default
                100ms), and are read from the kernel's cache in between
  -h            this help
`

func main() {
	o, mnt, err := parseArgs(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		fmt.Print(help)
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cgroupfs: %v; %s\n", err, usage)
		os.Exit(2)
	}
	if err := run(mnt, o); err != nil {
		fmt.Fprintln(os.Stderr, "cgroupfs:", err)
		os.Exit(1)
	}
}

// parseArgs reads [-o OPTS]... MOUNTPOINT.
func parseArgs(args []string) (cgroupfs.Options, string, error) {
	var o cgroupfs.Options
	fs := flag.NewFlagSet("cgroupfs", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
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
			return o, "", err
		}
		return o, "", errors.New(strings.TrimPrefix(err.Error(), "invalid value "))
	}
	if fs.NArg() != 1 || fs.Arg(0) == "" {
		return o, "", fmt.Errorf("want one MOUNTPOINT, got %d arguments", fs.NArg())
	}
	return o, fs.Arg(0), nil
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
	// Catch the signals before mounting: one arriving in between must
	// unmount too, not kill the server under a live mount.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	// The zero Options let every user reach the files when root mounts
	// (a container's processes run as users of their own).
	srv, err := fusebridge.Mount(mnt, fusebridge.Options{})
	if err != nil {
		return err
	}
	if err := cgroupfs.Publish(srv.Root(), v, o); err != nil {
		srv.Unmount()
		return err
	}
	for _, p := range cgroupfs.Paths(o) {
		fmt.Println(filepath.Join(srv.Mountpoint(), p))
	}
	fmt.Fprintln(os.Stderr, "cgroupfs: serving; Ctrl-C or SIGTERM unmounts")
	<-stop
	return srv.Unmount()
}
