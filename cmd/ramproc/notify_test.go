package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/internal/testenv"
)

func init() {
	// The test binary doubles as the inotify watcher of testenv.Watch.
	testenv.RunWatcher()
}

var uptimeRE = regexp.MustCompile(`(?m)^ramproc_uptime_seconds (\S+)$`)

// watchStats expects a watcher of `stats` to wake on its notifications and
// read content at least as new after each one. Where the file is generated
// per open (perOpen), each read makes new content, so its uptime (to the
// nanosecond, as the server prints it) grows strictly; on a no-open
// mount, the content is a snapshot that a notification replaces, and a
// read delayed past the next notification may already have got the
// snapshot the next read gets: there it must not go back.
//
// Nothing here depends on speed: the uptime is compared whole, not in
// whole seconds (two reads delayed into the same second are still in
// order), and the watcher reads after each event in turn.
func watchStats(t *testing.T, w *testenv.Watcher, perOpen bool) {
	t.Helper()
	last := -1.0
	for i := 0; i < 3; i++ {
		ev, early := w.Expect("IN_MODIFY", 10*time.Second)
		if len(early) != 0 {
			t.Errorf("stats: unexpected events %v", early)
		}
		m := uptimeRE.FindStringSubmatch(ev.Content)
		if m == nil {
			t.Fatalf("stats after the event: %q (%s)", ev.Content, ev.ReadErr)
		}
		up, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatalf("stats after the event: uptime %q: %v", m[1], err)
		}
		if up < last || (perOpen && up == last) {
			t.Errorf("stats after event %d: uptime %s, after %v at the event before", i, m[1], last)
		}
		last = up
	}
}

// The RAM file: writes through the mount give IN_MODIFY from the kernel,
// and the content read after it is the new one.
func watchRAMFile(t *testing.T, w *testenv.Watcher, write func(string), want string) {
	t.Helper()
	write("more\n")
	ev, _ := w.Expect("IN_MODIFY", 10*time.Second)
	for {
		// A write may come as several events; the last one follows it.
		next, ok := w.Next(200 * time.Millisecond)
		if !ok {
			break
		}
		ev = next
	}
	if ev.Content != want {
		t.Errorf("RAM file after the event: %q (%s), want %q", ev.Content, ev.ReadErr, want)
	}
}

// In every mode of `ramproc mount`, a watcher of `stats` wakes about once a
// second and reads new content, a watcher of the RAM file wakes on each
// write (and not when only `stats` changed), and tail -f follows appends.
func TestMountNotify(t *testing.T) {
	for _, mode := range []struct {
		name  string
		flags []string
	}{
		{"default", nil},
		{"passthrough-off", []string{"-passthrough", "off"}},
		{"no-open", []string{"-no-open"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			mnt := filepath.Join(t.TempDir(), "mnt")
			cmd, path := startMount(t, append(append([]string{"-stats"}, mode.flags...), mnt)...)
			if err := os.WriteFile(path, []byte("start\n"), 0); err != nil {
				t.Fatal(err)
			}
			ws := testenv.Watch(t, filepath.Join(mnt, "stats"), "", nil)
			wr := testenv.Watch(t, path, "", nil)
			watchStats(t, ws, mode.name != "no-open")
			wr.None(1200 * time.Millisecond) // stats changed, the RAM file did not

			appendTo := func(s string) {
				f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if _, err := f.WriteString(s); err != nil {
					t.Fatal(err)
				}
			}
			watchRAMFile(t, wr, appendTo, "start\nmore\n")
			followTail(t, path, appendTo, nil)
			stopMount(t, cmd, syscall.SIGTERM)
		})
	}
}

// followTail checks that `tail -f` on path prints what is appended.
func followTail(t *testing.T, path string, appendTo func(string), attr *syscall.SysProcAttr) {
	t.Helper()
	tail := exec.Command("tail", "-n", "0", "-f", path)
	tail.SysProcAttr = attr
	out, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { tail.Process.Kill(); tail.Wait() }()
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// tail opens the file and seeks to its end (-n 0) before it follows
	// it; a line appended before that seek would be skipped. Wait for the
	// seek, however long it takes, then prove it follows: each appended
	// line must appear.
	waitSeekedToEnd(t, tail.Process.Pid, path)
	for i := 1; i <= 2; i++ {
		want := fmt.Sprintf("tail line %d", i)
		appendTo(want + "\n")
		select {
		case l, ok := <-lines:
			if !ok || l != want {
				t.Fatalf("tail -f printed %q (open %v), want %q", l, ok, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("tail -f did not print %q within 10s", want)
		}
	}
}

// waitSeekedToEnd waits until process pid holds path, which is not empty,
// open at a non-zero offset (from /proc/PID/fdinfo): `tail -n 0` opens it
// at 0 and seeks to the end at once. (The name, not the file, is compared:
// a mount without allow_other is not even for root to stat.)
func waitSeekedToEnd(t *testing.T, pid int, path string) {
	t.Helper()
	fds := fmt.Sprintf("/proc/%d/fd", pid)
	for deadline := time.Now().Add(10 * time.Second); ; {
		ents, _ := os.ReadDir(fds)
		for _, ent := range ents {
			if l, err := os.Readlink(filepath.Join(fds, ent.Name())); err != nil || l != path {
				continue
			}
			info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, ent.Name()))
			var pos int64
			if err == nil {
				fmt.Sscanf(string(info), "pos:\t%d", &pos)
			}
			if pos > 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("tail did not open %s and seek to its end within 10s", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An unprivileged `ramproc mount -stats` (user nobody, fusermount3): the
// server owns its files, so watchers of `stats` wake as with root, and the
// RAM file's writes give their events; tail -f follows.
func TestMountNotifyUnprivileged(t *testing.T) {
	testenv.RequireUnprivilegedFUSE(t)
	bin := testenv.CopyForNobody(t, ramprocBinary(t))
	watcher := testenv.CopyForNobody(t, "")
	dir, err := os.MkdirTemp("", fmt.Sprintf("ramproc-notify-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	for _, p := range []string{dir, mnt} {
		os.Chown(p, 65534, 65534)
		os.Chmod(p, 0o755)
	}
	nobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd, path := launchMount(t, bin, nobody, testenv.Output(t), "-stats", mnt)

	ws := testenv.Watch(t, filepath.Join(mnt, "stats"), watcher, nobody)
	wr := testenv.Watch(t, path, watcher, nobody)
	watchStats(t, ws, true)
	wr.None(1200 * time.Millisecond)
	appendTo := func(s string) {
		c := exec.Command("sh", "-c", `printf %s "$1" >> "$2"`, "sh", s, path)
		c.SysProcAttr = nobody
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("append as nobody: %v: %s", err, strings.TrimSpace(string(out)))
		}
	}
	watchRAMFile(t, wr, appendTo, "more\n")
	followTail(t, path, appendTo, nobody)
	stopMount(t, cmd, syscall.SIGTERM)
}
