package testenv

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// AdoptOrphans makes this test process the reaper of the processes its
// children leave behind, until t ends: a restarted server is the child of
// the server it replaced, which exits, and the test must still wait for it
// (Reap). The flag is cleared when t ends (its cleanups registered before
// this one have run by then): left set, a later test's orphan (a server a
// shell started in the background) would become this process's child and,
// never waited for, stay a zombie that `kill -0` keeps finding alive.
func AdoptOrphans(t testing.TB) {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0); err != nil {
			t.Errorf("prctl(PR_SET_CHILD_SUBREAPER, 0): %v", err)
		}
	})
}

// Reap waits at most d for pid, a child or an orphan this process adopted
// (AdoptOrphans), to exit, and reports an exit status other than 0. Until
// its parent has exited the process is not yet this one's (ECHILD), so
// that is waited out too.
func Reap(pid int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		switch {
		case err == nil && got == pid && (ws.Exited() || ws.Signaled()):
			if ws.ExitStatus() != 0 {
				return fmt.Errorf("process %d: exit status %d (%v)", pid, ws.ExitStatus(), ws.Signal())
			}
			return nil
		case err != nil && err != unix.ECHILD:
			return err
		case time.Now().After(deadline):
			return fmt.Errorf("process %d did not exit within %v", pid, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
