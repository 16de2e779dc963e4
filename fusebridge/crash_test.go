package fusebridge_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// crashableChild is a restartable program on the library whose file
// "slow" never answers in its first process (the handler blocks, as one
// waiting on a dead peer would) and answers its generation, the number of
// processes before it, in later ones.
func crashableChild(mnt string) int {
	gen := 0
	srv, err := fusebridge.Mount(mnt, fusebridge.Options{
		Restartable: true,
		Handover: func() ([]byte, []*os.File, error) {
			return []byte(strconv.Itoa(gen)), nil, nil
		},
	})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	if data, _, ok := srv.Inherited(); ok {
		n, err := strconv.Atoi(string(data))
		if err != nil {
			fmt.Fprintln(os.Stderr, srv.Refuse(fmt.Errorf("state %q is not a number", data)))
			return 1
		}
		gen = n + 1
	}
	g := gen
	srv.Create("slow", 0o444, handler.Generated(func(context.Context) ([]byte, error) {
		if g == 0 {
			fmt.Println("blocked")
			select {}
		}
		return fmt.Appendf(nil, "%d\n", g), nil
	}))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	if err := srv.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if g == 0 {
		fmt.Println("ready")
	}
	<-sig
	srv.Unmount()
	return 0
}

// A request the server had read and was running when it was killed is
// answered by the next server: under a keeper of its descriptors ('ramproc
// supervise'), the new process has the kernel resend it. The reader sees
// the new process's answer, never an error.
func TestCrashResendsWhatTheDeadServerHeld(t *testing.T) {
	testenv.RequireFUSE(t)
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	bin := testenv.Ramproc(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	cmd := exec.Command(bin, "supervise", os.Args[0], mnt)
	cmd.Env = append(os.Environ(), childEnv+"=crashable")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("ramproc supervise after SIGTERM: %v", err)
		}
		if got := testenv.MountsUnder(t, filepath.Dir(mnt)); len(got) != 0 {
			t.Errorf("mounts left behind: %q", got)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	lines := bufio.NewReader(out)
	if l, _ := lines.ReadString('\n'); l != "ready\n" {
		t.Fatalf("server said %q", l)
	}
	type result struct {
		data []byte
		err  error
	}
	got := make(chan result, 1)
	go func() {
		b, err := os.ReadFile(filepath.Join(mnt, "slow"))
		got <- result{b, err}
	}()
	if l, _ := lines.ReadString('\n'); l != "blocked\n" {
		t.Fatalf("server said %q, want blocked", l)
	}
	pid := fusebridge.ServerPID(mnt)
	if pid <= 0 {
		t.Fatal("no server holds the mount")
	}
	syscall.Kill(pid, syscall.SIGKILL)
	select {
	case r := <-got:
		if r.err != nil || string(r.data) != "1\n" {
			t.Fatalf("read across the crash: %q, %v; want the new server's \"1\\n\"", r.data, r.err)
		}
	case <-time.After(2 * time.Minute):
		// Only against a hang: the new server starts in milliseconds.
		t.Fatal("the request the dead server held was never answered")
	}
	if now := fusebridge.ServerPID(mnt); now == pid || now <= 0 {
		t.Errorf("the mount is held by %d, want the new server (the dead one was %d)", now, pid)
	}
}
