package fusebridge_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// childEnv makes the test binary act as a helper process instead of running
// tests: a FUSE server must not be the process that faults on or hammers its
// own mount, and a killed server has to be another process.
const childEnv = "FUSEBRIDGE_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode, os.Args[len(os.Args)-1]))
	}
	testenv.ExamplesNeedFUSE() // the examples mount, as a user's program does
	code := m.Run()
	testenv.RemoveBuilds() // the keeper of crash_test.go
	os.Exit(code)
}

func runChild(mode, arg string) int {
	switch mode {
	case "serve": // mount arg, say so, then serve until killed
		srv, err := fusebridge.Mount(arg, fusebridge.Options{})
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		srv.Create("hello", 0o444, handler.Generated(func(context.Context) ([]byte, error) { return []byte("hi\n"), nil }))
		fmt.Println("ready")
		select {}
	}
	if mode == "mapfirst" {
		return mapFirst(arg) // splice_test.go
	}
	if mode == "noopen-percaller" {
		return noOpenPerCaller(arg)
	}
	if mode == "restartable" {
		return restartableChild(arg) // restart_test.go
	}
	return 2
}

func mount(t *testing.T, opts fusebridge.Options) *fusebridge.Server {
	t.Helper()
	testenv.RequireFUSE(t)
	srv, err := fusebridge.Mount(filepath.Join(t.TempDir(), "mnt"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return srv
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

func text(s string) handler.Generated {
	return func(context.Context) ([]byte, error) { return []byte(s), nil }
}

func TestGeneratedFile(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	var n atomic.Int64
	if _, err := srv.Create("counter", 0o444, handler.Generated(func(context.Context) ([]byte, error) {
		return fmt.Appendf(nil, "%d\n", n.Add(1)), nil
	})); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(srv.Mountpoint(), "counter")
	for want := 1; want <= 3; want++ {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		// Fresh content on every open: the page cache, where the kernel
		// reads it from, is given each open's snapshot.
		if got := string(b); got != fmt.Sprintf("%d\n", want) {
			t.Fatalf("read %d: got %q", want, got)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	// The size is the last snapshot's ("3\n"): the kernel reads it from
	// its page cache, no further than the size it knows.
	if st.Mode != syscall.S_IFREG|0o444 || st.Nlink != 1 || st.Size != 2 {
		t.Errorf("stat: mode %o nlink %d size %d; want regular 0444, 1 link, size 2 (the last snapshot's)", st.Mode, st.Nlink, st.Size)
	}
}

// A handler's missing callbacks give the errnos a user of such a file
// expects, never ENOSYS (which the kernel would remember for the whole mount).
func TestMissingCallbacks(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	if _, err := srv.Create("ro", 0o666, text("0123456789")); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(srv.Mountpoint(), "ro")
	if _, err := unix.Open(p, unix.O_WRONLY, 0); errnoOf(err) != unix.EACCES {
		t.Errorf("open O_WRONLY of a file without Write: %v, want EACCES", err)
	}
	if _, err := unix.Open(p, unix.O_RDWR, 0); errnoOf(err) != unix.EACCES {
		t.Errorf("open O_RDWR of a file without Write: %v, want EACCES", err)
	}
	fd, err := unix.Open(p, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Fallocate(fd, 0, 0, 10); errnoOf(err) != unix.EBADF {
		// fallocate on a read-only descriptor fails in the VFS first.
		t.Errorf("fallocate on O_RDONLY: %v, want EBADF", err)
	}
	if err := unix.Truncate(p, 0); errnoOf(err) != unix.EINVAL {
		t.Errorf("truncate of a file without Setattr: %v, want EINVAL", err)
	}
	// Without Lseeker the whole file is data, up to the size of the
	// snapshot the descriptor reads from the page cache.
	if off, err := unix.Seek(fd, 0, unix.SEEK_DATA); err != nil || off != 0 {
		t.Errorf("SEEK_DATA at 0: %d, %v, want 0", off, err)
	}
	if _, err := unix.Seek(fd, 10, unix.SEEK_DATA); errnoOf(err) != unix.ENXIO {
		t.Errorf("SEEK_DATA at the end: %v, want ENXIO", err)
	}
	if err := unix.Fsync(fd); err != nil {
		t.Errorf("fsync: %v", err)
	}
	if err := unix.Chmod(p, 0o400); err != nil {
		t.Errorf("chmod: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil || st.Mode&0o7777 != 0o400 {
		t.Errorf("after chmod 0400: mode %o, err %v", st.Mode&0o7777, err)
	}

	// A write-only knob cannot be read; with write it cannot be fallocated.
	knob := handler.NewValue("1\n")
	if _, err := srv.Create("knob", 0o644, knob); err != nil {
		t.Fatal(err)
	}
	kp := filepath.Join(srv.Mountpoint(), "knob")
	wfd, err := unix.Open(kp, unix.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(wfd)
	if err := unix.Fallocate(wfd, 0, 0, 10); errnoOf(err) != unix.EOPNOTSUPP {
		t.Errorf("fallocate of a handler without Fallocate: %v, want EOPNOTSUPP", err)
	}
}

// `echo 42 > knob` works on a writable knob although it cannot be
// truncated: O_TRUNC is ignored, as on /proc and /sys.
func TestKnobThroughShell(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	var applied atomic.Value
	knob := handler.NewValue("1\n")
	knob.Set = func(_ context.Context, v []byte) error {
		if strings.TrimSpace(string(v)) == "bad" {
			return syscall.EINVAL
		}
		applied.Store(string(v))
		return nil
	}
	if _, err := srv.Create("knob", 0o644, knob); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(srv.Mountpoint(), "knob")
	out, err := exec.Command("sh", "-c", "echo 42 > "+p+" && cat "+p).CombinedOutput()
	if err != nil || string(out) != "42\n" {
		t.Fatalf("echo 42 > knob; cat knob: %q, %v", out, err)
	}
	if applied.Load() != "42\n" {
		t.Errorf("Set saw %v", applied.Load())
	}
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte("bad\n")); errnoOf(err) != unix.EINVAL {
		t.Errorf("a write that Set rejects: %v, want EINVAL", err)
	}
	if got := string(knob.Get()); got != "42\n" {
		t.Errorf("after a rejected write the value is %q, want it unchanged", got)
	}
}

// Creating and removing names through syscalls gives what /proc gives.
func TestNamespaceErrnosMatchProc(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	if _, err := srv.Create("version", 0o444, text("x")); err != nil {
		t.Fatal(err)
	}
	ops := []struct {
		name string
		do   func(dir string) error
	}{
		{"create new", func(d string) error {
			fd, err := unix.Open(d+"/newname", unix.O_CREAT|unix.O_WRONLY, 0o644)
			if err == nil {
				unix.Close(fd)
			}
			return err
		}},
		{"create excl existing", func(d string) error {
			_, err := unix.Open(d+"/version", unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o644)
			return err
		}},
		{"mkdir", func(d string) error { return unix.Mkdir(d+"/newdir", 0o755) }},
		{"unlink existing", func(d string) error { return unix.Unlink(d + "/version") }},
		{"unlink missing", func(d string) error { return unix.Unlink(d + "/nonexistent") }},
		{"rename", func(d string) error { return unix.Rename(d+"/version", d+"/version2") }},
		{"symlink", func(d string) error { return unix.Symlink("/x", d+"/newlink") }},
		{"link", func(d string) error { return unix.Link(d+"/version", d+"/newlink") }},
		{"mknod", func(d string) error { return unix.Mknod(d+"/newnod", unix.S_IFREG|0o644, 0) }},
		{"rmdir file", func(d string) error { return unix.Rmdir(d + "/version") }},
	}
	for _, op := range ops {
		want := errnoOf(op.do("/proc"))
		got := errnoOf(op.do(srv.Mountpoint()))
		if got != want {
			t.Errorf("%s: mount gives %v, /proc gives %v", op.name, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(srv.Mountpoint(), "version")); err != nil {
		t.Errorf("the entry must survive all of that: %v", err)
	}
}

// blockingReader lets a test hold a Read callback in flight.
type blockingReader struct {
	entered  chan struct{}
	release  chan struct{}
	released atomic.Int32
}

func (b *blockingReader) Read(ctx context.Context, f *handler.OpenFile, dst []byte, off int64) (int, error) {
	if off == 0 {
		b.entered <- struct{}{}
		<-b.release
	}
	if off >= 4 {
		return 0, nil
	}
	return copy(dst, "data"[off:]), nil
}

func (b *blockingReader) Release(ctx context.Context, f *handler.OpenFile) { b.released.Add(1) }

// Removal while a descriptor is open and a callback is in flight: the
// callback finishes with its data, Remove waits for it, later operations on
// the descriptor get EIO, new opens get ENOENT, and the handler sees exactly
// one Release.
func TestRemoveWhileInUse(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	h := &blockingReader{entered: make(chan struct{}, 1), release: make(chan struct{})}
	e, err := srv.Create("slow", 0o444, h)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(srv.Mountpoint(), "slow")
	fd, err := unix.Open(p, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)

	type result struct {
		n   int
		err error
		buf []byte
	}
	readDone := make(chan result, 1)
	go func() {
		buf := make([]byte, 16)
		n, err := unix.Pread(fd, buf, 0)
		readDone <- result{n, err, buf[:max(n, 0)]}
	}()
	<-h.entered

	removed := make(chan error, 1)
	go func() { removed <- e.Remove() }()
	select {
	case err := <-removed:
		t.Fatalf("Remove returned (%v) while a Read was in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(h.release)
	r := <-readDone
	if r.err != nil || string(r.buf) != "data" {
		t.Fatalf("in-flight read: %q, %v; want it to finish with its data", r.buf, r.err)
	}
	if err := <-removed; err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Pread(fd, make([]byte, 4), 1); errnoOf(err) != unix.EIO {
		t.Errorf("read on a descriptor opened before removal: %v, want EIO", err)
	}
	if _, err := unix.Open(p, unix.O_RDONLY, 0); errnoOf(err) != unix.ENOENT {
		t.Errorf("open after removal: %v, want ENOENT", err)
	}
	if got := h.released.Load(); got != 1 {
		t.Errorf("Release called %d times by removal, want 1", got)
	}
	unix.Close(fd)
	fd = -1
	time.Sleep(50 * time.Millisecond) // the kernel's RELEASE is asynchronous
	if got := h.released.Load(); got != 1 {
		t.Errorf("Release called %d times after close, want still 1", got)
	}
	if err := e.Remove(); errnoOf(err) != unix.ENOENT {
		t.Errorf("second Remove: %v, want ENOENT", err)
	}
	// The name can be published again, as a new file.
	if _, err := srv.Create("slow", 0o444, text("new")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "new" {
		t.Errorf("republished name reads %q, %v", b, err)
	}
}

// A name looked up while missing (a negative dentry, cached for an hour)
// appears at once when it is published.
func TestCreateAfterNegativeLookup(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	p := filepath.Join(srv.Mountpoint(), "later")
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat before create: %v", err)
	}
	if _, err := srv.Create("later", 0o444, text("here")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "here" {
		t.Fatalf("after create: %q, %v", b, err)
	}
	if _, err := srv.Create("later", 0o444, text("again")); errnoOf(err) != unix.EEXIST {
		t.Errorf("create of a taken name: %v, want EEXIST", err)
	}
	for _, bad := range []string{"", ".", "..", "a//b", "../x", strings.Repeat("x", 256)} {
		if _, err := srv.Create(bad, 0o444, text("")); errnoOf(err) != unix.EINVAL {
			t.Errorf("create %q: %v, want EINVAL", bad, err)
		}
	}
	// A path names directories that must exist.
	if _, err := srv.Create("a/b", 0o444, text("")); errnoOf(err) != unix.ENOENT {
		t.Errorf("create %q: %v, want ENOENT", "a/b", err)
	}
	if _, err := srv.Create("later/b", 0o444, text("")); errnoOf(err) != unix.ENOTDIR {
		t.Errorf("create %q: %v, want ENOTDIR", "later/b", err)
	}
	ents, err := os.ReadDir(srv.Mountpoint())
	if err != nil || len(ents) != 1 || ents[0].Name() != "later" {
		t.Errorf("readdir: %v, %v", ents, err)
	}
}

// Unmount is the unload: descriptors still open get clean errnos, and the
// directory is free for the next mount at once.
func TestUnmountWithOpenDescriptor(t *testing.T) {
	testenv.RequireFUSE(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	srv, err := fusebridge.Mount(mnt, fusebridge.Options{UnmountGrace: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Create("f", 0o666, handler.NewValue("v")); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(mnt+"/f", unix.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	done := make(chan error, 1)
	go func() { done <- srv.Unmount() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Unmount hangs while a descriptor is open")
	}
	_, err = unix.Write(fd, []byte("x"))
	if e := errnoOf(err); e != unix.ENOTCONN && e != unix.EIO {
		t.Errorf("write after unmount: %v, want ENOTCONN or EIO", err)
	}
	if _, err := os.Stat(mnt + "/f"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat after unmount: %v, want ENOENT", err)
	}
	srv2, err := fusebridge.Mount(mnt, fusebridge.Options{})
	if err != nil {
		t.Fatalf("mount again: %v", err)
	}
	defer srv2.Unmount()
}

// A server killed with SIGKILL leaves a dead mount ("transport endpoint is
// not connected"); the next Mount detaches it and proceeds.
func TestStaleMountRecovered(t *testing.T) {
	testenv.RequireFUSE(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	cmd := exec.Command(os.Args[0], "-test.run=^$", mnt)
	cmd.Env = append(os.Environ(), childEnv+"=serve")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) }) // if the test fails before recovery
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		cmd.Process.Kill()
		t.Fatalf("child server: %q", line)
	}
	if b, err := os.ReadFile(mnt + "/hello"); err != nil || string(b) != "hi\n" {
		t.Fatalf("child's file: %q, %v", b, err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); errnoOf(err) != unix.ENOTCONN {
		t.Fatalf("statfs of a killed server's mount: %v, want ENOTCONN", err)
	}
	srv, err := fusebridge.Mount(mnt, fusebridge.Options{})
	if err != nil {
		t.Fatalf("mount over the stale mount: %v", err)
	}
	defer srv.Unmount()
	if _, err := srv.Create("hello", 0o444, text("again\n")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(mnt + "/hello"); err != nil || string(b) != "again\n" {
		t.Errorf("after recovery: %q, %v", b, err)
	}
}

func TestMountpointErrors(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	if _, err := fusebridge.Mount(srv.Mountpoint(), fusebridge.Options{}); err == nil || !strings.Contains(err.Error(), "already a mount point") {
		t.Errorf("mount on a live mount: %v", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := fusebridge.Mount(file, fusebridge.Options{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("mount on a file: %v", err)
	}
}

// TestMountOverBoundDir: a mount point that is a bind mount of a directory,
// as a container's volume is (kubelet's hostPath with Bidirectional
// propagation: the host's directory made a shared mount, bound into the
// container), is mounted over, and the mount propagates back to the host's
// side and is gone from both when the server unmounts. A whole file system
// there (a tmpfs, or a bind of a tmpfs's root), a bind of a directory of a
// FUSE mount (another server's) and one of /proc are still refused.
func TestMountOverBoundDir(t *testing.T) {
	testenv.RequireFUSE(t)
	bind := func(src, dst string, flags uintptr) {
		t.Helper()
		if err := unix.Mount(src, dst, "", flags, ""); err != nil {
			t.Fatalf("mount %s on %s (flags %#x): %v", src, dst, flags, err)
		}
		t.Cleanup(func() { unix.Unmount(dst, unix.MNT_DETACH) })
	}
	tmpfs := testenv.Tmpfs(t, "size=1m")
	tmpfsBound := t.TempDir()
	bind(tmpfs, tmpfsBound, unix.MS_BIND)
	other := mount(t, fusebridge.Options{})
	if _, err := other.MkdirAll("dir", 0o755); err != nil {
		t.Fatal(err)
	}
	fuseBound := t.TempDir()
	bind(filepath.Join(other.Mountpoint(), "dir"), fuseBound, unix.MS_BIND)
	procBound := t.TempDir()
	bind("/proc/sys", procBound, unix.MS_BIND)
	for what, dir := range map[string]string{
		"a tmpfs": tmpfs, "a bind of a tmpfs's root": tmpfsBound,
		"a bind of a directory of a FUSE mount": fuseBound, "a bind of a directory of /proc": procBound,
	} {
		if _, err := fusebridge.Mount(dir, fusebridge.Options{}); !errors.Is(err, fusebridge.ErrMountpointBusy) {
			t.Errorf("mount on %s: %v, want ErrMountpointBusy", what, err)
		}
	}
	host := t.TempDir()
	inside := t.TempDir()
	bind(host, host, unix.MS_BIND)
	if err := unix.Mount("", host, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		t.Fatal(err)
	}
	bind(host, inside, unix.MS_BIND|unix.MS_REC) // a peer of host's mount
	srv, err := fusebridge.Mount(inside, fusebridge.Options{})
	if err != nil {
		t.Fatalf("mount over a bind mount of a directory: %v", err)
	}
	if _, err := srv.Create("hello", 0o444, text("hi\n")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(host, "hello")); err != nil || string(b) != "hi\n" {
		t.Errorf("through the host's side: %q, %v; want the mount propagated there", b, err)
	}
	if err := srv.Unmount(); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{host, inside} {
		if _, err := os.Stat(filepath.Join(dir, "hello")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s/hello after the unmount: %v, want ENOENT", dir, err)
		}
	}
}

// Many goroutines creating, reading and removing entries at once, under
// -race: the name table and the in-flight accounting must hold.
func TestConcurrentCreateRemove(t *testing.T) {
	t.Run("one-connection", func(t *testing.T) { concurrentCreateRemove(t, fusebridge.Options{}) })
	// Every Create and Remove also makes and drops a bind mount.
	t.Run("no-open-handlers", func(t *testing.T) {
		concurrentCreateRemove(t, fusebridge.Options{NoOpenHandlers: true})
	})
}

func concurrentCreateRemove(t *testing.T, opts fusebridge.Options) {
	srv := mount(t, opts)
	if opts.NoOpenHandlers && !srv.HandlersNoOpen() {
		testenv.Missing(t, "NoOpenHandlers needs FUSE passthrough (root, Linux >= 6.9)")
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("g%d", g)
			for i := 0; i < 50; i++ {
				e, err := srv.Create(name, 0o444, text(name))
				if err != nil {
					t.Error(err)
					return
				}
				b, err := os.ReadFile(filepath.Join(srv.Mountpoint(), name))
				if err != nil || string(b) != name {
					t.Errorf("%s: %q, %v", name, b, err)
				}
				if err := e.Remove(); err != nil {
					t.Error(err)
				}
				if _, err := os.Stat(filepath.Join(srv.Mountpoint(), name)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s after Remove: %v, want ENOENT", name, err)
				}
			}
		}()
	}
	wg.Wait()
	if got := testenv.MountsUnder(t, srv.Mountpoint()); len(got) != 1 {
		t.Errorf("mounts left after every Remove: %q", got)
	}
}

// sizedText is a generated file that reports its length, which changes
// behind the kernel's back.
type sizedText struct{ s atomic.Value }

func (h *sizedText) Read(ctx context.Context, f *handler.OpenFile, dst []byte, off int64) (int, error) {
	b := h.s.Load().(string)
	if off >= int64(len(b)) {
		return 0, nil
	}
	return copy(dst, b[off:]), nil
}

func (h *sizedText) Getattr(ctx context.Context, a *handler.Attr) error {
	a.Size = int64(len(h.s.Load().(string)))
	return nil
}

// The kernel caches attributes for an hour; Entry.Invalidate makes it ask
// again when a handler's attributes change by themselves.
func TestInvalidate(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	h := &sizedText{}
	h.s.Store("one")
	e, err := srv.Create("sized", 0o444, h)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(srv.Mountpoint(), "sized")
	size := func() int64 {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Size
	}
	if got := size(); got != 3 {
		t.Fatalf("size %d, want 3", got)
	}
	h.s.Store("three")
	if got := size(); got != 3 {
		t.Fatalf("size %d before Invalidate; want the cached 3 (the test relies on long timeouts)", got)
	}
	if err := e.Invalidate(); err != nil {
		t.Fatal(err)
	}
	if got := size(); got != 5 {
		t.Errorf("size %d after Invalidate, want 5", got)
	}
}
