package filecheck_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/filecheck"
	"github.com/ramproc/ramproc/internal/testenv"
)

var reloadOnly = regexp.MustCompile(`^seed/reload$`)

// TestReloadTmpfs: "unloading" a tmpfs (lazy unmount) and "loading" a new
// one with an empty file in its place passes seed/reload; forgetting to
// load it again fails it.
func TestReloadTmpfs(t *testing.T) {
	dir := testenv.Tmpfs(t, "")
	path := newFile(t, dir)
	load := fmt.Sprintf("mount -t tmpfs tmpfs %s && touch %s", dir, path)
	rep, err := filecheck.Run(context.Background(), filecheck.Config{
		Path: path, Run: reloadOnly,
		ReloadCmd: fmt.Sprintf("umount -l %s && %s", dir, load),
	})
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	requireAllPass(t, rep)
	if d := rep.Result("seed/reload").Details; len(d) == 0 || !strings.Contains(d[0], "write ok") {
		t.Errorf("the writers' outcomes are not reported: %q", d)
	}

	rep, err = filecheck.Run(context.Background(), filecheck.Config{
		Path: path, Run: reloadOnly, CommandTimeout: 3 * time.Second,
		UnloadCmd: "umount -l " + dir, LoadCmd: "true",
	})
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	res := rep.Result("seed/reload")
	if res.Status != filecheck.Fail || !strings.Contains(res.Reason, "does not work") {
		t.Errorf("seed/reload without a load: %s %s, want FAIL saying the file does not work", res.Status, res.Reason)
	}
	// Put a tmpfs back for testenv's cleanup to unmount.
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
}

// TestReloadNoUnload: an unload command that unloads nothing fails
// seed/reload, saying that the file stayed available.
func TestReloadNoUnload(t *testing.T) {
	path := newFile(t, testenv.Tmpfs(t, ""))
	rep, err := filecheck.Run(context.Background(), filecheck.Config{
		Path: path, Run: reloadOnly, CommandTimeout: 2 * time.Second,
		UnloadCmd: "true", LoadCmd: "true",
	})
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	res := rep.Result("seed/reload")
	if res.Status != filecheck.Fail || !strings.Contains(res.Reason, "stayed available through the unload") {
		t.Errorf("seed/reload with --unload-cmd true: %s %s, want FAIL saying the file stayed available", res.Status, res.Reason)
	}
}

// TestReloadFUSE stops the FUSE server under running writers (aborting its
// connection, as a crash would, and unmounting) and starts a new one; the
// commands signal this process, which serves the file. Meanwhile an empty
// directory is served in its place (goneRoot), and the load waits until a
// writer has looked the file up there: how long the file stays away
// otherwise depends on timing, and the writers could miss it (under load
// in CI they did).
func TestReloadFUSE(t *testing.T) {
	testenv.RequireFUSE(t)
	dir := t.TempDir()
	var mu sync.Mutex
	server, _, err := mountFakeAt(dir, breakage{})
	if err != nil {
		t.Fatal(err)
	}
	var gone *goneRoot
	var goneSrv *fuse.Server
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case s := <-sigs:
				mu.Lock()
				if s == syscall.SIGUSR1 {
					abortFUSE(t, dir)
					unix.Unmount(dir, unix.MNT_DETACH)
					gone = &goneRoot{}
					srv, err := mountGone(dir, gone)
					if err != nil {
						t.Errorf("mount the empty directory: %v", err)
					}
					goneSrv = srv
				} else {
					if goneSrv != nil {
						// Writers open in a loop: the deadline is only
						// against a hang.
						for deadline := time.Now().Add(20 * time.Second); gone.others.Load() == 0 && time.Now().Before(deadline); {
							time.Sleep(time.Millisecond)
						}
						goneSrv.Unmount()
						goneSrv = nil
					}
					if srv, _, err := mountFakeAt(dir, breakage{}); err != nil {
						t.Errorf("mount again: %v", err)
					} else {
						server = srv
					}
				}
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if goneSrv != nil {
			goneSrv.Unmount()
		}
		server.Unmount()
	})
	rep, err := filecheck.Run(context.Background(), filecheck.Config{
		Path: filepath.Join(dir, "file"), Run: reloadOnly,
		UnloadCmd: fmt.Sprintf("kill -USR1 %d", os.Getpid()),
		LoadCmd:   fmt.Sprintf("kill -USR2 %d", os.Getpid()),
	})
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	requireAllPass(t, rep)
	// Writers that open during the unload see the aborted connection
	// (ENOTCONN) until the directory is detached, and ENOENT after; which
	// of the two they meet depends on timing, but some open must fail.
	if d := rep.Result("seed/reload").Details; len(d) == 0 || !(strings.Contains(d[0], "open ENOENT") || strings.Contains(d[0], "open ENOTCONN")) {
		t.Errorf("the writers did not notice the unload: %q", d)
	}
}

// TestReloadHang: a server whose writes hang once it is "unloaded" does not
// hang the checker: the stuck writers are killed, and the check fails
// saying so.
func TestReloadHang(t *testing.T) {
	testenv.RequireFUSE(t)
	dir := t.TempDir()
	server, file, err := mountFakeAt(dir, breakage{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Let the stuck writes finish; the killed writers and the
		// checker's abandoned open may hold the mount a moment longer.
		close(file.unhang)
		for i := 0; i < 50; i++ {
			if server.Unmount() == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("cannot unmount %s; detaching it", dir)
		unix.Unmount(dir, unix.MNT_DETACH)
	})
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	go func() {
		<-sigs
		file.hang.Store(true)
	}()
	start := time.Now()
	rep, err := filecheck.Run(context.Background(), filecheck.Config{
		Path: filepath.Join(dir, "file"), Run: reloadOnly, CommandTimeout: time.Second,
		ReloadCmd: fmt.Sprintf("kill -USR1 %d", os.Getpid()),
	})
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	res := rep.Result("seed/reload")
	if res.Status != filecheck.Fail || !strings.Contains(res.Reason, "3 of 3 writer processes hung") {
		t.Errorf("seed/reload against a hanging server: %s %s, want FAIL saying a writer hung", res.Status, res.Reason)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the check took %v", d)
	}
}

// abortFUSE aborts the FUSE connection of the mount on dir, as a crash
// would. fusectl is mounted for it if it is not (and unmounted again):
// without the abort only the unmount remains, and writers that keep the
// file open go on writing to the old server, so whether any of them
// noticed the unload depended on timing.
func abortFUSE(t *testing.T, dir string) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return
	}
	const conns = "/sys/fs/fuse/connections"
	ctl := fmt.Sprintf("%s/%d/abort", conns, unix.Minor(st.Dev))
	if _, err := os.Stat(ctl); errors.Is(err, os.ErrNotExist) {
		if err := unix.Mount("fusectl", conns, "fusectl", 0, ""); err == nil {
			defer unix.Unmount(conns, unix.MNT_DETACH)
		}
	}
	if err := os.WriteFile(ctl, []byte("1"), 0); err != nil {
		t.Logf("cannot abort the connection (%v); unmounting only", err)
	}
}

// goneRoot is an empty directory served while the file is unloaded: an
// open of the file gets ENOENT, as after an unmount, and lookups by other
// processes than this one (the checker's writers; this process's threads
// include the checker's own check that the file is gone) are counted.
type goneRoot struct {
	fs.Inode
	others atomic.Int64
}

var _ fs.NodeLookuper = (*goneRoot)(nil)

func (g *goneRoot) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if c, ok := fuse.FromContext(ctx); ok {
		// The caller's id is a thread's; this process's are in its task list.
		if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", c.Pid)); err != nil {
			g.others.Add(1)
		}
	}
	return nil, syscall.ENOENT
}

// mountGone serves g on dir, with no entry cached, so that every open
// looks the file up.
func mountGone(dir string, g *goneRoot) (*fuse.Server, error) {
	zero := time.Duration(0)
	return fs.Mount(dir, g, &fs.Options{
		MountOptions: fuse.MountOptions{DirectMountStrict: true, FsName: "filecheck-gone", Name: "filecheck"},
		EntryTimeout: &zero, AttrTimeout: &zero, NegativeTimeout: &zero,
	})
}
