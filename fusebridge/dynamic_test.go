package fusebridge_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// mapDir is a dynamic directory over a map that the test changes: a
// stand-in for /proc/<pid>.
type mapDir struct {
	mu   sync.Mutex
	kids map[string]any
}

func newMapDir() *mapDir { return &mapDir{kids: map[string]any{}} }

func (m *mapDir) set(name string, node any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if node == nil {
		delete(m.kids, name)
	} else {
		m.kids[name] = node
	}
}

func (m *mapDir) Lookup(ctx context.Context, name string) (handler.Child, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.kids[name]
	if !ok {
		return handler.Child{}, fmt.Errorf("no %s: %w", name, syscall.ENOENT)
	}
	return handler.Child{Name: name, Mode: 0o444, Node: n}, nil
}

func (m *mapDir) List(ctx context.Context) ([]handler.Child, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var list []handler.Child
	for name, n := range m.kids {
		list = append(list, handler.Child{Name: name, Mode: 0o555, Node: n})
	}
	return list, nil
}

func inoOf(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

// TestDynamicDir checks a directory whose handler makes its children: they
// appear and vanish with the handler's answers, with no caching by the
// kernel, keep their inode number while they exist, and a vanished
// child's descriptors get EIO.
func TestDynamicDir(t *testing.T) {
	for _, opts := range []fusebridge.Options{{}, {NoOpenHandlers: true}} {
		t.Run(fmt.Sprintf("noopenhandlers=%v", opts.NoOpenHandlers), func(t *testing.T) {
			srv := mount(t, opts)
			mnt := srv.Mountpoint()
			pids := newMapDir()
			if _, err := srv.Root().Mkdir("proc", 0o555); err != nil {
				t.Fatal(err)
			}
			if _, err := srv.Create("proc/pids", 0o555, pids); err != nil {
				t.Fatal(err)
			}
			one := newMapDir()
			one.set("status", text("Pid: 1\n"))
			pids.set("1", one)
			pids.set("version", text("v1\n"))
			pids.set("link", handler.Link("1/status"))
			dir := filepath.Join(mnt, "proc/pids")

			if got := listNames(t, dir); got != "1 link version" {
				t.Errorf("ls = %q", got)
			}
			if got := readAt(t, filepath.Join(dir, "1/status")); got != "Pid: 1\n" {
				t.Errorf("1/status = %q", got)
			}
			if got := readAt(t, filepath.Join(dir, "link")); got != "Pid: 1\n" {
				t.Errorf("through the link: %q", got)
			}
			ino := inoOf(t, filepath.Join(dir, "1"))
			sino := inoOf(t, filepath.Join(dir, "1/status"))
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if got := inoOf(t, filepath.Join(dir, "1")); got != ino {
					t.Errorf("inode of 1 moved: %d then %d", ino, got)
				}
			}
			for _, e := range ents {
				info, _ := e.Info()
				if e.Name() == "1" && info.Sys().(*syscall.Stat_t).Ino != ino {
					t.Errorf("readdir's inode of 1 differs from stat's")
				}
			}
			if e := srv.Lookup("proc/pids/1"); e == nil || e.Dir() == nil {
				t.Errorf("Lookup of a dynamic child = %v", e)
			}

			// A child appears without any notification.
			two := newMapDir()
			two.set("status", text("Pid: 2\n"))
			if _, err := os.Stat(filepath.Join(dir, "2")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("stat of an absent child: %v", err)
			}
			pids.set("2", two)
			if got := readAt(t, filepath.Join(dir, "2/status")); got != "Pid: 2\n" {
				t.Errorf("2/status = %q", got)
			}

			// It vanishes: ENOENT at once, EIO for its descriptors.
			f, err := os.Open(filepath.Join(dir, "1/status"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			pids.set("1", nil)
			if _, err := os.Stat(filepath.Join(dir, "1")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stat of a vanished child: %v", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "1/status")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stat inside a vanished child: %v", err)
			}
			if _, err := f.ReadAt(make([]byte, 4), 0); !errors.Is(err, syscall.EIO) {
				t.Errorf("read of a vanished child's descriptor: %v, want EIO", err)
			}
			// Back again, it is a new child.
			pids.set("1", one)
			if got := inoOf(t, filepath.Join(dir, "1")); got == ino {
				t.Errorf("a child that vanished came back with its old inode number %d", ino)
			}
			if got := inoOf(t, filepath.Join(dir, "1/status")); got == sino {
				t.Errorf("a file in a vanished child came back with its old inode number")
			}
			if err := unix.Rmdir(filepath.Join(dir, "2")); !errors.Is(err, unix.EPERM) {
				t.Errorf("rmdir of a dynamic child: %v, want EPERM", err)
			}
			if err := unix.Unlink(filepath.Join(dir, "version")); !errors.Is(err, unix.EPERM) {
				t.Errorf("unlink of a dynamic child: %v, want EPERM", err)
			}
			if _, err := srv.Create("proc/pids/x", 0o444, text("")); errnoOf(err) != unix.ENOENT {
				t.Errorf("Create in a dynamic directory: %v, want ENOENT", err)
			}
			if err := srv.Lookup("proc").Remove(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(dir, "2")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stat in a removed dynamic directory: %v", err)
			}
		})
	}
}

type dirent struct {
	ino  uint64
	off  int64
	name string
}

// getdents reads one batch of entries from the directory fd with a buffer
// of n bytes.
func getdents(t *testing.T, fd, n int) []dirent {
	t.Helper()
	buf := make([]byte, n)
	got, err := unix.Getdents(fd, buf)
	if err != nil {
		t.Fatalf("getdents: %v", err)
	}
	var list []dirent
	for b := buf[:got]; len(b) > 0; {
		reclen := binary.LittleEndian.Uint16(b[16:18])
		name := b[19:reclen]
		if i := strings.IndexByte(string(name), 0); i >= 0 {
			name = name[:i]
		}
		list = append(list, dirent{
			ino:  binary.LittleEndian.Uint64(b[0:8]),
			off:  int64(binary.LittleEndian.Uint64(b[8:16])),
			name: string(name),
		})
		b = b[reclen:]
	}
	return list
}

// TestReaddirChurn lists a directory in small getdents buffers while
// children come and go between the calls, and seeks back to a telldir
// cookie: every child that stayed must be listed exactly once, as
// xfstests generic/257 and go-fuse's posixtest DirSeek demand.
func TestReaddirChurn(t *testing.T) {
	for _, kind := range []string{"static", "dynamic"} {
		t.Run(kind, func(t *testing.T) {
			srv := mount(t, fusebridge.Options{})
			var add, del func(name string)
			var path string
			switch kind {
			case "static":
				d, err := srv.Root().Mkdir("d", 0o555)
				if err != nil {
					t.Fatal(err)
				}
				add = func(name string) {
					if _, err := d.Create(name, 0o444, text(name)); err != nil {
						t.Fatal(err)
					}
				}
				del = func(name string) {
					if err := d.Lookup(name).Remove(); err != nil {
						t.Fatal(err)
					}
				}
			case "dynamic":
				m := newMapDir()
				if _, err := srv.Create("d", 0o555, m); err != nil {
					t.Fatal(err)
				}
				add = func(name string) { m.set(name, text(name)) }
				del = func(name string) { m.set(name, nil) }
			}
			path = filepath.Join(srv.Mountpoint(), "d")
			stay := map[string]bool{}
			for i := range 300 {
				name := fmt.Sprintf("f%03d", i)
				add(name)
				if i%3 != 0 {
					stay[name] = true
				}
			}
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)

			seen := map[string]int{}
			var cookies []dirent
			next := 0
			for round := 0; ; round++ {
				batch := getdents(t, fd, 200) // a few entries per call
				if len(batch) == 0 {
					break
				}
				for _, e := range batch {
					seen[e.name]++
					cookies = append(cookies, e)
				}
				// Churn: remove a child that is not staying, add new ones.
				for ; next < 300; next++ {
					name := fmt.Sprintf("f%03d", next)
					if !stay[name] {
						del(name)
						next++
						break
					}
				}
				add(fmt.Sprintf("new%03d", round))
			}
			for name := range stay {
				if seen[name] != 1 {
					t.Errorf("%s, which stayed, listed %d times", name, seen[name])
				}
			}
			for name, n := range seen {
				if n != 1 {
					t.Errorf("%s listed %d times", name, n)
				}
			}
			if seen["."] != 1 || seen[".."] != 1 {
				t.Errorf(". and .. listed %d and %d times", seen["."], seen[".."])
			}

			// seekdir to a telldir cookie taken mid-listing: the rest is
			// listed again, from right after that entry, once each.
			mid := len(cookies) / 2
			if _, err := unix.Seek(fd, cookies[mid].off, 0); err != nil {
				t.Fatal(err)
			}
			after := map[string]int{}
			for {
				batch := getdents(t, fd, 200)
				if len(batch) == 0 {
					break
				}
				for _, e := range batch {
					after[e.name]++
				}
			}
			for _, e := range cookies[mid+1:] {
				if stay[e.name] && after[e.name] != 1 {
					t.Errorf("after seekdir, %s (stayed) listed %d times", e.name, after[e.name])
				}
			}
			for _, e := range cookies[:mid+1] {
				if after[e.name] != 0 {
					t.Errorf("after seekdir, %s (before the cookie) listed again", e.name)
				}
			}
		})
	}
}

// TestSymlinks checks a static link and a link computed per reader, as
// /proc/self: two processes resolve it to their own pids.
func TestSymlinks(t *testing.T) {
	srv := mount(t, fusebridge.Options{NoOpenHandlers: true})
	mnt := srv.Mountpoint()
	if _, err := srv.Root().Mkdir("d", 0o555); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Create("d/file", 0o444, text("content")); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Create("d/static", 0o777, handler.Link("file")); err != nil {
		t.Fatal(err)
	}
	// The request names the calling thread; the link names its process.
	self := handler.SelfLink
	if _, err := srv.Create("self", 0o777, self); err != nil {
		t.Fatal(err)
	}
	if got, err := os.Readlink(filepath.Join(mnt, "d/static")); err != nil || got != "file" {
		t.Errorf("readlink d/static = %q, %v", got, err)
	}
	if got := readAt(t, filepath.Join(mnt, "d/static")); got != "content" {
		t.Errorf("through d/static: %q", got)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "d/static"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFLNK || st.Size != 4 {
		t.Errorf("lstat d/static: mode %o size %d, %v", st.Mode, st.Size, err)
	}
	if err := unix.Unlink(filepath.Join(mnt, "self")); !errors.Is(err, unix.EPERM) {
		t.Errorf("unlink of a link: %v, want EPERM", err)
	}
	for range 3 {
		if got, err := os.Readlink(filepath.Join(mnt, "self")); err != nil || got != strconv.Itoa(os.Getpid()) {
			t.Errorf("readlink self in the test = %q, %v; want %d", got, err, os.Getpid())
		}
		cmd := exec.CommandContext(boundedCtx(t), "readlink", filepath.Join(mnt, "self"))
		var out strings.Builder
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid := cmd.Process.Pid
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out.String()) != strconv.Itoa(pid) {
			t.Errorf("readlink self in process %d = %q", pid, out.String())
		}
	}
}

// TestPerCaller has root and nobody, in separate processes, read a
// per-caller file at the same time on a NoOpenHandlers passthrough mount
// (where other handler files are cached by the kernel): each read gets its
// own reader's uid and pid.
func TestPerCaller(t *testing.T) {
	tmp := t.TempDir()
	os.Chmod(tmp, 0o755)
	os.Chmod(filepath.Dir(tmp), 0o755)
	testenv.RequireFUSE(t)
	srv, err := fusebridge.Mount(filepath.Join(tmp, "mnt"), fusebridge.Options{NoOpenHandlers: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()
	if !srv.HandlersNoOpen() {
		testenv.Missing(t, "needs FUSE passthrough (root, Linux >= 6.9)")
	}
	me := handler.PerCallerGenerated(func(ctx context.Context) ([]byte, error) {
		c, _ := handler.CallerOf(ctx)
		return fmt.Appendf(nil, "uid=%d pid=%d\n", c.Uid, c.Tid), nil
	})
	if _, err := srv.Root().Mkdir("d", 0o555); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Create("d/cached", 0o444, text("x")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"me", "d/me"} {
		if _, err := srv.Create(p, 0o444, me); err != nil {
			t.Fatal(err)
		}
	}
	ctx := boundedCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for _, uid := range []uint32{0, 65534} {
		for _, p := range []string{"me", "d/me"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 15 {
					out, pid, err := catAs(ctx, uid, filepath.Join(srv.Mountpoint(), p))
					if want := fmt.Sprintf("uid=%d pid=%d\n", uid, pid); err != nil || string(out) != want {
						errs <- fmt.Errorf("%s read by uid %d pid %d: %q, %v; want %q", p, uid, pid, out, err, want)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The per-caller files live on the main connection, the cached one
	// on the no-open one.
	mnt := srv.Mountpoint()
	if devOf(t, filepath.Join(mnt, "d/me")) != devOf(t, mnt) || devOf(t, filepath.Join(mnt, "d/cached")) == devOf(t, mnt) {
		t.Error("files are not on the connections that suit them")
	}
}

// catAs runs cat of path as uid (and gid uid) and returns what it printed
// and its pid.
func catAs(ctx context.Context, uid uint32, path string) ([]byte, int, error) {
	cmd := exec.CommandContext(ctx, "cat", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	err := cmd.Wait()
	return out.Bytes(), cmd.Process.Pid, err
}

// TestPerCallerNoOpen: a NoOpen mount made by root serves what must not
// be cached over a second connection that keeps OPEN, bound over its name;
// an unprivileged one, which cannot, refuses it at Create instead of
// serving one caller's content to another.
func TestPerCallerNoOpen(t *testing.T) {
	srv := mount(t, fusebridge.Options{NoOpen: true})
	mnt := srv.Mountpoint()
	n := 0
	me := handler.PerCallerGenerated(func(ctx context.Context) ([]byte, error) {
		n++
		return fmt.Appendf(nil, "open %d", n), nil
	})
	if _, err := srv.Root().Mkdir("d", 0o555); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Create("d/me", 0o444, me); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Create("d/cached", 0o444, text("c")); err != nil {
		t.Fatal(err)
	}
	pids := newMapDir()
	pids.set("x", text("x"))
	if _, err := srv.Create("pids", 0o555, pids); err != nil {
		t.Fatal(err)
	}
	// Each open generates afresh: nothing is served from a cache.
	for i := 1; i <= 3; i++ {
		if got := readAt(t, filepath.Join(mnt, "d/me")); got != fmt.Sprintf("open %d", i) {
			t.Errorf("read %d of the per-caller file = %q", i, got)
		}
	}
	if got := readAt(t, filepath.Join(mnt, "pids/x")); got != "x" {
		t.Errorf("pids/x = %q", got)
	}
	pids.set("x", nil)
	if _, err := os.Stat(filepath.Join(mnt, "pids/x")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat of a vanished child: %v", err)
	}
	if devOf(t, filepath.Join(mnt, "d/me")) == devOf(t, mnt) || devOf(t, filepath.Join(mnt, "d/cached")) != devOf(t, mnt) {
		t.Error("files are not on the connections that suit them")
	}
	if err := srv.Lookup("d").Remove(); err != nil {
		t.Fatal(err)
	}
	mounts := testenv.MountsUnder(t, mnt)
	if len(mounts) != 2 || mounts[1] != filepath.Join(mnt, "pids") {
		t.Errorf("mounts after removing d = %q, want the directory and pids", mounts)
	}

	// Unprivileged, in a child process run as nobody.
	testenv.RequireUnprivilegedFUSE(t)
	dir, err := os.MkdirTemp("", "fusebridge-nobody")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "test")
	if b, err := os.ReadFile(self); err != nil || os.WriteFile(bin, b, 0o755) != nil {
		t.Fatalf("copying the test binary: %v", err)
	}
	os.Chmod(dir, 0o755)
	os.Chown(dir, 65534, 65534)
	cmd := exec.CommandContext(boundedCtx(t), bin, filepath.Join(dir, "mnt"))
	cmd.Env = append(os.Environ(), childEnv+"=noopen-percaller")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "refused: ") || !strings.Contains(string(out), "invalid argument") {
		t.Errorf("unprivileged NoOpen mount, Create of a per-caller file: %s (%v); want it refused with EINVAL", out, err)
	}
}

// noOpenPerCaller is the child side of TestPerCallerNoOpen.
func noOpenPerCaller(mnt string) int {
	srv, err := fusebridge.Mount(mnt, fusebridge.Options{NoOpen: true})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer srv.Unmount()
	_, err = srv.Create("me", 0o444, handler.PerCallerGenerated(func(ctx context.Context) ([]byte, error) { return nil, nil }))
	if err == nil {
		fmt.Println("accepted")
		return 1
	}
	fmt.Println("refused:", err)
	return 0
}

// boundedCtx bounds a child process: a test never waits on one for ever
// (the context kills it).
func boundedCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestDynamicInodeStableUnderConcurrency stats a dynamic child that never
// goes away from several goroutines while others list the directory and
// children come and go around it: its inode number never changes.
func TestDynamicInodeStableUnderConcurrency(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	m := newMapDir()
	m.set("stay", text("s"))
	if _, err := srv.Create("d", 0o555, m); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(srv.Mountpoint(), "d")
	want := inoOf(t, filepath.Join(dir, "stay"))
	var wg sync.WaitGroup
	deadline := time.Now().Add(time.Second)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				switch g {
				case 0:
					m.set(fmt.Sprintf("tmp%d", i%5), text("t"))
					m.set(fmt.Sprintf("tmp%d", (i+2)%5), nil)
				case 1:
					if _, err := os.ReadDir(dir); err != nil {
						t.Error(err)
						return
					}
				default:
					var st unix.Stat_t
					if err := unix.Stat(filepath.Join(dir, "stay"), &st); err != nil || st.Ino != want {
						t.Errorf("stat of a child that stays: ino %d, %v; want %d", st.Ino, err, want)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

// stream is a file of unknown size: a Reader without SnapshotSizer or
// Getattrer, producing its bytes for the offset asked (as the knobs
// engineer's streamed files do).
type stream struct{ size int64 }

func (s stream) Read(ctx context.Context, f *handler.OpenFile, dst []byte, off int64) (int, error) {
	n := 0
	for ; n < len(dst) && off+int64(n) < s.size; n++ {
		dst[n] = byte('a' + (off+int64(n))%26)
	}
	return n, nil
}

// TestUnknownSize: a streamed file reports size 0, so a connection that
// caches files would show it empty; the bridge serves it with
// FOPEN_DIRECT_IO on a connection that keeps OPEN, in every mode.
func TestUnknownSize(t *testing.T) {
	for _, opts := range []fusebridge.Options{{}, {NoOpenHandlers: true}, {NoOpen: true}} {
		t.Run(fmt.Sprintf("noopen=%v,handlers=%v", opts.NoOpen, opts.NoOpenHandlers), func(t *testing.T) {
			srv := mount(t, opts)
			if _, err := srv.MkdirAll("d", 0o555); err != nil {
				t.Fatal(err)
			}
			if _, err := srv.Create("d/cached", 0o444, text("c")); err != nil {
				t.Fatal(err)
			}
			if _, err := srv.Create("d/stream", 0o444, stream{size: 300000}); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(srv.Mountpoint(), "d/stream"))
			if err != nil || len(b) != 300000 || b[299999] != byte('a'+299999%26) {
				t.Fatalf("read of a streamed file: %d bytes, %v; want 300000", len(b), err)
			}
		})
	}
}
