package fusebridge_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
	"github.com/ramproc/ramproc/ramfile"
)

// notifyServeEnv makes the test binary an unprivileged server for
// TestNotifyUnprivileged (see notifyServer).
const notifyServeEnv = "FUSEBRIDGE_NOTIFY_SERVE"

func init() {
	// Before TestMain: the test binary may be an inotify watcher or an
	// unprivileged server instead.
	testenv.RunWatcher()
	if mnt := os.Getenv(notifyServeEnv); mnt != "" {
		os.Exit(notifyServer(mnt))
	}
}

// eventWait bounds every wait for an event; a notification normally takes
// well under a millisecond.
const eventWait = 10 * time.Second

// quiet is how long "no event" is watched for.
const quiet = 300 * time.Millisecond

// notifyModes are the connection kinds a handler file can be served on.
var notifyModes = []struct {
	name string
	opts fusebridge.Options
	twin bool // served on the no-open connection of a NoOpenHandlers mount
}{
	{"passthrough", fusebridge.Options{NoOpenHandlers: true}, true},
	{"passthrough-off", fusebridge.Options{Passthrough: fusebridge.PassthroughOff}, false},
	{"no-open", fusebridge.Options{NoOpen: true}, false},
}

// changing is a Generated file whose content is set from the test.
type changing struct{ v atomic.Pointer[string] }

func newChanging(s string) *changing { c := &changing{}; c.v.Store(&s); return c }
func (c *changing) set(s string)     { c.v.Store(&s) }
func (c *changing) gen() handler.Generated {
	return func(context.Context) ([]byte, error) { return []byte(*c.v.Load()), nil }
}

// knob is a handler.Value that can also be set from Go: a tiny
// handler.Changer for these tests.
type knob struct {
	*handler.Value
	mu       sync.Mutex
	notify   func()
	stopped  atomic.Bool
	setattrs atomic.Int64
}

func (k *knob) Changed(notify func()) func() { return k.ChangedFrom(nil, notify) }

// ChangedFrom overrides the embedded Value's too: the bridge registers
// with it (handler.SourceChanger).
func (k *knob) ChangedFrom(src any, notify func()) func() {
	k.mu.Lock()
	k.notify = notify
	k.mu.Unlock()
	return func() { k.stopped.Store(true) }
}

// set stores v as a write would, then notifies.
func (k *knob) set(v string) {
	if _, err := k.Value.Write(context.Background(), &handler.OpenFile{Flags: os.O_WRONLY}, []byte(v), 0); err != nil {
		panic(err)
	}
	k.mu.Lock()
	n := k.notify
	k.mu.Unlock()
	n()
}

// Setattr counts calls: a notification must never reach it.
func (k *knob) Setattr(ctx context.Context, f *handler.OpenFile, in *handler.SetAttr) error {
	k.setattrs.Add(1)
	return nil
}

func stat(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// A Generated file after Entry.Notify: a watcher in another process gets
// IN_MODIFY and reads the new content; size and times stay what a reader
// saw (on a no-open connection the size is the new snapshot's); a file
// that did not change gives no event; removal gives IN_DELETE_SELF and
// IN_IGNORED.
func TestNotifyGenerated(t *testing.T) {
	for _, m := range notifyModes {
		t.Run(m.name, func(t *testing.T) {
			srv := mount(t, m.opts)
			if m.twin && !srv.HandlersNoOpen() {
				t.Fatal("no second no-open connection on a root mount")
			}
			c := newChanging("first\n")
			e, err := srv.Create("gen", 0o444, c.gen())
			if err != nil {
				t.Fatal(err)
			}
			other, err := srv.Create("other", 0o444, text("still\n"))
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(srv.Mountpoint(), "gen")
			if b, err := os.ReadFile(p); err != nil || string(b) != "first\n" {
				t.Fatalf("read: %q, %v", b, err)
			}
			before := stat(t, p)
			w := testenv.Watch(t, p, "", nil)
			wo := testenv.Watch(t, filepath.Join(srv.Mountpoint(), "other"), "", nil)
			wd := testenv.Watch(t, srv.Mountpoint(), "", nil)
			w.None(quiet)

			sizes := map[int64]bool{before.Size: true}
			for i, want := range []string{"second\n", "third, longer\n", "4\n"} {
				c.set(want)
				e.Notify()
				ev, early := w.Expect("IN_MODIFY", eventWait)
				if len(early) != 0 || ev.Mask != "IN_MODIFY" {
					t.Errorf("notify %d: events %v then %q, want IN_MODIFY alone", i, early, ev.Mask)
				}
				if ev.Content != want {
					t.Errorf("notify %d: the watcher read %q (%s) after the event, want %q", i, ev.Content, ev.ReadErr, want)
				}
				w.None(quiet) // one event per notify
				// The directory's watcher: one event, with the name.
				if ev, ok := wd.Next(eventWait); !ok || ev.Mask != "IN_MODIFY" || ev.Name != "gen" {
					t.Errorf("notify %d: the directory's watcher got %+v (%v), want IN_MODIFY of gen", i, ev, ok)
				}
				wd.None(50 * time.Millisecond)
				after := stat(t, p)
				// The snapshot's, on a no-open connection; on the one that
				// keeps OPEN the longest snapshot's given to the page cache:
				// one of those read so far, never less than before (the
				// watcher's open is cached when it is the file's only one and
				// its snapshot no shorter; which, depends on timing).
				sizes[int64(len(want))] = true
				wantSize := int64(len(want))
				if !m.opts.NoOpen && !m.twin {
					wantSize = before.Size
					if sizes[after.Size] && after.Size >= before.Size {
						wantSize = after.Size
					}
				}
				// Where the kernel caches the content, each snapshot shows
				// when it was made (its freshness bound needs it).
				cached := m.opts.NoOpen || m.twin
				timesOK := after.Mtim == before.Mtim && after.Ctim == before.Ctim
				if cached {
					timesOK = after.Mtim == after.Ctim && after.Mtim != before.Mtim && unix.TimespecToNsec(after.Mtim) > unix.TimespecToNsec(before.Mtim)
				}
				if after.Size != wantSize || !timesOK || after.Atim != before.Atim || after.Mode != before.Mode {
					t.Errorf("notify %d: stat size %d mtime %v ctime %v mode %o; want size %d, mode unchanged (%o) and times unchanged (%v %v) or, where the content is cached, the new snapshot's",
						i, after.Size, after.Mtim, after.Ctim, after.Mode, wantSize, before.Mode, before.Mtim, before.Ctim)
				}
				before.Mtim, before.Ctim, before.Size = after.Mtim, after.Ctim, after.Size
			}
			if !e.NotifyEvents() {
				t.Error("NotifyEvents false on a root mount")
			}
			wo.None(quiet) // the file that did not change

			if err := e.Remove(); err != nil {
				t.Fatal(err)
			}
			ev, early := w.Expect("IN_IGNORED", eventWait)
			if len(early) != 1 || !strings.Contains(early[0].Mask, "IN_DELETE_SELF") {
				t.Errorf("removal: events %v then %q, want IN_DELETE_SELF then IN_IGNORED", early, ev.Mask)
			}
			e.Notify() // after removal: nothing, no panic
			if err := other.Remove(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A knob written through the mount (the kernel's own IN_MODIFY) and set
// from Go (the Changer's notify): the watcher reads the new value after
// each event, and the handler's Setattr never sees a notification.
func TestNotifyKnob(t *testing.T) {
	for _, m := range notifyModes {
		t.Run(m.name, func(t *testing.T) {
			srv := mount(t, m.opts)
			k := &knob{Value: handler.NewValue("1\n")}
			e, err := srv.Create("knob", 0o644, k)
			if err != nil {
				t.Fatal(err)
			}
			if k.notify == nil {
				t.Fatal("Create did not call Changed")
			}
			k.setattrs.Store(0) // Create passes the mode through Setattr
			p := filepath.Join(srv.Mountpoint(), "knob")
			w := testenv.Watch(t, p, "", nil)
			w.None(quiet)

			if err := os.WriteFile(p, []byte("5\n"), 0); err != nil {
				t.Fatal(err)
			}
			// O_TRUNC may give an IN_MODIFY of its own before the write
			// (on a no-open connection it is a truncate); the last one
			// follows the write.
			ev, _ := w.Expect("IN_MODIFY", eventWait)
			for {
				next, ok := w.Next(quiet)
				if !ok {
					break
				}
				ev = next
			}
			if ev.Content != "5\n" {
				t.Errorf("after a write through the mount the watcher read %q (%s) after the last event, want \"5\\n\"", ev.Content, ev.ReadErr)
			}
			k.setattrs.Store(0) // O_TRUNC may arrive as a SETATTR

			k.set("6\n")
			ev, early := w.Expect("IN_MODIFY", eventWait)
			if len(early) != 0 || ev.Content != "6\n" {
				t.Errorf("after a set from Go: events %v, then the watcher read %q (%s), want \"6\\n\"", early, ev.Content, ev.ReadErr)
			}
			w.None(quiet)
			if n := k.setattrs.Load(); n != 0 {
				t.Errorf("the handler's Setattr ran %d times for a notification", n)
			}
			if b, _ := os.ReadFile(p); string(b) != "6\n" {
				t.Errorf("read after the set: %q", b)
			}

			if err := e.Remove(); err != nil {
				t.Fatal(err)
			}
			if !k.stopped.Load() {
				t.Error("Remove did not call the Changer's stop")
			}
			w.Expect("IN_IGNORED", eventWait)
		})
	}
}

// Notify on the RAM file (a backing file with passthrough, or forwarded)
// changes nothing a reader sees: bytes, size, times.
func TestNotifyKeepsRAMFile(t *testing.T) {
	for _, m := range notifyModes {
		t.Run(m.name, func(t *testing.T) {
			srv := mount(t, m.opts)
			store, err := bytestore.New(bytestore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			e, err := srv.Create("ramfile", 0o600, ramfile.New(store))
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(srv.Mountpoint(), "ramfile")
			if err := os.WriteFile(p, []byte("0123456789"), 0); err != nil {
				t.Fatal(err)
			}
			before := stat(t, p)
			w := testenv.Watch(t, p, "", nil)
			time.Sleep(10 * time.Millisecond) // times have nanoseconds: a change would show
			e.Notify()
			ev, _ := w.Expect("IN_MODIFY", eventWait)
			if ev.Content != "0123456789" {
				t.Errorf("read after the event: %q", ev.Content)
			}
			after := stat(t, p)
			if after.Size != 10 || after.Mtim != before.Mtim || after.Ctim != before.Ctim || after.Blocks != before.Blocks {
				t.Errorf("stat after Notify: size %d mtime %v ctime %v blocks %d; before: %d %v %v %d",
					after.Size, after.Mtim, after.Ctim, after.Blocks, before.Size, before.Mtim, before.Ctim, before.Blocks)
			}
			st, err := store.Stat()
			if err != nil || st.Size != 10 {
				t.Errorf("store after Notify: %+v, %v", st, err)
			}
		})
	}
}

// Many notifications with the garbage collector running all the time and
// readers on the files: nothing deadlocks, every watcher wakes, and what
// it reads last is the last content.
func TestNotifyUnderGC(t *testing.T) {
	old := debug.SetGCPercent(1)
	defer debug.SetGCPercent(old)
	for _, m := range notifyModes {
		t.Run(m.name, func(t *testing.T) {
			srv := mount(t, m.opts)
			c := newChanging("0\n")
			e, err := srv.Create("gen", 0o444, c.gen())
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(srv.Mountpoint(), "gen")
			w := testenv.Watch(t, p, "", nil)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var junk [][]byte
					for {
						select {
						case <-stop:
							return
						default:
						}
						junk = append(junk, make([]byte, 4096))
						if len(junk) > 256 {
							junk = nil
						}
						os.ReadFile(p)
					}
				}()
			}
			done := make(chan struct{})
			const n = 300
			go func() {
				defer close(done)
				for i := 1; i <= n; i++ {
					c.set(fmt.Sprintf("%d\n", i))
					e.Notify()
					if i%10 == 0 {
						time.Sleep(time.Millisecond)
					}
				}
			}()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				t.Fatal("300 notifies did not return within 60s")
			}
			last := fmt.Sprintf("%d\n", n)
			deadline := time.Now().Add(eventWait)
			events := 0
			for {
				ev, ok := w.Next(time.Until(deadline))
				if !ok {
					t.Fatalf("after %d events the watcher never read %q", events, last)
				}
				events++
				if ev.Content == last {
					break
				}
			}
			close(stop)
			wg.Wait()
			t.Logf("%d notifies, %d events (notifies made while one runs fold into one)", n, events)
		})
	}
}

// notifyServer serves a mount as the (unprivileged) user it runs as, for
// TestNotifyUnprivileged. Commands on stdin: "set NAME TEXT" changes a
// file's content and notifies, "setknob TEXT" sets the knob from Go,
// "events NAME" prints NotifyEvents.
func notifyServer(mnt string) int {
	srv, err := fusebridge.Mount(mnt, fusebridge.Options{})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer srv.Unmount()
	files := map[string]*changing{}
	entries := map[string]*fusebridge.Entry{}
	for _, f := range []struct {
		name string
		mode os.FileMode
		h    func(*changing) any
	}{
		{"gen", 0o444, func(c *changing) any { return c.gen() }},
		// A file that claims another owner: the server may not touch
		// its times, so there is no event (the degraded case).
		{"foreign", 0o444, func(c *changing) any { return foreignOwned{c.gen()} }},
	} {
		c := newChanging("start\n")
		e, err := srv.Create(f.name, f.mode, f.h(c))
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		files[f.name], entries[f.name] = c, e
	}
	k := &knob{Value: handler.NewValue("1\n")}
	if _, err := srv.Create("knob", 0o644, k); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 3)
		switch {
		case len(f) == 2 && f[0] == "setknob": // a set from Go
			k.set(f[1] + "\n")
			fmt.Println("ok")
		case len(f) == 3 && f[0] == "set":
			files[f[1]].set(f[2] + "\n")
			entries[f[1]].Notify()
			fmt.Println("ok")
		case len(f) == 2 && f[0] == "events":
			fmt.Println(entries[f[1]].NotifyEvents())
		}
	}
	return 0
}

// foreignOwned reports uid 1 (daemon) as the owner of a Generated file
// (not 0: go-fuse replaces an owner of 0 with the server's).
type foreignOwned struct{ handler.Generated }

func (f foreignOwned) Getattr(ctx context.Context, a *handler.Attr) error {
	a.Uid, a.Gid = 1, 1
	return nil
}

// An unprivileged server (user nobody, mounted through fusermount3) raises
// the event for its own read-only files and knobs, as root does (a knob
// written through the mount, or set from Go); for a file it does not own
// it cannot, and then there is no event, the content is still fresh,
// NotifyEvents says so, and nothing fails or hangs.
func TestNotifyUnprivileged(t *testing.T) {
	testenv.RequireUnprivilegedFUSE(t)
	bin := testenv.CopyForNobody(t, "")
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
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), notifyServeEnv+"="+mnt)
	cmd.SysProcAttr = nobody
	cmd.Stderr = testenv.Output(t)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
		unix.Unmount(mnt, unix.MNT_DETACH)
	})
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	reply := func() string {
		t.Helper()
		select {
		case l := <-lines:
			return l
		case <-time.After(eventWait):
			t.Fatal("the unprivileged server did not answer")
		}
		return ""
	}
	if l := reply(); l != "ready" {
		t.Fatalf("unprivileged server: %q", l)
	}
	say := func(cmd string) string {
		t.Helper()
		fmt.Fprintln(stdin, cmd)
		return reply()
	}

	w := testenv.Watch(t, filepath.Join(mnt, "gen"), bin, nobody)
	wf := testenv.Watch(t, filepath.Join(mnt, "foreign"), bin, nobody)
	w.None(quiet)
	if l := say("set gen second"); l != "ok" {
		t.Fatal(l)
	}
	ev, _ := w.Expect("IN_MODIFY", eventWait)
	if ev.Content != "second\n" {
		t.Errorf("unprivileged: the watcher read %q (%s) after the event", ev.Content, ev.ReadErr)
	}
	if l := say("events gen"); l != "true" {
		t.Errorf("NotifyEvents of the server's own file: %s", l)
	}

	// A knob, written through the mount by another process of the user,
	// then set from Go code in the server.
	wk := testenv.Watch(t, filepath.Join(mnt, "knob"), bin, nobody)
	wk.None(quiet)
	echo := exec.Command("sh", "-c", `echo 7 > "$1"`, "sh", filepath.Join(mnt, "knob"))
	echo.SysProcAttr = nobody
	if out, err := echo.CombinedOutput(); err != nil {
		t.Fatalf("echo 7 > knob as nobody: %v: %s", err, out)
	}
	ev, _ = wk.Expect("IN_MODIFY", eventWait)
	for {
		next, ok := wk.Next(quiet)
		if !ok {
			break
		}
		ev = next
	}
	if ev.Content != "7\n" {
		t.Errorf("unprivileged knob written through the mount: the watcher read %q (%s) last", ev.Content, ev.ReadErr)
	}
	if l := say("setknob 8"); l != "ok" {
		t.Fatal(l)
	}
	if ev, _ := wk.Expect("IN_MODIFY", eventWait); ev.Content != "8\n" {
		t.Errorf("unprivileged knob set from Go: the watcher read %q (%s)", ev.Content, ev.ReadErr)
	}

	if l := say("set foreign second"); l != "ok" {
		t.Fatal(l)
	}
	wf.None(quiet)
	deadline := time.Now().Add(eventWait)
	for say("events foreign") != "false" {
		if time.Now().After(deadline) {
			t.Fatal("NotifyEvents stays true for a file the server does not own")
		}
		time.Sleep(10 * time.Millisecond)
	}
	read := exec.Command("cat", filepath.Join(mnt, "foreign"))
	read.SysProcAttr = nobody
	if out, err := read.CombinedOutput(); err != nil || string(out) != "second\n" {
		t.Errorf("reading the file without an event: %q, %v; want the new content", out, err)
	}
}

// poll(2) and epoll on a published file, as measured: go-fuse switches
// POLL off for the connection, so the kernel reports every file always
// readable and writable, before and after a change, on every kind of
// connection (a tmpfs file gives the same poll(2) answer, but refuses
// epoll with EPERM).
func TestPollAlwaysReady(t *testing.T) {
	for _, m := range notifyModes {
		t.Run(m.name, func(t *testing.T) {
			srv := mount(t, m.opts)
			c := newChanging("a\n")
			e, err := srv.Create("gen", 0o444, c.gen())
			if err != nil {
				t.Fatal(err)
			}
			fd, err := unix.Open(filepath.Join(srv.Mountpoint(), "gen"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			check := func(when string) {
				fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}
				n, err := unix.Poll(fds, 0)
				if err != nil || n != 1 || fds[0].Revents != unix.POLLIN|unix.POLLOUT {
					t.Errorf("poll %s: n %d revents %#x, %v; want POLLIN|POLLOUT at once", when, n, fds[0].Revents, err)
				}
				ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(ep)
				if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLPRI, Fd: int32(fd)}); err != nil {
					t.Fatalf("epoll_ctl ADD: %v", err)
				}
				evs := make([]unix.EpollEvent, 1)
				n, err = unix.EpollWait(ep, evs, 0)
				if err != nil || n != 1 || evs[0].Events != unix.EPOLLIN {
					t.Errorf("epoll_wait %s: n %d events %#x, %v; want EPOLLIN at once", when, n, evs[0].Events, err)
				}
			}
			check("before a change")
			c.set("b\n")
			e.Notify()
			time.Sleep(50 * time.Millisecond)
			check("after a notify")
		})
	}
	tmp := testenv.Tmpfs(t, "")
	f, err := os.Create(filepath.Join(tmp, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ep, _ := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	defer unix.Close(ep)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, int(f.Fd()), &unix.EpollEvent{Events: unix.EPOLLIN}); errnoOf(err) != unix.EPERM {
		t.Errorf("epoll_ctl on a tmpfs file: %v, want EPERM", err)
	}
}

// fanotify gets the event too (FAN_MODIFY), on every kind of connection,
// in the mode that reports file handles (FAN_REPORT_FID). A group that
// reports descriptors gets only events that carry an open file (a write),
// which is so for a truncate or a utimensat on tmpfs too.
func TestNotifyFanotify(t *testing.T) {
	for _, m := range notifyModes {
		t.Run(m.name, func(t *testing.T) {
			srv := mount(t, m.opts)
			c := newChanging("a\n")
			e, err := srv.Create("gen", 0o444, c.gen())
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(srv.Mountpoint(), "gen")
			fan, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_REPORT_FID, unix.O_RDONLY|unix.O_CLOEXEC)
			if err != nil {
				testenv.Missing(t, "fanotify_init: "+err.Error())
			}
			defer unix.Close(fan)
			if err := unix.FanotifyMark(fan, unix.FAN_MARK_ADD, unix.FAN_MODIFY, unix.AT_FDCWD, p); err != nil {
				t.Fatalf("fanotify_mark: %v", err)
			}
			c.set("b\n")
			e.Notify()
			fds := []unix.PollFd{{Fd: int32(fan), Events: unix.POLLIN}}
			if n, err := unix.Poll(fds, int(eventWait/time.Millisecond)); err != nil || n != 1 {
				t.Fatalf("no fanotify event within %v (%v)", eventWait, err)
			}
			buf := make([]byte, 4096)
			n, err := unix.Read(fan, buf)
			if err != nil || n < int(unsafe.Sizeof(unix.FanotifyEventMetadata{})) {
				t.Fatalf("read fanotify: %d, %v", n, err)
			}
			md := (*unix.FanotifyEventMetadata)(unsafe.Pointer(&buf[0]))
			if md.Mask != unix.FAN_MODIFY {
				t.Errorf("fanotify mask %#x, want FAN_MODIFY", md.Mask)
			}
		})
	}
}

// The same utimensat(2) on a tmpfs file, the oracle: a fanotify group that
// reports descriptors gets no event for it, one that reports file handles
// does; inotify does (as TestNotifyGenerated shows for ours).
func TestFanotifyOracle(t *testing.T) {
	p := filepath.Join(testenv.Tmpfs(t, ""), "f")
	if err := os.WriteFile(p, []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	for _, fid := range []bool{false, true} {
		flags := uint(unix.FAN_CLASS_NOTIF | unix.FAN_CLOEXEC)
		if fid {
			flags |= unix.FAN_REPORT_FID
		}
		fan, err := unix.FanotifyInit(flags, unix.O_RDONLY|unix.O_CLOEXEC)
		if err != nil {
			testenv.Missing(t, "fanotify_init: "+err.Error())
		}
		defer unix.Close(fan)
		if err := unix.FanotifyMark(fan, unix.FAN_MARK_ADD, unix.FAN_MODIFY, unix.AT_FDCWD, p); err != nil {
			t.Fatalf("fanotify_mark: %v", err)
		}
		st := stat(t, p)
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{{Nsec: unix.UTIME_OMIT}, st.Mtim}, 0); err != nil {
			t.Fatal(err)
		}
		fds := []unix.PollFd{{Fd: int32(fan), Events: unix.POLLIN}}
		n, _ := unix.Poll(fds, 200)
		if got := n == 1; got != fid {
			t.Errorf("tmpfs, FAN_REPORT_FID %v: event %v, want %v", fid, got, fid)
		}
	}
}

// selfNotifying is a knob that notifies from inside its own Write
// callback, while the kernel holds the inode lock of the write that the
// notification's own syscall needs: Notify must not wait for it there.
type selfNotifying struct {
	knob
}

func (s *selfNotifying) Write(ctx context.Context, f *handler.OpenFile, src []byte, off int64) (int, error) {
	n, err := s.Value.Write(ctx, f, src, off)
	s.mu.Lock()
	notify := s.notify
	s.mu.Unlock()
	notify()
	return n, err
}

func TestNotifyFromCallback(t *testing.T) {
	for _, m := range notifyModes {
		t.Run(m.name, func(t *testing.T) {
			srv := mount(t, m.opts)
			k := &selfNotifying{knob{Value: handler.NewValue("1\n")}}
			if _, err := srv.Create("knob", 0o644, k); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(srv.Mountpoint(), "knob")
			w := testenv.Watch(t, p, "", nil)
			done := make(chan error, 1)
			go func() {
				// Another process writes, as a user would.
				done <- exec.Command("sh", "-c", `echo 22 > "$1"`, "sh", p).Run()
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("echo 22 > knob: %v", err)
				}
			case <-time.After(eventWait):
				t.Fatal("a write whose callback notifies did not return within 10s")
			}
			ev, _ := w.Expect("IN_MODIFY", eventWait)
			for {
				next, ok := w.Next(quiet)
				if !ok {
					break
				}
				ev = next
			}
			if ev.Content != "22\n" {
				t.Errorf("after the last event the watcher read %q (%s), want \"22\\n\"", ev.Content, ev.ReadErr)
			}
		})
	}
}

// Removal of a file that is open: as for an unlinked tmpfs file, the
// watcher gets IN_DELETE_SELF and IN_IGNORED when the last descriptor is
// closed (measured: nothing before).
func TestNotifyRemoveWhileOpen(t *testing.T) {
	for _, m := range notifyModes {
		t.Run(m.name, func(t *testing.T) {
			srv := mount(t, m.opts)
			e, err := srv.Create("gen", 0o444, text("a\n"))
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(srv.Mountpoint(), "gen")
			w := testenv.Watch(t, p, "", nil)
			fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Remove(); err != nil {
				t.Fatal(err)
			}
			var got []string
			if ev, ok := w.Next(quiet); ok {
				got = append(got, ev.Mask) // not an error: the kernel may report it early
			}
			unix.Close(fd)
			ev, before := w.Expect("IN_IGNORED", eventWait)
			for _, b := range before {
				got = append(got, b.Mask)
			}
			got = append(got, ev.Mask)
			if strings.Join(got, " ") != "IN_DELETE_SELF IN_IGNORED" {
				t.Errorf("removal of an open file, then close: events %v, want IN_DELETE_SELF IN_IGNORED", got)
			}
		})
	}
}

// A reader that keeps the file open and reads it again from offset 0 after
// the event (the sysfs pattern) gets the new content on every connection.
func TestNotifyRereadOpenDescriptor(t *testing.T) {
	for _, m := range notifyModes {
		t.Run(m.name, func(t *testing.T) {
			srv := mount(t, m.opts)
			c := newChanging("old\n")
			e, err := srv.Create("gen", 0o444, c.gen())
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(srv.Mountpoint(), "gen")
			fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			buf := make([]byte, 100)
			if n, _ := unix.Pread(fd, buf, 0); string(buf[:n]) != "old\n" {
				t.Fatalf("first read %q", buf[:n])
			}
			w := testenv.Watch(t, p, "", nil)
			c.set("new\n")
			e.Notify()
			w.Expect("IN_MODIFY", eventWait)
			// Every connection gives the new text: a no-open one because
			// Notify dropped the cached pages and the snapshot, one with
			// OPEN because Generated takes a new snapshot when a
			// descriptor goes back to offset 0, as seq_file does.
			n, err := unix.Pread(fd, buf, 0)
			if err != nil || string(buf[:n]) != "new\n" {
				t.Errorf("re-read of the open descriptor: %q, %v; want %q", buf[:n], err, "new\n")
			}
		})
	}
}

// Notifies racing with the removal of their entry and the publication of
// another file under the same name: the new file is never touched (its
// Setattr never runs, its mtime never moves) and nothing hangs.
func TestNotifyRacesRemove(t *testing.T) {
	for _, m := range notifyModes {
		t.Run(m.name, func(t *testing.T) {
			srv := mount(t, m.opts)
			p := filepath.Join(srv.Mountpoint(), "x")
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; i < 40; i++ {
					old, err := srv.Create("x", 0o444, text("old\n"))
					if err != nil {
						t.Error(err)
						return
					}
					os.ReadFile(p) // looked up, so the kernel knows it
					for range 5 {
						old.Notify()
					}
					if err := old.Remove(); err != nil {
						t.Error(err)
						return
					}
					k := &knob{Value: handler.NewValue("new\n")}
					e, err := srv.Create("x", 0o444, k)
					if err != nil {
						t.Error(err)
						return
					}
					k.setattrs.Store(0) // Create passes the mode through Setattr
					var before, after unix.Stat_t
					if err := unix.Stat(p, &before); err != nil {
						t.Error(err)
						return
					}
					old.Notify() // removed: must do nothing
					time.Sleep(2 * time.Millisecond)
					if err := unix.Stat(p, &after); err != nil {
						t.Error(err)
						return
					}
					if n := k.setattrs.Load(); n != 0 || after.Mtim != before.Mtim {
						t.Errorf("round %d: the new file got %d setattrs, mtime %v -> %v", i, n, before.Mtim, after.Mtim)
					}
					if err := e.Remove(); err != nil {
						t.Error(err)
						return
					}
				}
			}()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				t.Fatal("40 rounds of create, notify, remove did not finish within 60s")
			}
		})
	}
}
