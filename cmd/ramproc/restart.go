package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/service"
)

// A restart hands the running mount to a new process of the binary on disk
// now (fusebridge's Options.Restartable): the FUSE connections, every open
// descriptor, and the RAM file's bytes, which live in shmem and are passed
// as the store's descriptor. Readers and writers see a pause, not an error.
// SIGUSR2 asks a server for it; 'ramproc restart MOUNTPOINT' asks through
// the server's control socket and reports the outcome (package
// internal/service, which cgroupfs shares).

const restartSynopsis = `usage: ramproc restart MOUNTPOINT

Restarts the server of MOUNTPOINT (started by 'ramproc mount') with the
ramproc binary that is on disk now, without unmounting: open descriptors
keep working, and the file keeps its bytes. Prints the new server's pid and
version. If the new binary cannot take the mount over, the running server
goes on serving and the reason is printed.`

// mountState is what a ramproc mount hands to its successor besides the
// store's descriptor (and the metrics listener's, with -metrics-addr).
type mountState struct {
	Version  string // mountStateVersion
	Name     string
	Capacity int64
	Store    json.RawMessage
	Metrics  bool `json:",omitempty"` // a listener descriptor follows the store's
}

const mountStateVersion = "ramproc-mount/1"

// restartHandover is the mount's Options.Handover.
func restartHandover(name string, capacity int64, store **bytestore.Store, ln *net.Listener) func() ([]byte, []*os.File, error) {
	return func() ([]byte, []*os.File, error) {
		fd, meta, err := (*store).Handover()
		if err != nil {
			return nil, nil, err
		}
		files := []*os.File{os.NewFile(uintptr(fd), "store")}
		st := mountState{Version: mountStateVersion, Name: name, Capacity: capacity, Store: meta}
		if tl, ok := (*ln).(*net.TCPListener); ok && tl != nil {
			f, err := tl.File()
			if err != nil {
				return nil, nil, err
			}
			files = append(files, f)
			st.Metrics = true
		}
		data, err := json.Marshal(st)
		return data, files, err
	}
}

// adoptStore takes over the predecessor's store (and metrics listener),
// after checking that it serves what this process was asked to.
func adoptStore(srv *fusebridge.Server, name string, capacity int64, metricsAddr string) (*bytestore.Store, net.Listener, error) {
	data, files, _ := srv.Inherited()
	var st mountState
	if err := json.Unmarshal(data, &st); err != nil || st.Version != mountStateVersion {
		return nil, nil, srv.Refuse(fmt.Errorf("the running server's state (%.40q) is not one this ramproc reads (%s)", data, mountStateVersion))
	}
	switch {
	case st.Name != name:
		return nil, nil, srv.Refuse(fmt.Errorf("the running server serves the file %q, this one was asked for %q", st.Name, name))
	case st.Capacity != capacity:
		return nil, nil, srv.Refuse(fmt.Errorf("the running server's file holds at most %s, this one was asked for %s", describeSize(st.Capacity), describeSize(capacity)))
	case len(files) < 1 || st.Metrics != (len(files) > 1) || st.Metrics != (metricsAddr != ""):
		return nil, nil, srv.Refuse(errors.New("the running server's descriptors do not match its state (-metrics-addr given to only one of them?)"))
	}
	// The store owns a descriptor of its own: the *os.File would close
	// its one when collected.
	fd, err := unix.FcntlInt(files[0].Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, nil, srv.Refuse(fmt.Errorf("the store's descriptor: %w", err))
	}
	files[0].Close()
	store, err := bytestore.Adopt(fd, st.Store)
	if err != nil {
		unix.Close(fd)
		return nil, nil, srv.Refuse(err)
	}
	var ln net.Listener
	if st.Metrics {
		if ln, err = net.FileListener(files[1]); err != nil {
			return nil, nil, srv.Refuse(fmt.Errorf("the metrics listener: %w", err))
		}
		files[1].Close()
	}
	return store, ln, nil
}

// runRestart is 'ramproc restart MOUNTPOINT'.
func runRestart(args []string) int {
	fl := flag.NewFlagSet("ramproc restart", flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	fl.Usage = func() {}
	timeout := fl.Duration("timeout", 2*time.Minute, "how long to wait for the new server")
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(fl, restartSynopsis)
			return 0
		}
		return usageError("restart", err.Error())
	}
	if len(pos) != 1 || pos[0] == "" {
		return usageError("restart", "give exactly one MOUNTPOINT, e.g. ramproc restart /tmp/ramproc")
	}
	mnt, err := filepath.Abs(pos[0])
	if err != nil {
		return usageError("restart", err.Error())
	}
	newPid, err := service.Ask("ramproc", mnt, *timeout)
	if errors.Is(err, service.ErrNotServed) {
		fmt.Fprintf(os.Stderr, "ramproc restart: no ramproc server serves %s; start one with 'ramproc mount %s'\n", mnt, mnt)
		return 1
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ramproc restart: %v\n", err)
		return 1
	}
	// The version of the binary that now serves: its own answer, from the
	// image it runs (which /proc keeps even if the file was replaced).
	out, _ := exec.Command("/proc/"+strconv.Itoa(newPid)+"/exe", "version").Output()
	ver, _, _ := strings.Cut(string(out), "\n")
	fmt.Printf("%s: served by process %d (%s)\n", mnt, newPid, ver)
	return 0
}
