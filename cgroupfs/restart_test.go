package cgroupfs

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/cgroupfstest"
	"github.com/ramproc/ramproc/internal/testenv"
)

// restartReadEnv makes the test binary a reader for
// TestRestartKeepsBindMountReaders (restartReader).
const restartReadEnv = "CGROUPFS_RESTART_READ"

// restartReader reads path in a loop, as a container's free or top reads
// its /proc/meminfo: open, read to EOF, close; and through one descriptor
// kept open from the start, a pread from offset 0 each time (procps keeps
// its /proc files open). After each it prints one line: "open " or "held "
// and the first line read, or the error.
func restartReader(path string) int {
	held, err := os.Open(path)
	if err != nil {
		fmt.Println("held", err)
		return 1
	}
	buf := make([]byte, 64<<10)
	first := func(b []byte) string { l, _, _ := bytes.Cut(b, []byte("\n")); return string(l) }
	for {
		if data, err := os.ReadFile(path); err != nil {
			fmt.Println("open error:", err)
		} else {
			fmt.Println("open", first(data))
		}
		if n, err := held.ReadAt(buf, 0); n == 0 && err != nil {
			fmt.Println("held error:", err)
		} else {
			fmt.Println("held", first(buf[:n]))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// restartRounds is how many restarts TestRestartKeepsBindMountReaders
// does: the 20; the server is not race-built (cgroupfstest.Binary), so a
// restart costs the same under -race.
const restartRounds = 20

// The restart test for cgroupfs: its meminfo bind-mounted
// elsewhere, as a container mounts it over its /proc/meminfo, is read in a
// loop by a process in a real 256 MiB memory cgroup while the server is
// restarted 20 times (by 'cgroupfs -restart' and by SIGUSR2): no read
// fails, and after every restart both a fresh open and a descriptor kept
// open across all of them show that process MemTotal: 262144 kB. The
// first restart is an upgrade: the binary on disk has been replaced by
// another build, and that build serves afterwards.
func TestRestartKeepsBindMountReaders(t *testing.T) {
	testenv.RequireFUSE(t)
	testenv.AdoptOrphans(t)
	mem := livecg.New(t, livecg.Memory, fmt.Sprintf("cgrestart-%d-%x", os.Getpid(), rand.Uint32()),
		"memory.limit_in_bytes", "268435456")
	// The binary on disk, which the upgrade replaces.
	run := testenv.CopyForNobody(t, cgroupfstest.Binary(t))
	// The upgrade: the same program built with another -X setting, which
	// changes its bytes and nothing else.
	next := filepath.Join(t.TempDir(), "cgroupfs-next")
	if out, err := exec.Command("go", "build", "-o", next, "-ldflags", "-X main.restartTestBuild=next",
		"github.com/ramproc/ramproc/cmd/cgroupfs").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	nextBytes, _ := os.ReadFile(next)
	if runBytes, _ := os.ReadFile(run); bytes.Equal(runBytes, nextBytes) {
		t.Fatal("the upgrade's build is the same binary; the upgrade check would prove nothing")
	}

	mnt := filepath.Join(t.TempDir(), "mnt")
	// The servers' log goes to a file: the successors inherit it, and a
	// pipe would keep exec's copying goroutine (and so Wait) until the last
	// of them exits.
	logf, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	srv := exec.Command(run, mnt)
	srv.Stderr = logf
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	pid := srv.Process.Pid
	defer func() {
		if t.Failed() {
			log, _ := os.ReadFile(logf.Name())
			t.Logf("servers' log:\n%s", log)
		}
	}()
	// Stops whichever process serves at the end, after the bind is gone
	// (cleanups run last first).
	t.Cleanup(func() {
		if p := fusebridge.ServerPID(mnt); p > 0 {
			syscall.Kill(p, syscall.SIGTERM)
			if err := testenv.Reap(p, 30*time.Second); err != nil {
				syscall.Kill(p, syscall.SIGKILL)
				t.Errorf("server: %v", err)
			}
		}
		if m := testenv.MountsUnder(t, mnt); len(m) != 0 {
			syscall.Unmount(mnt, syscall.MNT_DETACH)
			t.Errorf("still mounted after SIGTERM: %v", m)
		}
	})
	meminfo := filepath.Join(mnt, "proc/meminfo")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(meminfo); err == nil && fusebridge.ServerPID(mnt) == pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cgroupfs did not serve %s in 30 s", mnt)
		}
	}
	target := bind(t, meminfo, t.TempDir(), "container")

	reader := livecg.Command(t, []*livecg.Group{mem}, os.Args[0])
	reader.Env = append(os.Environ(), restartReadEnv+"="+target)
	out, err := reader.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	reader.Stderr = os.Stderr
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	const want = "MemTotal: 262144 kB"
	var (
		mu       sync.Mutex
		seen     = map[string]int{} // "open" and "held": reads that showed want
		problems []string
	)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			kind, line, _ := strings.Cut(sc.Text(), " ")
			mu.Lock()
			if strings.Join(strings.Fields(line), " ") == want {
				seen[kind]++
			} else if len(problems) < 20 {
				problems = append(problems, sc.Text())
			}
			mu.Unlock()
		}
	}()
	// waitReads waits until both kinds of read have shown want since the
	// counts were those of before.
	counts := func() (int, int) { mu.Lock(); defer mu.Unlock(); return seen["open"], seen["held"] }
	waitReads := func(when string) {
		t.Helper()
		o0, h0 := counts()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if o, h := counts(); o > o0 && h > h0 {
				return
			}
			if time.Now().After(deadline) {
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("%s: the reader did not see %q in 30 s; other lines: %q", when, want, problems)
			}
		}
	}
	waitReads("before the restarts")

	restarts := map[string]int{}
	for round := range restartRounds {
		if round == 0 {
			// As an install does: a new file renamed over the old one,
			// which the running server goes on executing.
			if err := os.Rename(next, run); err != nil {
				t.Fatal(err)
			}
		}
		old := pid
		if round%4 == 3 {
			restarts["SIGUSR2"]++
			syscall.Kill(old, syscall.SIGUSR2)
			for deadline := time.Now().Add(60 * time.Second); pid == old; time.Sleep(5 * time.Millisecond) {
				if p := fusebridge.ServerPID(mnt); p > 0 && p != old {
					pid = p
				}
				if time.Now().After(deadline) {
					t.Fatalf("restart %d: SIGUSR2 to %d: no new server in 60 s", round+1, old)
				}
			}
		} else {
			restarts["cgroupfs -restart"]++
			pid = restartCommand(t, run, mnt)
		}
		if round == 0 {
			if err := srv.Wait(); err != nil {
				t.Errorf("the first server's exit after handing over: %v", err)
			}
			if exe, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/exe"); err != nil || !bytes.Equal(exe, nextBytes) {
				t.Errorf("after the upgrade process %d does not run the new build (%v)", pid, err)
			}
		} else if err := testenv.Reap(old, 30*time.Second); err != nil {
			t.Errorf("restart %d: the old server: %v", round+1, err)
		}
		waitReads(fmt.Sprintf("after restart %d", round+1))
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Errorf("a read across the restarts: %s", p)
	}
	t.Logf("%d restarts (%v): %d fresh opens and %d reads of a kept descriptor showed %q, %d did not",
		restartRounds, restarts, seen["open"], seen["held"], want, len(problems))
}

// restartCommand runs 'cgroupfs -restart mnt' and returns the new
// server's pid from its output ("MNT: served by process PID").
func restartCommand(t *testing.T, bin, mnt string) int {
	t.Helper()
	out, err := exec.Command(bin, "-restart", mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("cgroupfs -restart %s: %v\n%s", mnt, err, out)
	}
	_, rest, _ := strings.Cut(strings.TrimSpace(string(out)), "served by process ")
	pid, err := strconv.Atoi(rest)
	if err != nil {
		t.Fatalf("cgroupfs -restart printed %q, want the new pid", out)
	}
	return pid
}
