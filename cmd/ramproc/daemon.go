package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// readyEnv names the descriptor on which a server started in the
// background reports that it serves ("ok", then close). Its stdout and
// stderr are pipes to the starting process until then, so everything it
// says before (the error of a mount that failed) reaches the caller.
const readyEnv = "RAMPROC_READY_FD"

// readyTimeout bounds the wait for a background server: mounting takes
// milliseconds, so a server silent for this long is stuck and is killed.
const readyTimeout = 60 * time.Second

// runInBackground starts this program again with the same arguments as a
// server in its own session and returns once the server reports that the
// file is served (0), or with the server's exit status if it could not
// mount: what mount(8) and mount.fuse3 expect of a FUSE server, and what
// libfuse's fuse_daemonize does.
func runInBackground() int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ramproc: cannot find this program to start it in the background: %v; run it with -f to stay in the foreground\n", err)
		return 1
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ramproc: %v\n", err)
		return 1
	}
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), readyEnv+"=3")
	cmd.Stdout, cmd.Stderr = outW, errW
	cmd.ExtraFiles = []*os.File{readyW}
	// Its own session: the caller's terminal and process group (mount(8)
	// run from a shell, say) do not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	readyW.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ramproc: cannot start the server in the background: %v; run it with -f to stay in the foreground\n", err)
		return 1
	}
	var copies sync.WaitGroup
	copies.Add(2)
	go func() { defer copies.Done(); io.Copy(os.Stdout, outR) }()
	go func() { defer copies.Done(); io.Copy(os.Stderr, errR) }()
	ready := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(readyR); ready <- b }()
	var msg []byte
	select {
	case msg = <-ready:
	case <-time.After(readyTimeout):
		cmd.Process.Kill()
		msg = <-ready
	}
	// The server has let go of the pipes: it serves, or it is gone.
	copies.Wait()
	if string(msg) == "ok" {
		cmd.Process.Release()
		return 0
	}
	err = cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code > 0 {
		return code
	}
	fmt.Fprintf(os.Stderr, "ramproc: the server stopped before it served the file (%v)\n", err)
	return 1
}

// backgroundChild reports whether this process is a server started by
// runInBackground, and returns the descriptor to report readiness on.
func backgroundChild() (*os.File, bool) {
	v := os.Getenv(readyEnv)
	if v == "" {
		return nil, false
	}
	os.Unsetenv(readyEnv) // not for the programs it may start
	fd, err := strconv.Atoi(v)
	if err != nil {
		return nil, false
	}
	return os.NewFile(uintptr(fd), "ready"), true
}

// reportReady tells the starting process that the file is served, after
// pointing stdout and stderr at /dev/null: the starter then sees its pipes
// close and returns, and nothing this server writes later can block on
// them or die of SIGPIPE.
func reportReady(ready *os.File) {
	if null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		unix.Dup3(int(null.Fd()), 1, 0)
		unix.Dup3(int(null.Fd()), 2, 0)
		null.Close()
	}
	ready.Write([]byte("ok"))
	ready.Close()
}
