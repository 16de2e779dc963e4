package fusebridge_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

func listNames(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("readdir %s: %v", dir, err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

func readAt(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return string(b)
}

// TestTreeNested builds a tree, removes a subtree while a descriptor, a
// directory descriptor (standing for a working directory) and a listing
// are open inside it, and checks procfs's semantics for each, in every
// mount mode.
func TestTreeNested(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts fusebridge.Options
	}{
		{"default", fusebridge.Options{}},
		{"noopen", fusebridge.Options{NoOpen: true}},
		{"noopen-handlers", fusebridge.Options{NoOpenHandlers: true}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			srv := mount(t, mode.opts)
			mnt := srv.Mountpoint()
			sys, err := srv.Root().Mkdir("sys", 0o555)
			if err != nil {
				t.Fatal(err)
			}
			kernel, err := sys.Mkdir("kernel", 0o555)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kernel.Create("level", 0o644, text("1\n")); err != nil {
				t.Fatal(err)
			}
			if _, err := srv.Create("sys/kernel/name", 0o444, text("ramproc\n")); err != nil {
				t.Fatal(err)
			}
			if _, err := srv.Create("sys/version", 0o444, text("v1\n")); err != nil {
				t.Fatal(err)
			}
			if _, err := sys.Mkdir("kernel", 0o555); errnoOf(err) != unix.EEXIST {
				t.Errorf("second mkdir: %v, want EEXIST", err)
			}
			if got := readAt(t, filepath.Join(mnt, "sys/kernel/name")); got != "ramproc\n" {
				t.Errorf("sys/kernel/name = %q", got)
			}
			if got := listNames(t, filepath.Join(mnt, "sys")); got != "kernel version" {
				t.Errorf("ls sys = %q", got)
			}
			if got := listNames(t, filepath.Join(mnt, "sys/kernel")); got != "level name" {
				t.Errorf("ls sys/kernel = %q", got)
			}
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(mnt, "sys/kernel"), &st); err != nil || st.Mode != unix.S_IFDIR|0o555 {
				t.Errorf("stat sys/kernel: mode %o, %v", st.Mode, err)
			}
			if err := unix.Stat(filepath.Join(mnt, "sys"), &st); err != nil || st.Nlink != 3 {
				t.Errorf("stat sys: nlink %d, %v; want 3 (one subdirectory)", st.Nlink, err)
			}
			if e := srv.Lookup("sys/kernel/level"); e == nil || e.Path() != "sys/kernel/level" {
				t.Errorf("Lookup(sys/kernel/level) = %v", e)
			}

			// Namespace syscalls get /proc's errnos.
			for _, c := range []struct {
				what string
				err  error
				want syscall.Errno
			}{
				{"mkdir new", unix.Mkdir(filepath.Join(mnt, "sys/new"), 0o755), unix.ENOENT},
				{"rmdir dir", unix.Rmdir(filepath.Join(mnt, "sys/kernel")), unix.EPERM},
				{"rmdir file", unix.Rmdir(filepath.Join(mnt, "sys/version")), unix.ENOTDIR},
				{"unlink dir", unix.Unlink(filepath.Join(mnt, "sys/kernel")), unix.EISDIR},
				{"rmdir missing", unix.Rmdir(filepath.Join(mnt, "sys/nothing")), unix.ENOENT},
			} {
				if !errors.Is(c.err, c.want) {
					t.Errorf("%s: %v, want %v", c.what, c.err, c.want)
				}
			}

			f, err := os.Open(filepath.Join(mnt, "sys/kernel/name"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			dfd, err := unix.Open(filepath.Join(mnt, "sys/kernel"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(dfd)

			if err := sys.Remove(); err != nil {
				t.Fatal(err)
			}
			if err := sys.Remove(); errnoOf(err) != unix.ENOENT {
				t.Errorf("second Remove: %v, want ENOENT", err)
			}
			for _, p := range []string{"sys", "sys/kernel", "sys/kernel/name"} {
				if _, err := os.Stat(filepath.Join(mnt, p)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("stat %s after Remove: %v, want ENOENT", p, err)
				}
			}
			if _, err := f.ReadAt(make([]byte, 8), 0); !errors.Is(err, syscall.EIO) {
				t.Errorf("read of a descriptor opened before Remove: %v, want EIO", err)
			}
			// Lookups relative to a directory inside the removed subtree.
			if _, err := unix.Openat(dfd, "level", unix.O_RDONLY, 0); !errors.Is(err, unix.ENOENT) {
				t.Errorf("openat in a removed directory: %v, want ENOENT", err)
			}
			if _, err := kernel.Create("late", 0o444, text("")); errnoOf(err) != unix.ENOENT {
				t.Errorf("create in a removed directory: %v, want ENOENT", err)
			}
			if got := listNames(t, mnt); got != "" {
				t.Errorf("ls after Remove = %q", got)
			}
			// The name can be made again, as a new directory.
			if _, err := srv.MkdirAll("sys/kernel", 0o555); err != nil {
				t.Fatal(err)
			}
			if _, err := srv.Create("sys/kernel/name", 0o444, text("again\n")); err != nil {
				t.Fatal(err)
			}
			if got := readAt(t, filepath.Join(mnt, "sys/kernel/name")); got != "again\n" {
				t.Errorf("recreated sys/kernel/name = %q", got)
			}
			if err := srv.Root().Remove(); errnoOf(err) != unix.EPERM {
				t.Errorf("Remove of the root: %v, want EPERM", err)
			}
		})
	}
}

// TestTreeBinds checks that a NoOpenHandlers tree costs one mount per
// directory that holds no pinned entry, however many files it holds, and
// that a pinned entry created inside a bound directory splits it.
func TestTreeBinds(t *testing.T) {
	srv := mount(t, fusebridge.Options{NoOpenHandlers: true})
	if !srv.HandlersNoOpen() {
		testenv.Missing(t, "needs FUSE passthrough (root, Linux >= 6.9)")
	}
	mnt := srv.Mountpoint()
	for _, d := range []string{"a", "b"} {
		dir, err := srv.Root().Mkdir(d, 0o555)
		if err != nil {
			t.Fatal(err)
		}
		sub, err := dir.Mkdir("sub", 0o555)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"1", "2", "3"} {
			if _, err := dir.Create(n, 0o444, text(d+n)); err != nil {
				t.Fatal(err)
			}
			if _, err := sub.Create(n, 0o444, text(d+"/sub/"+n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	mounts := testenv.MountsUnder(t, mnt)
	sort.Strings(mounts)
	want := []string{mnt, filepath.Join(mnt, "a"), filepath.Join(mnt, "b")}
	if strings.Join(mounts, " ") != strings.Join(want, " ") {
		t.Errorf("mounts = %q, want %q", mounts, want)
	}
	if got := readAt(t, filepath.Join(mnt, "a/sub/2")); got != "a/sub/2" {
		t.Errorf("a/sub/2 = %q", got)
	}
	if devOf(t, filepath.Join(mnt, "a/sub/2")) == devOf(t, mnt) {
		t.Error("a/sub/2 is served by the main connection")
	}

	// A per-caller file in a must live on the main connection: a is
	// unbound and its children bound one by one.
	if _, err := srv.Create("a/me", 0o444, perCallerText("me")); err != nil {
		t.Fatal(err)
	}
	mounts = testenv.MountsUnder(t, mnt)
	sort.Strings(mounts)
	want = []string{mnt, filepath.Join(mnt, "a/1"), filepath.Join(mnt, "a/2"), filepath.Join(mnt, "a/3"), filepath.Join(mnt, "a/sub"), filepath.Join(mnt, "b")}
	if strings.Join(mounts, " ") != strings.Join(want, " ") {
		t.Errorf("mounts after a pinned entry = %q, want %q", mounts, want)
	}
	if devOf(t, filepath.Join(mnt, "a/me")) != devOf(t, mnt) {
		t.Error("the per-caller file is not on the main connection")
	}
	if got := readAt(t, filepath.Join(mnt, "a/me")); got != "me" {
		t.Errorf("a/me = %q", got)
	}
	if got := listNames(t, filepath.Join(mnt, "a")); got != "1 2 3 me sub" {
		t.Errorf("ls a = %q", got)
	}
	if got := readAt(t, filepath.Join(mnt, "a/sub/3")); got != "a/sub/3" {
		t.Errorf("a/sub/3 = %q", got)
	}

	// Removing a subtree takes its binds with it.
	if err := srv.Lookup("a").Remove(); err != nil {
		t.Fatal(err)
	}
	mounts = testenv.MountsUnder(t, mnt)
	sort.Strings(mounts)
	want = []string{mnt, filepath.Join(mnt, "b")}
	if strings.Join(mounts, " ") != strings.Join(want, " ") {
		t.Errorf("mounts after removing a = %q, want %q", mounts, want)
	}
	if err := srv.Lookup("b/sub/1").Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "b/sub/1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat of a removed file in a bound directory: %v", err)
	}
	if got := listNames(t, filepath.Join(mnt, "b/sub")); got != "2 3" {
		t.Errorf("ls b/sub = %q", got)
	}
}

func perCallerText(s string) handler.PerCallerGenerated {
	return func(context.Context) ([]byte, error) { return []byte(s), nil }
}
