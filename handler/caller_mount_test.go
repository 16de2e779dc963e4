package handler_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// TestCallerTidAndPid: a read from a thread that is not the process's
// main one (any goroutine of a Go program may run on one) names that
// thread in Caller.Tid, and Caller.Pid resolves the process.
func TestCallerTidAndPid(t *testing.T) {
	srv := mountFS(t, fusebridge.Options{})
	p := publish(t, srv, "who", 0o444, handler.PerCallerGenerated(func(ctx context.Context) ([]byte, error) {
		c, ok := handler.CallerOf(ctx)
		if !ok {
			return nil, fmt.Errorf("no caller")
		}
		pid, err := c.Pid()
		return fmt.Appendf(nil, "tid %d pid %d %v\n", c.Tid, pid, err), nil
	}))
	type res struct {
		got, want string
	}
	done := make(chan res)
	read := func() {
		want := fmt.Sprintf("tid %d pid %d <nil>\n", unix.Gettid(), unix.Getpid())
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- res{err.Error(), want}
			return
		}
		defer unix.Close(fd)
		buf := make([]byte, 100)
		n, err := unix.Read(fd, buf)
		if err != nil {
			done <- res{err.Error(), want}
			return
		}
		done <- res{string(buf[:n]), want}
	}
	go func() {
		// Never unlocked: a locked thread exits with its goroutine.
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			read()
			return
		}
		// On the main thread, which this goroutine now holds: another
		// goroutine runs on another thread.
		inner := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			read()
			close(inner)
		}()
		<-inner
	}()
	r := <-done
	if r.got != r.want {
		t.Errorf("read from a thread of its own: %q, want %q", r.got, r.want)
	}
	if r.want == fmt.Sprintf("tid %d pid %d <nil>\n", unix.Getpid(), unix.Getpid()) {
		t.Error("the reading thread was the main one: the test proves nothing")
	}
}
