package fusebridge

import (
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// TestKnobReadAfterSlowDrop: a read(2) that starts after write(2) returned
// sees the whole new text even when the thread that invalidates the pages
// the write may have left stale runs late, as on a busy machine (made, not
// waited for: a hook holds it back). The write is `printf 100`, three
// bytes over "7\n", so the kernel takes the file to be three bytes long
// until a GETATTR says four ("100\n"); the read is one pread(2) on a
// descriptor opened before, whose only GETATTR is the read's own (an open
// sends one more, and so does a second read at the end). When the WRITE was answered after a fixed wait, the
// invalidation came after the read's GETATTR, the kernel threw that
// GETATTR's answer away (it predates the invalidation), and the read
// returned "100".
func TestKnobReadAfterSlowDrop(t *testing.T) {
	testenv.RequireFUSE(t)
	srv, err := Mount(filepath.Join(t.TempDir(), "mnt"), Options{NoOpen: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()
	k := handler.NewInt(7, 0, 1000)
	if _, err := srv.Create("knob", 0o644, k); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(srv.Mountpoint(), "knob")
	rfd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rfd)
	wfd, err := unix.Open(p, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(wfd)
	slow := func() { time.Sleep(200 * time.Millisecond) }
	defer dropWrittenHook.Store(nil)
	for round := range 4 {
		v, want := "100", "100\n"
		if round%2 == 1 {
			v, want = "7", "7\n"
		}
		old := pread1(t, rfd) // cached by the kernel
		dropWrittenHook.Store(&slow)
		_, err := unix.Pwrite(wfd, []byte(v), 0)
		dropWrittenHook.Store(nil)
		if err != nil {
			t.Fatalf("round %d: write %q: %v", round, v, err)
		}
		if got := pread1(t, rfd); got != want {
			t.Errorf("round %d: read after writing %q over %q: %q, want %q", round, v, old, got, want)
		}
	}
}

// pread1 is one pread(2) of fd from offset 0, as a reader of a sysfs
// attribute makes: the whole text in one call.
func pread1(t *testing.T, fd int) string {
	t.Helper()
	buf := make([]byte, 8192)
	n, err := unix.Pread(fd, buf, 0)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}
