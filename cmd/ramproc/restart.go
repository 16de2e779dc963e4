package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
)

// A restart hands the running mount to a new process of the binary on disk
// now (fusebridge's Options.Restartable): the FUSE connections, every open
// descriptor, and the RAM file's bytes, which live in shmem and are passed
// as the store's descriptor. Readers and writers see a pause, not an error.
// SIGUSR2 asks a server for it; 'ramproc restart MOUNTPOINT' asks through
// the server's control socket and reports the outcome.

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

// controlName is the abstract unix socket on which the server of pid takes
// restart requests.
func controlName(pid int) string { return "@ramproc-restart-" + strconv.Itoa(pid) }

// serveRestarts restarts srv on SIGUSR2 and on requests on its control
// socket, until the returned stop is called. A failed restart is logged and
// reported; the server goes on serving. A successful one ends srv.Wait.
func serveRestarts(srv *fusebridge.Server, say *slog.Logger) (stop func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR2)
	reqs := make(chan net.Conn)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: controlName(os.Getpid()), Net: "unix"})
	if err != nil {
		say.Warn("no control socket for 'ramproc restart'; SIGUSR2 still restarts", "err", err)
	} else {
		go func() {
			for {
				c, err := ln.AcceptUnix()
				if err != nil {
					return
				}
				if !allowedPeer(c) {
					fmt.Fprintln(c, "error only root or the server's own user may restart it")
					c.Close()
					continue
				}
				reqs <- c
			}
		}()
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			var c net.Conn
			select {
			case <-done:
				return
			case <-sig:
			case c = <-reqs:
				bufio.NewReader(c).ReadString('\n')
			}
			pid, err := srv.Restart()
			if err != nil {
				say.Error("restart failed; still serving", "err", err)
				if c != nil {
					fmt.Fprintf(c, "error %s\n", strings.Join(strings.Fields(err.Error()), " "))
					c.Close()
				}
				continue
			}
			say.Info("restarted: the mount is served by the new process", "pid", pid)
			// Told while this process is still the service's main one:
			// systemd takes MAINPID= from it (NotifyAccess=main).
			sdNotify(fmt.Sprintf("MAINPID=%d", pid))
			if c != nil {
				fmt.Fprintf(c, "ok %d\n", pid)
				c.Close()
			}
			return
		}
	}()
	// Waits for the loop: after a restart, until the requester has its
	// answer.
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(sig)
			close(done)
			<-finished
			if ln != nil {
				ln.Close()
			}
		})
	}
}

// allowedPeer admits root and the server's own user.
func allowedPeer(c *net.UnixConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	return err == nil && cred != nil && (cred.Uid == 0 || int(cred.Uid) == os.Geteuid())
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
	pid := fusebridge.ServerPID(mnt)
	if pid == 0 {
		fmt.Fprintf(os.Stderr, "ramproc restart: no ramproc server serves %s; start one with 'ramproc mount %s'\n", mnt, mnt)
		return 1
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: controlName(pid), Net: "unix"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ramproc restart: process %d serving %s takes no restart requests (%v); an older ramproc? send it SIGUSR2, or stop and mount again\n", pid, mnt, err)
		return 1
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(*timeout))
	fmt.Fprintln(c, "restart")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Fprintf(os.Stderr, "ramproc restart: process %d serving %s gave no answer (%v); see its log\n", pid, mnt, err)
		return 1
	}
	line = strings.TrimSpace(line)
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		fmt.Fprintf(os.Stderr, "ramproc restart: %s; process %d goes on serving %s\n", msg, pid, mnt)
		return 1
	}
	newPid, err := strconv.Atoi(strings.TrimPrefix(line, "ok "))
	if err != nil {
		fmt.Fprintf(os.Stderr, "ramproc restart: unexpected answer %q from process %d\n", line, pid)
		return 1
	}
	// The version of the binary that now serves: its own answer, from the
	// image it runs (which /proc keeps even if the file was replaced).
	out, _ := exec.Command("/proc/"+strconv.Itoa(newPid)+"/exe", "version").Output()
	ver, _, _ := strings.Cut(string(out), "\n")
	fmt.Printf("%s: served by process %d (%s)\n", mnt, newPid, ver)
	return 0
}
