package fusebridge_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

const fusectlChildEnv = "RAMPROC_TEST_FUSECTL_CHILD"

// fusectlMounted reports whether fusectl is mounted in this process's
// mount namespace.
func fusectlMounted(t *testing.T) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(data), " - fusectl ")
}

// An Unmount that has to abort the connection mounts fusectl when it is
// missing and unmounts it again. Run in a private mount namespace (a child
// of this test), so that fusectl's state is the test's own and no other
// process's mounts are touched.
func TestAbortUnmountsFusectl(t *testing.T) {
	if os.Getenv(fusectlChildEnv) != "" {
		fusectlChild(t)
		return
	}
	testenv.RequireFUSE(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestAbortUnmountsFusectl$", "-test.v")
	cmd.Env = append(os.Environ(), fusectlChildEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the child in a private mount namespace did not finish within 60s:\n%s", out)
	}
	if err != nil || !strings.Contains(string(out), "fusectl: mounted for the abort and unmounted again") {
		t.Errorf("child: %v\n%s", err, out)
	}
}

func fusectlChild(t *testing.T) {
	if fusectlMounted(t) {
		if err := unix.Unmount("/sys/fs/fuse/connections", 0); err != nil {
			t.Fatalf("unmount fusectl in the private namespace: %v", err)
		}
	}
	srv, err := fusebridge.Mount(filepath.Join(t.TempDir(), "mnt"), fusebridge.Options{UnmountGrace: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Create("hello", 0o444, text("hi\n")); err != nil {
		t.Fatal(err)
	}
	// An open descriptor keeps the connection alive past the detach, so
	// Unmount must abort it after the grace.
	f, err := os.Open(filepath.Join(srv.Mountpoint(), "hello"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := srv.Unmount(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Read(make([]byte, 8)); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("read after Unmount: %v, want ENOTCONN (the connection aborted through fusectl)", err)
	}
	if fusectlMounted(t) {
		t.Fatal("fusectl is still mounted after Unmount mounted it")
	}
	fmt.Println("fusectl: mounted for the abort and unmounted again")
}

// A refused Mount leaves no directory behind, and an existing directory
// is not removed by a failed one.
func TestRefusedMountCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	_, err := fusebridge.Mount(filepath.Join(dir, "new", "sub"), fusebridge.Options{NoOpen: true, Passthrough: fusebridge.PassthroughRequired})
	if err == nil {
		t.Fatal("NoOpen with PassthroughRequired was accepted")
	}
	if _, err := os.Lstat(filepath.Join(dir, "new")); err == nil {
		t.Errorf("a refused Mount created %s/new", dir)
	}
}

// A second Mount on a served directory names the serving process (this
// one) and wraps ErrMountpointBusy.
func TestMountpointBusyNamesHolder(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	_, err := fusebridge.Mount(srv.Mountpoint(), fusebridge.Options{})
	if !errors.Is(err, fusebridge.ErrMountpointBusy) || !strings.Contains(err.Error(), fmt.Sprintf("process %d", os.Getpid())) {
		t.Errorf("second Mount: %v; want ErrMountpointBusy naming process %d", err, os.Getpid())
	}
}

// Metrics count what the connection serves, and statfs reports Space.
func TestMetricsAndStatfs(t *testing.T) {
	m := new(fusebridge.Metrics)
	srv := mount(t, fusebridge.Options{Metrics: m, Space: func() fusebridge.Space {
		return fusebridge.Space{Capacity: 1 << 20, Used: 5000}
	}})
	if srv.Metrics() != m {
		t.Fatal("Server.Metrics is not Options.Metrics")
	}
	// Per caller, so read through the server (one made per open would be
	// read from the page cache, with no READ to count).
	hello := handler.PerCallerGenerated(func(context.Context) ([]byte, error) { return []byte("hello\n"), nil })
	if _, err := srv.Create("hello", 0o444, hello); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(srv.Mountpoint(), "hello")
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.OpenHandles(); got != 1 {
		t.Errorf("OpenHandles with one file open: %d", got)
	}
	buf := make([]byte, 64)
	n, _ := f.Read(buf)
	f.Close()
	if n != 6 || m.BytesRead() < 6 || m.Requests(fusebridge.OpRead) < 1 || m.Requests(fusebridge.OpOpen) < 1 {
		t.Errorf("after reading 6 bytes: read %d, BytesRead %d, reads %d, opens %d", n, m.BytesRead(), m.Requests(fusebridge.OpRead), m.Requests(fusebridge.OpOpen))
	}
	if _, err := os.Stat(filepath.Join(srv.Mountpoint(), "nothing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if m.Errors()[syscall.ENOENT] < 1 {
		t.Errorf("errors after a failed lookup: %v", m.Errors())
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(p, &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Bsize != 4096 || sfs.Blocks != 256 || sfs.Bfree != 254 || sfs.Bavail != 254 || sfs.Namelen != 255 || sfs.Files == 0 || sfs.Ffree != sfs.Files-2 {
		t.Errorf("statfs: %+v", sfs)
	}
	if got := srv.Published(); got != 1 {
		t.Errorf("Published: %d", got)
	}
}
