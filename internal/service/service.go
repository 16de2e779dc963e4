// Package service is what the project's long-running server commands
// (ramproc mount, cgroupfs) share towards whoever supervises them: the
// sd_notify datagram for systemd, and restarts without a trace
// (fusebridge's Options.Restartable) asked for by SIGUSR2 or by a request on
// the server's control socket, which the commands' restart client
// (Ask) sends and whose outcome it reports.
package service

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
)

// Notify sends state (e.g. "READY=1") to the service manager, as
// sd_notify(3) does: one datagram to the unix socket named by
// NOTIFY_SOCKET ("@name" is an abstract socket, which Go's net package
// maps itself). Without NOTIFY_SOCKET (not started by systemd with
// Type=notify) it does nothing. The protocol is this one datagram; no
// library is needed for it.
func Notify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

// controlName is the abstract unix socket on which the server of pid,
// running the command name, takes restart requests. The command's name is
// in it so that one command's client never asks another's server.
func controlName(name string, pid int) string {
	return "@" + name + "-restart-" + strconv.Itoa(pid)
}

// ServeRestarts restarts srv on SIGUSR2 and on requests on its control
// socket (Ask, with the same name), from the call of the returned start
// until the call of stop. It is called before srv.Ready, start after it:
// the process that replaces this one is named the mount's server while its
// Ready runs, and a restart asked of it meanwhile (SIGUSR2, whose default
// would kill it, or a request) waits for start rather than failing. A
// failed restart is logged and reported to the requester; the server goes
// on serving. A successful one ends srv.Wait; the program then calls stop,
// which returns once the requester has its answer, and exits without
// unmounting.
func ServeRestarts(srv *fusebridge.Server, name string, say *slog.Logger) (start, stop func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR2)
	reqs := make(chan net.Conn)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: controlName(name, os.Getpid()), Net: "unix"})
	if err != nil {
		say.Warn("no control socket for '"+name+" restart'; SIGUSR2 still restarts", "err", err)
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
	started := make(chan struct{})
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case <-started:
		case <-done:
			return
		}
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
			Notify(fmt.Sprintf("MAINPID=%d", pid))
			if c != nil {
				fmt.Fprintf(c, "ok %d\n", pid)
				c.Close()
			}
			return
		}
	}()
	// Waits for the loop: after a restart, until the requester has its
	// answer.
	var startOnce, once sync.Once
	start = func() { startOnce.Do(func() { close(started) }) }
	return start, func() {
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

// ErrNotServed is Ask's error when no server of the command holds the
// mount point; the command says how to start one.
var ErrNotServed = errors.New("no server serves the mount point")

// Ask asks the server of the absolute mount point mnt, running the command
// name, to restart, and returns the pid of the process that serves the
// mount afterwards. Any other error than ErrNotServed is one line (without
// the command's name) saying what happened and what to do; on a refusal the
// old server goes on serving.
func Ask(name, mnt string, timeout time.Duration) (newPid int, err error) {
	pid := fusebridge.ServerPID(mnt)
	if pid == 0 {
		return 0, ErrNotServed
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: controlName(name, pid), Net: "unix"})
	if err != nil {
		return 0, fmt.Errorf("process %d serving %s takes no restart requests (%v); an older %s? send it SIGUSR2, or stop and mount again", pid, mnt, err, name)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	fmt.Fprintln(c, "restart")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("process %d serving %s gave no answer (%v); see its log", pid, mnt, err)
	}
	line = strings.TrimSpace(line)
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		return 0, fmt.Errorf("%s; process %d goes on serving %s", msg, pid, mnt)
	}
	newPid, err = strconv.Atoi(strings.TrimPrefix(line, "ok "))
	if err != nil {
		return 0, fmt.Errorf("unexpected answer %q from process %d", line, pid)
	}
	return newPid, nil
}
