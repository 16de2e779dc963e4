// Command cgroupfs serves a cgroup-aware /proc, as LXCFS does for
// containers: MOUNTPOINT/proc/meminfo shows the memory limit and usage of
// the reading process's own cgroup, proc/cpuinfo and
// sys/devices/system/cpu/online its cpuset, proc/uptime the age of its
// cgroup's oldest process, and proc/self and proc/<pid>/status its
// cgroup's processes. A container bind-mounts the files over its own
// (mount --bind MOUNTPOINT/proc/meminfo /proc/meminfo).
//
//	go run ./examples/cgroupfs MOUNTPOINT   (as root)
//
// It serves until SIGINT or SIGTERM, then unmounts. It is a showcase of
// the handler API: per-caller files, a dynamic directory, a computed
// symbolic link; the cgroup reading is in ./cgroup, the /proc formats in
// ./procview.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/ramproc/ramproc/examples/cgroupfs/procview"
	"github.com/ramproc/ramproc/fusebridge"
)

func main() {
	if len(os.Args) != 2 || os.Args[1] == "" || os.Args[1][0] == '-' {
		fmt.Fprintln(os.Stderr, "usage: cgroupfs MOUNTPOINT (serves MOUNTPOINT/proc/meminfo and friends for the reader's cgroup; run as root)")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "cgroupfs:", err)
		os.Exit(1)
	}
}

func run(mnt string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root: it mounts FUSE and reads every process's cgroups (try sudo)")
	}
	v, err := procview.New()
	if err != nil {
		return fmt.Errorf("reading the cgroup mounts: %w", err)
	}
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
	if err := publish(srv.Root(), v); err != nil {
		srv.Unmount()
		return err
	}
	for _, p := range paths {
		fmt.Println(filepath.Join(srv.Mountpoint(), p))
	}
	fmt.Fprintln(os.Stderr, "cgroupfs: serving; Ctrl-C or SIGTERM unmounts")
	<-stop
	return srv.Unmount()
}
