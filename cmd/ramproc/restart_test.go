package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/testenv"
)

// restartRounds is how many restarts the writer soak does per mode: the
// issue asks for 20; under -race each restart of a race-built server costs
// about a second more, so 10 keeps the package well inside CI's budget.
func restartRounds() int {
	if testenv.RaceEnabled {
		return 10
	}
	return 20
}

// restartServer runs 'ramproc restart' (bin) on mnt and returns the pid of
// the new server from its output.
func restartServer(t *testing.T, bin, mnt string) (int, string) {
	t.Helper()
	out, err := exec.Command(bin, "restart", mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("ramproc restart %s: %v\n%s", mnt, err, out)
	}
	// "MNT: served by process PID (VERSION)"
	_, rest, _ := strings.Cut(string(out), "served by process ")
	pidStr, ver, _ := strings.Cut(rest, " ")
	pid, err := strconv.Atoi(pidStr)
	if err != nil {
		t.Fatalf("ramproc restart printed %q, want the new pid", out)
	}
	return pid, strings.TrimSpace(ver)
}

// stopServer stops the server of mnt (started by a restart, so not an
// exec.Cmd of this test) with SIGTERM and reaps it.
func stopServer(t *testing.T, mnt string) {
	t.Helper()
	pid := fusebridge.ServerPID(mnt)
	if pid <= 0 {
		t.Fatalf("no server holds %s", mnt)
	}
	syscall.Kill(pid, syscall.SIGTERM)
	reapServer(t, pid)
	if got := testenv.MountsUnder(t, mnt); len(got) != 0 {
		t.Errorf("mounts left after SIGTERM: %q", got)
	}
}

func reapServer(t *testing.T, pid int) {
	t.Helper()
	if err := testenv.Reap(pid, 30*time.Second); err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("server: %v", err)
	}
}

// The seed's test 6 made strict: 8 writers, half O_APPEND and half pwrite
// to regions of their own, keep their descriptors open across every
// restart of the server; no write may fail, and afterwards every
// acknowledged record is in the file. The longest stall a writer saw
// during each restart is logged, not asserted (the machine is shared).
func TestRestartKeepsWriters(t *testing.T) {
	testenv.RequireFUSE(t)
	testenv.AdoptOrphans(t)
	// Requests the old server read wait for its exit (handover.go), and a
	// race-built program sleeps a second at exit by default.
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	eachWriterMode(t, func(t *testing.T, bin, mnt string, args []string) {
		cmd, path := launchMount(t, bin, nil, os.Stderr, args...)
		soakWriters(t, path, restartRounds(), func(int) { restartServer(t, bin, mnt) }, func(round int) {
			if round == 0 {
				cmd.Wait() // the first server exits once it handed over
			}
		}, nil)
		stopServer(t, mnt)
	})
}

// eachWriterMode runs test for ramproc mount's two I/O paths (passthrough
// where available, and forwarded), with a fresh mountpoint mnt and the
// arguments args that mount it.
func eachWriterMode(t *testing.T, test func(t *testing.T, bin, mnt string, args []string)) {
	for _, mode := range []struct{ name, flag string }{
		{"default", ""},
		{"passthrough-off", "-passthrough=off"},
	} {
		t.Run(mode.name, func(t *testing.T) {
			mnt := filepath.Join(t.TempDir(), "mnt")
			args := []string{mnt}
			if mode.flag != "" {
				args = []string{mode.flag, mnt}
			}
			test(t, ramprocBinary(t), mnt, args)
		})
	}
}

const (
	recSize    = 64
	regionRecs = 1 << 12 // pwrite records per writer
	writers    = 8
)

func record(w, seq int) []byte {
	b := fmt.Appendf(nil, "writer %d record %d", w, seq)
	b = append(b, bytes.Repeat([]byte{'.'}, recSize-1-len(b))...)
	return append(b, '\n')
}

// soakWriters runs the writers on path while the server is restarted
// (restart) rounds times, then checks the file. A write that fails during
// a round for which lost (if not nil) reports its error as one the kernel
// can give (a request lost with a killed server, docs/restart.md) is
// counted and written again, at most once per writer and round; any other
// error fails the test.
func soakWriters(t *testing.T, path string, rounds int, restart, after func(round int), lost func(round int, err error) bool) {
	t.Helper()
	appendBase := int64(writers / 2 * regionRecs * recSize)
	if err := os.Truncate(path, appendBase); err != nil {
		t.Fatal(err)
	}
	var (
		stop      atomic.Bool
		restartNo atomic.Int64 // 1 + the restart under way, 0 between them
		mu        sync.Mutex
		stalls    = make([]time.Duration, rounds)
		errs      []error
		acked     = make([]int, writers)
		lostIn    = make(map[[2]int]bool) // {writer, round} of a lost write
		wg        sync.WaitGroup
	)
	for w := range writers {
		flags := os.O_WRONLY
		if w%2 == 0 {
			flags |= os.O_APPEND
		}
		f, err := os.OpenFile(path, flags, 0)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer f.Close()
			for seq := 0; !stop.Load(); seq++ {
				if w%2 == 1 && seq == regionRecs {
					break // its region is full
				}
				r := restartNo.Load()
				start := time.Now()
				var err error
				if w%2 == 0 {
					_, err = f.Write(record(w, seq))
				} else {
					_, err = f.WriteAt(record(w, seq), int64((w/2*regionRecs+seq)*recSize))
				}
				took := time.Since(start)
				if r2 := restartNo.Load(); r2 > r {
					r = r2
				}
				mu.Lock()
				if r > 0 {
					stalls[r-1] = max(stalls[r-1], took)
				}
				if err != nil && r > 0 && lost != nil && lost(int(r-1), err) && !lostIn[[2]int{w, int(r - 1)}] {
					// The kernel failed the request before the
					// server had read it: nothing was written, and
					// the record goes again to the same place.
					lostIn[[2]int{w, int(r - 1)}] = true
					mu.Unlock()
					seq--
					continue
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("writer %d record %d: %w", w, seq, err))
					mu.Unlock()
					return
				}
				acked[w] = seq + 1
				mu.Unlock()
				time.Sleep(200 * time.Microsecond)
			}
		}()
	}
	for round := range rounds {
		time.Sleep(30 * time.Millisecond)
		restartNo.Store(int64(round + 1))
		restart(round)
		// Writes that started before the restart returned count too.
		time.Sleep(5 * time.Millisecond)
		restartNo.Store(0)
		after(round)
	}
	stop.Store(true)
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	for i, s := range stalls {
		t.Logf("restart %d: longest write %v", i+1, s.Round(time.Microsecond))
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for w := range writers {
		total += acked[w]
		if w%2 == 1 {
			for seq := range acked[w] {
				off := (w/2*regionRecs + seq) * recSize
				if got := data[off : off+recSize]; !bytes.Equal(got, record(w, seq)) {
					t.Fatalf("writer %d record %d at %d: %q", w, seq, off, got)
				}
			}
		}
	}
	seen := make(map[string]int)
	tail := data[appendBase:]
	if len(tail)%recSize != 0 {
		t.Fatalf("appended %d bytes, not whole records", len(tail))
	}
	for i := 0; i < len(tail); i += recSize {
		seen[string(tail[i:i+recSize])]++
	}
	for w := 0; w < writers; w += 2 {
		for seq := range acked[w] {
			if n := seen[string(record(w, seq))]; n != 1 {
				t.Fatalf("writer %d record %d is in the file %d times, want once", w, seq, n)
			}
		}
	}
	t.Logf("%d restarts, %d records acknowledged and present", rounds, total)
	if len(lostIn) > 0 {
		t.Logf("%d writes lost with a killed server and written again (docs/restart.md)", len(lostIn))
	}
}

// A new binary that cannot read the running server's state refuses it in
// one line, and the running server goes on serving: its descriptors and
// new opens keep working.
func TestRestartRefusedKeepsServing(t *testing.T) {
	testenv.RequireFUSE(t)
	testenv.AdoptOrphans(t)
	bin := ramprocBinary(t)
	other := buildRamproc(t, "-X", "github.com/ramproc/ramproc/fusebridge.handoverFormat=fusebridge-handover/999")
	mnt := filepath.Join(t.TempDir(), "mnt")
	run := filepath.Join(t.TempDir(), "ramproc")
	copyFile(t, bin, run)
	cmd, path := launchMount(t, run, nil, os.Stderr, mnt)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write([]byte("before\n"))
	replaceFile(t, other, run)
	out, err := exec.Command(run, "restart", mnt).CombinedOutput()
	if err == nil {
		t.Fatalf("restart with a binary of another handover format succeeded:\n%s", out)
	}
	msg := strings.TrimSpace(string(out))
	if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, "does not understand") || !strings.Contains(msg, "goes on serving") {
		t.Errorf("refusal: %q, want one line saying the state is not understood and the old server goes on", msg)
	}
	if pid := fusebridge.ServerPID(mnt); pid != cmd.Process.Pid {
		t.Errorf("server after the refusal: %d, want the first one, %d", pid, cmd.Process.Pid)
	}
	if _, err := f.Write([]byte("after\n")); err != nil {
		t.Fatalf("write through the descriptor kept across the refused restart: %v", err)
	}
	if got, err := os.ReadFile(path); err != nil || string(got) != "before\nafter\n" {
		t.Fatalf("file after the refused restart: %q, %v", got, err)
	}
	stopMount(t, cmd, syscall.SIGTERM)
}

// An upgrade: the binary on disk is replaced by a build that reports
// another version; after the restart the serving process is that build,
// and the file's bytes are the same.
func TestRestartUpgrade(t *testing.T) {
	testenv.RequireFUSE(t)
	testenv.AdoptOrphans(t)
	bin := ramprocBinary(t)
	const next = "v9.9.9-restart-test"
	newer := buildRamproc(t, "-X", "main.version="+next)
	run := filepath.Join(t.TempDir(), "ramproc")
	copyFile(t, bin, run)
	mnt := filepath.Join(t.TempDir(), "mnt")
	cmd, path := launchMount(t, run, nil, os.Stderr, "-max-size", "64m", "-stats", mnt)
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<14)
	if err := os.WriteFile(path, want, 0); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	replaceFile(t, newer, run)
	pid, ver := restartServer(t, run, mnt)
	cmd.Wait()
	if !strings.Contains(ver, next) {
		t.Errorf("version of the serving process after the upgrade: %q, want %s", ver, next)
	}
	if out, err := exec.Command("/proc/"+strconv.Itoa(pid)+"/exe", "version").Output(); err != nil || !strings.Contains(string(out), next) {
		t.Errorf("/proc/%d/exe version: %q, %v", pid, out, err)
	}
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read through the descriptor kept across the upgrade: equal=%v, %v", bytes.Equal(got, want), err)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, want) {
		t.Errorf("file after the upgrade: %d bytes, equal=%v, %v", len(got), bytes.Equal(got, want), err)
	}
	if st, err := os.ReadFile(filepath.Join(mnt, "stats")); err != nil || len(st) == 0 {
		t.Errorf("stats file after the upgrade: %d bytes, %v", len(st), err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); err != nil || sfs.Blocks*uint64(sfs.Bsize) != 64<<20 {
		t.Errorf("statfs after the upgrade: %d bytes, %v; want the 64 MiB capacity", sfs.Blocks*uint64(sfs.Bsize), err)
	}
	stopServer(t, mnt)
}

// buildRamproc builds the ramproc command with extra -ldflags (as the test
// binary: with -race under -race).
func buildRamproc(t *testing.T, ldflags ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ramproc-build")
	args := []string{"build", "-o", out, "-ldflags", strings.Join(ldflags, " ")}
	if testenv.RaceEnabled {
		args = append(args, "-race")
	}
	if msg, err := exec.Command("go", append(args, "github.com/ramproc/ramproc/cmd/ramproc")...).CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, msg)
	}
	return out
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// replaceFile puts from's content at to as an install does: a new file
// renamed over the old, which the running process keeps executing.
func replaceFile(t *testing.T, from, to string) {
	t.Helper()
	tmp := to + ".new"
	copyFile(t, from, tmp)
	if err := os.Rename(tmp, to); err != nil {
		t.Fatal(err)
	}
}

// ramproc check's reload check in its restart mode: writers keep their
// descriptors across 'ramproc restart' with no error and every append is
// in the file, in every I/O mode. The control: a stop and a new mount as
// the "restart" fails the same check.
func TestCheckRestartKeepsDescriptors(t *testing.T) {
	testenv.RequireFUSE(t)
	testenv.AdoptOrphans(t)
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	bin := ramprocBinary(t)
	for _, mode := range []string{"-passthrough=auto", "-passthrough=off", "-no-open"} {
		t.Run(strings.TrimLeft(mode, "-"), func(t *testing.T) {
			mnt := filepath.Join(t.TempDir(), "mnt")
			cmd, path := launchMount(t, bin, nil, os.Stderr, mode, mnt)
			restart := `"` + bin + `" restart "` + mnt + `" >/dev/null`
			code, out, errOut := runRamproc(t, "check", "--run", "^seed/reload$", "--restart-cmd", restart, path)
			if code != 0 || !strings.Contains(out, "PASS seed/reload") {
				t.Fatalf("exit %d, want 0 and seed/reload passed\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
			}
			cmd.Wait()
			stopServer(t, mnt)
		})
	}
	t.Run("stop-and-mount-is-no-restart", func(t *testing.T) {
		mnt := filepath.Join(t.TempDir(), "mnt")
		cmd, path := launchMount(t, bin, nil, os.Stderr, mnt)
		// A stop (the server unmounts within its 2 s grace) and a new
		// mount: what a restart without a handover is.
		restart := `kill -TERM ` + strconv.Itoa(cmd.Process.Pid) + `; sleep 3; "` + bin + `" mount "` + mnt + `" >/dev/null 2>&1 &
for i in $(seq 200); do [ -e "` + path + `" ] && exit 0; sleep 0.05; done; exit 1`
		code, out, _ := runRamproc(t, "check", "--run", "^seed/reload$", "--timeout", "20s", "--restart-cmd", restart, path)
		if code == 0 || !strings.Contains(out, "FAIL seed/reload") {
			t.Errorf("a stop and a new mount passed as a restart (exit %d):\n%s", code, out)
		}
		cmd.Wait()
		if pid := fusebridge.ServerPID(mnt); pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
			reapServer(t, pid)
		}
	})
}

// An unprivileged server (fusermount, a memfd store whose capacity the
// store enforces itself) restarts too, asked by its own user: a descriptor
// kept across it keeps writing, and the capacity still holds afterwards.
func TestRestartUnprivileged(t *testing.T) {
	testenv.RequireFUSE(t)
	testenv.AdoptOrphans(t)
	if _, err := exec.LookPath("fusermount3"); err != nil {
		testenv.Missing(t, "unprivileged mounts need fusermount3 (apt-get install fuse3)")
	}
	if st, err := os.Stat("/dev/fuse"); err != nil || st.Mode().Perm()&0o006 != 0o006 {
		testenv.Missing(t, "unprivileged mounts need /dev/fuse to be mode 0666, as Debian sets it")
	}
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	bin := testenv.CopyForNobody(t, ramprocBinary(t))
	mnt := filepath.Join(filepath.Dir(bin), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(mnt, 65534, 65534)
	nobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd, path := launchMount(t, bin, nobody, os.Stderr, "-max-size", "64k", mnt)
	client := exec.Command("sh", "-c", `exec 5>>"$2"; echo before >&5 || exit 1
"$1" restart "$3" >/dev/null || exit 2
echo after >&5 || exit 3
cat "$2"; head -c 100000 /dev/zero >> "$2"; echo "rc=$?"; stat -c %s "$2"`, "sh", bin, path, mnt)
	client.SysProcAttr = nobody
	out, err := client.CombinedOutput()
	if err != nil {
		t.Fatalf("client as nobody: %v\n%s", err, out)
	}
	cmd.Wait()
	// 64 KiB capacity: the append stops short with ENOSPC.
	if !strings.HasPrefix(string(out), "before\nafter\n") || !strings.Contains(string(out), "No space left on device") || !strings.HasSuffix(string(out), "rc=1\n65536\n") {
		t.Errorf("client as nobody across the restart:\n%s", out)
	}
	stopServer(t, mnt)
}
