package testenv

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watchEnv makes a test binary act as an inotify watcher (RunWatcher).
const watchEnv = "RAMPROC_TESTENV_WATCH"

// RunWatcher turns this process into the watcher that Watch starts, and
// never returns, when it was started as one; otherwise it returns at once.
// A test package that uses Watch calls it first thing, from TestMain or an
// init function of a test file.
func RunWatcher() {
	path := os.Getenv(watchEnv)
	if path == "" {
		return
	}
	os.Exit(watcherMain(path))
}

// The watcher's protocol, one line each on stdout: "ready" once the watch
// is in place, then "event MASK" per event with MASK the IN_* names joined
// by "|", then " name=QUOTED" for an event on a file of a watched
// directory, then " content=QUOTED" for IN_MODIFY of the watched file (as
// read right after the event, by a fresh open) or " readerr=..."; it exits
// after IN_IGNORED.
func watcherMain(path string) int {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		fmt.Println("error inotify_init1:", err)
		return 1
	}
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_MODIFY|unix.IN_ATTRIB|unix.IN_DELETE_SELF|unix.IN_IGNORED); err != nil {
		fmt.Println("error inotify_add_watch:", err)
		return 1
	}
	fmt.Println("ready")
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			fmt.Println("error read:", err)
			return 1
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			off += unix.SizeofInotifyEvent + int(ev.Len)
			line := "event " + MaskString(ev.Mask)
			name := ""
			if ev.Len > 0 {
				raw := buf[off-int(ev.Len) : off]
				name = strings.TrimRight(string(raw), "\x00")
				line += " name=" + strconv.Quote(name)
			}
			if ev.Mask&unix.IN_MODIFY != 0 && name == "" {
				b, err := readFile(path)
				if err != nil {
					line += " readerr=" + err.Error()
				} else {
					line += " content=" + strconv.Quote(string(b))
				}
			}
			fmt.Println(line)
			if ev.Mask&unix.IN_IGNORED != 0 {
				return 0
			}
		}
	}
}

// readFile reads path with raw syscalls: nothing registers it with the Go
// runtime's poller.
func readFile(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
	}
}

// MaskString names the IN_* bits of an inotify event mask.
func MaskString(m uint32) string {
	names := []struct {
		bit  uint32
		name string
	}{
		{unix.IN_ACCESS, "IN_ACCESS"}, {unix.IN_MODIFY, "IN_MODIFY"}, {unix.IN_ATTRIB, "IN_ATTRIB"},
		{unix.IN_CLOSE_WRITE, "IN_CLOSE_WRITE"}, {unix.IN_CLOSE_NOWRITE, "IN_CLOSE_NOWRITE"},
		{unix.IN_OPEN, "IN_OPEN"}, {unix.IN_DELETE_SELF, "IN_DELETE_SELF"}, {unix.IN_MOVE_SELF, "IN_MOVE_SELF"},
		{unix.IN_UNMOUNT, "IN_UNMOUNT"}, {unix.IN_Q_OVERFLOW, "IN_Q_OVERFLOW"}, {unix.IN_IGNORED, "IN_IGNORED"},
	}
	var parts []string
	for _, n := range names {
		if m&n.bit != 0 {
			parts = append(parts, n.name)
			m &^= n.bit
		}
	}
	if m != 0 {
		parts = append(parts, fmt.Sprintf("%#x", m))
	}
	return strings.Join(parts, "|")
}

// Watcher is an inotify watcher of one file, running in a child process
// (the test binary itself, see RunWatcher), so that the events are those
// any other program gets.
type Watcher struct {
	t     testing.TB
	path  string
	lines chan string
}

// Event is one inotify event the watcher got, with the file's content as
// it read it right after an IN_MODIFY.
type Event struct {
	Mask    string // IN_* names, "|"-joined
	Name    string // for a watched directory: the file's name
	Content string // after IN_MODIFY: what a fresh open read
	ReadErr string // after IN_MODIFY, if the read failed
}

// Watch starts a watcher of path in a child process running as attr's
// credentials (nil: as this process) from bin (empty: this test binary),
// and returns once its watch is in place. The child is killed when the
// test ends.
func Watch(t testing.TB, path string, bin string, attr *syscall.SysProcAttr) *Watcher {
	t.Helper()
	if bin == "" {
		bin = os.Args[0]
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), watchEnv+"="+path)
	cmd.SysProcAttr = attr
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start watcher: %v", err)
	}
	w := &Watcher{t: t, path: path, lines: make(chan string, 1000)}
	go func() {
		r := bufio.NewReader(stdout)
		for {
			l, err := r.ReadString('\n')
			if l != "" {
				w.lines <- strings.TrimSuffix(l, "\n")
			}
			if err != nil {
				close(w.lines)
				io.Copy(io.Discard, stdout)
				return
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	select {
	case l, ok := <-w.lines:
		if !ok || l != "ready" {
			t.Fatalf("watcher of %s: %q instead of ready", path, l)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("watcher of %s not ready within 20s", path)
	}
	return w
}

// Next returns the next event, or ok false if none arrives within d or the
// watcher ended.
func (w *Watcher) Next(d time.Duration) (ev Event, ok bool) {
	w.t.Helper()
	select {
	case l, open := <-w.lines:
		if !open {
			return Event{}, false
		}
		rest, found := strings.CutPrefix(l, "event ")
		if !found {
			w.t.Fatalf("watcher of %s: %s", w.path, l)
		}
		mask, tail, _ := strings.Cut(rest, " ")
		ev.Mask = mask
		if q, found := strings.CutPrefix(tail, "name="); found {
			qp, err := strconv.QuotedPrefix(q)
			if err != nil {
				w.t.Fatalf("watcher line %q: %v", l, err)
			}
			ev.Name, _ = strconv.Unquote(qp)
			tail = strings.TrimPrefix(q[len(qp):], " ")
		}
		if q, found := strings.CutPrefix(tail, "content="); found {
			s, err := strconv.Unquote(q)
			if err != nil {
				w.t.Fatalf("watcher line %q: %v", l, err)
			}
			ev.Content = s
		} else if e, found := strings.CutPrefix(tail, "readerr="); found {
			ev.ReadErr = e
		}
		return ev, true
	case <-time.After(d):
		return Event{}, false
	}
}

// Expect waits up to d for an event with every IN_* name of mask (e.g.
// "IN_MODIFY") and fails the test if none comes; events without it before
// it are returned too, in order.
func (w *Watcher) Expect(mask string, d time.Duration) (ev Event, before []Event) {
	w.t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			left = time.Millisecond
		}
		ev, ok := w.Next(left)
		if !ok {
			w.t.Fatalf("watcher of %s: no %s within %v (got %v)", w.path, mask, d, before)
		}
		if hasAll(ev.Mask, mask) {
			return ev, before
		}
		before = append(before, ev)
	}
}

// Settle returns the events that arrive until none has for d: what a test
// counts. Under load a late event may fall outside the window and go
// uncounted, so a test can use it to find events too many, never to
// require that events arrived (Expect does that).
func (w *Watcher) Settle(d time.Duration) []Event {
	w.t.Helper()
	var evs []Event
	for {
		ev, ok := w.Next(d)
		if !ok {
			return evs
		}
		evs = append(evs, ev)
	}
}

// None fails the test if any event arrives within d.
func (w *Watcher) None(d time.Duration) {
	w.t.Helper()
	if ev, ok := w.Next(d); ok {
		w.t.Fatalf("watcher of %s: unexpected event %+v", w.path, ev)
	}
}

func hasAll(got, want string) bool {
	have := map[string]bool{}
	for _, n := range strings.Split(got, "|") {
		have[n] = true
	}
	for _, n := range strings.Split(want, "|") {
		if !have[n] {
			return false
		}
	}
	return true
}

// CopyForNobody copies bin (empty: this test binary) into a fresh directory
// that user nobody can reach and returns the copy's path; test binaries
// live in directories only their owner may enter. The copy is removed when
// the test ends.
func CopyForNobody(t testing.TB, bin string) string {
	t.Helper()
	if bin == "" {
		bin = os.Args[0]
	}
	dir, err := os.MkdirTemp("", "ramproc-nobody-bin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	src, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, filepath.Base(bin))
	if err := os.WriteFile(dst, src, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}
