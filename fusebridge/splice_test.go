package fusebridge_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// perThread is a per-caller file whose content names the reading thread,
// longer than a page, so that one caller's bytes read by another show.
func perThread(ctx context.Context) ([]byte, error) {
	c, ok := handler.CallerOf(ctx)
	if !ok {
		return nil, errors.New("no caller")
	}
	return threadText(int(c.Tid)), nil
}

func threadText(tid int) []byte {
	return bytes.Repeat(fmt.Appendf(nil, "thread %d\n", tid), 600)
}

// spliced reads fd to its end with sendfile(2) (splice(2) if useSplice)
// into a pipe, as busybox cat does; it returns the bytes, or the first
// error.
func spliced(t *testing.T, fd int, useSplice bool) ([]byte, error) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, 1<<20); err != nil {
		t.Fatal(err)
	}
	var out []byte
	buf := make([]byte, 1<<20)
	for {
		var n int
		var err error
		if useSplice {
			var n64 int64
			n64, err = unix.Splice(fd, nil, p[1], nil, 1<<20, 0)
			n = int(n64)
		} else {
			n, err = unix.Sendfile(p[1], fd, nil, 1<<20)
		}
		if err != nil {
			return out, err
		}
		if n == 0 {
			return out, nil
		}
		k, err := unix.Read(p[0], buf[:n])
		if err != nil || k != n {
			t.Fatalf("draining the pipe: %d of %d, %v", k, n, err)
		}
		out = append(out, buf[:k]...)
	}
}

// faults reports whether b's first 64 bytes cannot be read (a page the
// kernel could not fill: SIGBUS for a load), else returns them. The kernel reads
// it, through write(2) to a pipe (EFAULT), not this process: a thread
// faulting on a page of its own process's mount cannot be stopped for a
// garbage collection while the server answers, and the process would
// hang.
func faults(t *testing.T, b []byte) ([]byte, bool) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.Write(p[1], b[:64]); err != nil {
		return nil, true
	}
	c := make([]byte, 64)
	if n, err := unix.Read(p[0], c); err != nil || n != 64 {
		t.Fatalf("draining the pipe: %d, %v", n, err)
	}
	return c, false
}

// onThread runs f on a thread of its own, which exits with it: each call
// is another caller of a per-caller file.
func onThread(f func(tid int)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread exits
		f(unix.Gettid())
	}()
	<-done
}

// TestSpliceDirectIO: sendfile(2) and splice(2) of files read with
// FOPEN_DIRECT_IO, which the kernel (up to at least 6.18) does through the
// page cache (splice.go). Before the change they returned 0 bytes, with
// no error, from every per-caller file (busybox cat printed nothing). Now
// such a file shows a sysfs attribute's size; a splice gives either the
// caller's own bytes (a kernel that reads direct-I/O files through the
// server) or EINVAL, after which read(2) gives them, and no caller's
// bytes ever reach the page cache: another caller's splice and mmap(2)
// never see them.
func TestSpliceDirectIO(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	if _, err := srv.Create("caller", 0o444, handler.PerCallerGenerated(perThread)); err != nil {
		t.Fatal(err)
	}
	knob := handler.NewInt(7, 0, 100)
	if _, err := srv.Create("knob", 0o644, knob); err != nil {
		t.Fatal(err)
	}
	v := &sized{lens: []int{5000}}
	if _, err := srv.Create("gen", 0o444, v.gen()); err != nil {
		t.Fatal(err)
	}
	mnt := srv.Mountpoint()

	for _, name := range []string{"caller", "knob"} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(mnt, name), &st); err != nil || st.Size != 4096 {
			t.Errorf("%s: stat size %d, %v; want 4096, a sysfs attribute's", name, st.Size, err)
		}
	}

	// Each of three threads: a splice, then what busybox does on EINVAL
	// (read(2)), then a private map. Each must see its own content or an
	// error, never another's, never nothing.
	for i := range 3 {
		for _, useSplice := range []bool{false, true} {
			onThread(func(tid int) {
				want := threadText(tid)
				fd, err := unix.Open(filepath.Join(mnt, "caller"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Errorf("open: %v", err)
					return
				}
				defer unix.Close(fd)
				got, err := spliced(t, fd, useSplice)
				switch {
				case errors.Is(err, syscall.EINVAL) && len(got) == 0:
					// Refused: the caller falls back to read(2).
					if got, err = readAll(fd, 4096); err != nil {
						t.Errorf("read after the refused splice: %v", err)
					}
				case err != nil:
					t.Errorf("round %d, splice %v: %v after %d bytes; want the content or EINVAL", i, useSplice, err, len(got))
					return
				}
				if !bytes.Equal(got, want) {
					t.Errorf("round %d, splice %v: thread %d read %d bytes starting %q; want its own %d bytes",
						i, useSplice, tid, len(got), head(got), len(want))
				}
				m, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ, unix.MAP_PRIVATE)
				if err != nil {
					return // refusing the map is as good
				}
				defer unix.Munmap(m)
				if c, fault := faults(t, m); !fault && !bytes.Equal(c, want[:64]) {
					t.Errorf("thread %d maps %q; want its own bytes or SIGBUS", tid, c)
				}
			})
		}
	}

	// Two callers' descriptors open at once (the kernel drops the pages
	// at each open without FOPEN_KEEP_CACHE, not while a descriptor
	// lives): the second's splice must not read what the first's left.
	var fds [2]int
	var wants [2][]byte
	for i := range fds {
		onThread(func(tid int) {
			fd, err := unix.Open(filepath.Join(mnt, "caller"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			fds[i], wants[i] = fd, threadText(tid)
		})
		defer unix.Close(fds[i])
	}
	for i, fd := range fds {
		got, err := spliced(t, fd, false)
		if errors.Is(err, syscall.EINVAL) && len(got) == 0 {
			continue
		}
		if err != nil || !bytes.Equal(got, wants[i]) {
			t.Errorf("descriptor %d of 2 open at once: sendfile read %d bytes starting %q, %v; want its own %d bytes or EINVAL",
				i+1, len(got), head(got), err, len(wants[i]))
		}
	}

	// A knob: splice or read(2) shows the value.
	fd, err := unix.Open(filepath.Join(mnt, "knob"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := spliced(t, fd, false)
	if errors.Is(err, syscall.EINVAL) && len(got) == 0 {
		got, err = readAll(fd, 4096)
	}
	unix.Close(fd)
	if err != nil || string(got) != "7\n" {
		t.Errorf("knob: %q, %v; want \"7\\n\"", got, err)
	}

	// Content made per open that the page cache serves: a splice reads
	// the cached snapshot, whole.
	fd, err = unix.Open(filepath.Join(mnt, "gen"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err = spliced(t, fd, false)
	unix.Close(fd)
	if err != nil {
		t.Fatalf("gen: sendfile: %v", err)
	}
	if _, err := v.whole(got); err != nil {
		t.Errorf("gen: sendfile: %v", err)
	}
}
