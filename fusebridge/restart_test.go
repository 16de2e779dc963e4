package fusebridge_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// restartableChild is a program on the library that is restartable as the
// README says: Options.Restartable and Handover, its state back from
// Inherited, Ready once the tree is published, Restart on SIGUSR2. Its
// state is the number of restarts so far, published as "generation". Its
// file "slow" answers the generation, except in the first process once
// the file armedEnv names exists: there it never answers (the handler
// blocks, as one waiting on a dead peer would; crash_test.go).
const armedEnv = "FUSEBRIDGE_TEST_ARMED"

func restartableChild(mnt string) int {
	var gen int
	// perOpen: the layout TestRestartPerOpen needs, static Generated files
	// on the connection that keeps OPEN (no NoOpenHandlers), where a
	// restart keeps their inodes.
	perOpen := os.Getenv(perOpenEnv) != ""
	srv, err := fusebridge.Mount(mnt, fusebridge.Options{
		Restartable:        true,
		NoOpenHandlers:     !perOpen,
		PerOpenPassthrough: true,
		Handover: func() ([]byte, []*os.File, error) {
			return []byte(strconv.Itoa(gen)), nil, nil
		},
	})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	inherited := false
	if data, _, ok := srv.Inherited(); ok {
		inherited = true
		if n, err := strconv.Atoi(string(data)); err != nil {
			srv.Refuse(fmt.Errorf("state %q is not a number", data))
			return 1
		} else {
			gen = n + 1
		}
	}
	g := gen
	ge, _ := srv.Create("generation", 0o444, handler.Generated(func(context.Context) ([]byte, error) {
		return fmt.Appendf(nil, "%d\n", g), nil
	}))
	armed := os.Getenv(armedEnv)
	srv.Create("slow", 0o444, handler.Generated(func(context.Context) ([]byte, error) {
		if _, err := os.Stat(armed); g == 0 && armed != "" && err == nil {
			fmt.Println("blocked")
			select {}
		}
		return fmt.Appendf(nil, "%d\n", g), nil
	}))
	d, _ := srv.Root().Mkdir("dir", 0o755)
	d.Create("value", 0o644, handler.NewValue("value\n"))
	// A Generated file on the connection that keeps OPEN, read from a
	// backing file made at open (PerOpenPassthrough): TestRestartPerOpen.
	srv.Create("stat", 0o444, genStat(g))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR2, syscall.SIGTERM)
	if err := srv.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if !inherited {
		fmt.Println("ready")
	} else {
		// The content changed with the process: a no-open connection's
		// kernel cache must drop the old one.
		if err := ge.Invalidate(); err != nil {
			fmt.Fprintln(os.Stderr, "invalidate:", err)
		}
	}
	for s := range sig {
		if s == syscall.SIGTERM {
			srv.Unmount()
			return 0
		}
		if _, err := srv.Restart(); err != nil {
			fmt.Fprintln(os.Stderr, "restart:", err)
			continue
		}
		srv.Wait()
		return 0
	}
	return 0
}

// startReady starts cmd, a server that says "ready" on stdout once it
// serves, with cleanup to run at the test's end, and returns the rest of
// its output.
func startReady(t *testing.T, cmd *exec.Cmd, cleanup func()) *bufio.Reader {
	t.Helper()
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	lines := bufio.NewReader(out)
	if l, _ := lines.ReadString('\n'); l != "ready\n" {
		t.Fatalf("server said %q", l)
	}
	return lines
}

// A program on the library, one of whose files is bind-mounted elsewhere
// (as LXCFS's are into containers), is read in a loop across restarts: by
// path, through the bind, and through a descriptor kept open. No read may
// fail, and the program's own state comes across every restart.
func TestLibraryRestartKeepsReaders(t *testing.T) {
	testenv.RequireFUSE(t)
	testenv.AdoptOrphans(t)
	t.Setenv("GORACE", "atexit_sleep_ms=0") // see handover.go: the held wait for the old's exit
	rounds := 20
	if testenv.RaceEnabled {
		rounds = 10
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	cmd := exec.Command(os.Args[0], mnt)
	cmd.Env = append(os.Environ(), childEnv+"=restartable")
	startReady(t, cmd, func() {
		if pid := fusebridge.ServerPID(mnt); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		unix.Unmount(mnt, unix.MNT_DETACH)
	})
	bound := filepath.Join(t.TempDir(), "generation")
	if err := os.WriteFile(bound, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(filepath.Join(mnt, "generation"), bound, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(bound, unix.MNT_DETACH) })
	kept, err := os.Open(filepath.Join(mnt, "dir", "value"))
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()

	var (
		stop  atomic.Bool
		reads atomic.Int64
		mu    sync.Mutex
		errs  []string
		wg    sync.WaitGroup
	)
	fail := func(format string, a ...any) {
		mu.Lock()
		if len(errs) < 10 {
			errs = append(errs, fmt.Sprintf(format, a...))
		}
		mu.Unlock()
	}
	readers := []func() error{
		func() error { // through the bind mount
			b, err := os.ReadFile(bound)
			if err == nil {
				if _, err = strconv.Atoi(string(bytes.TrimSpace(b))); err != nil {
					err = fmt.Errorf("generation %q", b)
				}
			}
			return err
		},
		func() error { // by path, through the bound subtree
			b, err := os.ReadFile(filepath.Join(mnt, "dir", "value"))
			if err == nil && string(b) != "value\n" {
				err = fmt.Errorf("value %q", b)
			}
			return err
		},
		func() error { // through the descriptor opened before any restart
			b := make([]byte, 16)
			n, err := kept.ReadAt(b, 0)
			if n == 6 && string(b[:n]) == "value\n" {
				return nil
			}
			return fmt.Errorf("pread through the kept descriptor: %q, %v", b[:n], err)
		},
	}
	for i, read := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if err := read(); err != nil {
					fail("reader %d: %v", i, err)
				}
				reads.Add(1)
			}
		}()
	}
	pid := cmd.Process.Pid
	for round := range rounds {
		time.Sleep(20 * time.Millisecond)
		pid = restartChild(t, mnt, pid, round+1)
		deadline := time.Now().Add(30 * time.Second)
		if round == 0 {
			cmd.Wait()
		}
		// The new process has its predecessor's state: the count of
		// restarts, once it has dropped the kernel's cached copy.
		want := fmt.Sprintf("%d\n", round+1)
		for b, _ := os.ReadFile(bound); string(b) != want; b, _ = os.ReadFile(bound) {
			if time.Now().After(deadline) {
				t.Fatalf("restart %d: generation %q, want %q", round+1, b, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	time.Sleep(20 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	for _, e := range errs {
		t.Error(e)
	}
	if b, err := os.ReadFile(bound); err != nil || string(b) != fmt.Sprintf("%d\n", rounds) {
		t.Errorf("generation after %d restarts: %q, %v", rounds, b, err)
	}
	t.Logf("%d restarts, %d reads, %d failed", rounds, reads.Load(), len(errs))
	syscall.Kill(pid, syscall.SIGTERM)
	if err := testenv.Reap(pid, 30*time.Second); err != nil {
		t.Errorf("last server: %v", err)
	}
}

// restartChild has the restartable server pid of mnt restart (SIGUSR2)
// and returns the new server's pid once it serves.
func restartChild(t *testing.T, mnt string, pid, round int) int {
	t.Helper()
	syscall.Kill(pid, syscall.SIGUSR2)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p := fusebridge.ServerPID(mnt); p > 0 && p != pid {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("restart %d: the mount is still served by %d after 30s", round, pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// perOpenEnv has restartableChild serve its files in the default layout
// (TestRestartPerOpen).
const perOpenEnv = "FUSEBRIDGE_TEST_PEROPEN"

// genStat is "gen G open N": G the process's generation, N the count of
// its opens.
func genStat(g int) handler.Generated {
	var opens atomic.Int64
	return func(context.Context) ([]byte, error) {
		return fmt.Appendf(nil, "gen %d open %d\n", g, opens.Add(1)), nil
	}
}

// TestRestartPerOpen restarts a PerOpenPassthrough server while a
// descriptor read from a backing file made at open is open: it keeps
// reading its snapshot across the restart, and opens made meanwhile by
// the new process succeed with that process's content (the kernel would
// fail them with EIO unless they join the descriptor's backing file,
// whose ID the restart handed over); once it is closed (its RELEASE
// reaches the new process), opens go on succeeding, and a descriptor
// opened then survives the next restart the same way.
func TestRestartPerOpen(t *testing.T) {
	testenv.RequireFUSE(t)
	testenv.AdoptOrphans(t)
	t.Setenv("GORACE", "atexit_sleep_ms=0") // see handover.go: the held wait for the old's exit
	mnt := filepath.Join(t.TempDir(), "mnt")
	cmd := exec.Command(os.Args[0], mnt)
	cmd.Env = append(os.Environ(), childEnv+"=restartable", perOpenEnv+"=1")
	startReady(t, cmd, func() {
		if pid := fusebridge.ServerPID(mnt); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		unix.Unmount(mnt, unix.MNT_DETACH)
	})
	stat := filepath.Join(mnt, "stat")
	pid := cmd.Process.Pid
	restart := func(round int) {
		t.Helper()
		pid = restartChild(t, mnt, pid, round)
		if round == 1 {
			cmd.Wait()
		}
	}
	readNew := func(gen int) {
		t.Helper()
		for range 5 {
			b, err := os.ReadFile(stat)
			var g, n int
			if err == nil {
				_, err = fmt.Sscanf(string(b), "gen %d open %d\n", &g, &n)
			}
			if err != nil || g != gen {
				t.Fatalf("a new open after restart %d read %q, %v; want generation %d", gen, b, err, gen)
			}
		}
	}
	// keep opens a descriptor read from a backing file of its own: one
	// that re-reads its snapshot from offset 0 (a forwarded one takes a
	// new one). An open made before the RELEASE of the descriptor before
	// reaches the server is forwarded: it is tried again.
	keep := func() (*os.File, string) {
		t.Helper()
		b := make([]byte, 64)
		for range 1000 {
			f, err := os.Open(stat)
			if err != nil {
				t.Fatal(err)
			}
			n, err := f.ReadAt(b, 0)
			if n == 0 {
				t.Fatalf("read of the kept descriptor: %v", err)
			}
			snap := string(b[:n])
			if n, _ = f.ReadAt(b, 0); string(b[:n]) == snap {
				return f, snap
			}
			f.Close()
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatal("no open of the file was read from a backing file of its own")
		return nil, ""
	}
	check := func(f *os.File, want string, round int) {
		t.Helper()
		b := make([]byte, 64)
		n, err := f.ReadAt(b, 0)
		if string(b[:n]) != want {
			t.Errorf("after restart %d the kept descriptor read %q, %v; want its snapshot %q", round, b[:n], err, want)
		}
	}
	kept, snap := keep()
	restart(1)
	check(kept, snap, 1)
	readNew(1)
	kept.Close()
	readNew(1)
	kept, snap = keep()
	restart(2)
	check(kept, snap, 2)
	readNew(2)
	kept.Close()
	readNew(2)
	syscall.Kill(pid, syscall.SIGTERM)
}
