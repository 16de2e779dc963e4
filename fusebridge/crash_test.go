package fusebridge_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/testenv"
)

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
	armed := filepath.Join(t.TempDir(), "armed")
	cmd.Env = append(os.Environ(), childEnv+"=restartable", armedEnv+"="+armed)
	lines := startReady(t, cmd, func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("ramproc supervise after SIGTERM: %v", err)
		}
		if got := testenv.MountsUnder(t, filepath.Dir(mnt)); len(got) != 0 {
			t.Errorf("mounts left behind: %q", got)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	type result struct {
		data []byte
		err  error
	}
	if err := os.WriteFile(armed, nil, 0o644); err != nil {
		t.Fatal(err)
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
