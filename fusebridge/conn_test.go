package fusebridge_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// devFuseFlags returns the open flags of each /dev/fuse descriptor of this
// process (/proc/self/fdinfo).
func devFuseFlags(t *testing.T) map[int]int64 {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int64{}
	for _, ent := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + ent.Name()); err != nil || target != "/dev/fuse" {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + ent.Name())
		if err != nil {
			continue // closed meanwhile
		}
		for line := range strings.Lines(string(info)) {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				flags, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				if err != nil {
					t.Fatalf("fdinfo %s: %q: %v", ent.Name(), line, err)
				}
				fd, _ := strconv.Atoi(ent.Name())
				out[fd] = flags
			}
		}
	}
	return out
}

// Every connection of a mount is served by the bridge's own request loop
// (conn.go), not by go-fuse's: the loop makes the device non-blocking, which
// go-fuse's never does. Were the descriptor not found, the mount would still
// work, at the old cost per request; this catches that.
func TestConnServedByOwnLoop(t *testing.T) {
	before := devFuseFlags(t)
	srv := mount(t, fusebridge.Options{})
	if _, err := srv.Create("bounded", 0o444, handler.Generated(func(context.Context) ([]byte, error) {
		return []byte("x\n"), nil
	}).MaxAge(time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(srv.Mountpoint(), "bounded")); err != nil {
		t.Fatal(err)
	}
	fresh := 0
	for fd, flags := range devFuseFlags(t) {
		if _, ok := before[fd]; ok {
			continue
		}
		fresh++
		if flags&syscall.O_NONBLOCK == 0 {
			t.Errorf("/dev/fuse descriptor %d of the mount is blocking (flags %o): go-fuse's loop serves it", fd, flags)
		}
	}
	if fresh == 0 {
		t.Fatal("the mount opened no /dev/fuse descriptor this process holds")
	}
}

// A request whose handler blocks holds up no other request: after
// takeoverDelay another goroutine reads the device. With one reader
// answering inline and no takeover, the second read would wait for the
// first forever.
func TestSlowRequestHoldsUpNobody(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	entered, release := make(chan struct{}), make(chan struct{})
	if _, err := srv.Create("slow", 0o444, handler.Generated(func(context.Context) ([]byte, error) {
		close(entered)
		<-release
		return []byte("slow\n"), nil
	})); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Create("fast", 0o444, text("fast\n")); err != nil {
		t.Fatal(err)
	}
	slow := readLater(filepath.Join(srv.Mountpoint(), "slow"))
	<-entered
	fast := readLater(filepath.Join(srv.Mountpoint(), "fast"))
	select {
	case got := <-fast:
		if got != "fast\n" {
			t.Errorf("fast file while the slow one is answered: %q", got)
		}
	case <-time.After(30 * time.Second):
		close(release)
		t.Fatal("a read waited 30 s behind a request whose handler blocks")
	}
	close(release)
	if got := <-slow; got != "slow\n" {
		t.Errorf("slow file: %q", got)
	}
}

// readLater reads path in a goroutine of its own and sends what it read, or
// the error's text.
func readLater(path string) <-chan string {
	c := make(chan string, 1)
	go func() {
		b, err := os.ReadFile(path)
		if err != nil {
			c <- err.Error()
			return
		}
		c <- string(b)
	}()
	return c
}

// A caller's signal reaches a handler that waits on its request's context,
// however long it has waited: the kernel sends an INTERRUPT, which another
// goroutine than the one answering reads.
func TestInterruptReachesBlockedHandler(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	entered, cancelled := make(chan struct{}), make(chan struct{})
	if _, err := srv.Create("wait", 0o444, handler.Generated(func(ctx context.Context) ([]byte, error) {
		close(entered)
		select {
		case <-ctx.Done():
			close(cancelled)
			return nil, ctx.Err()
		case <-time.After(time.Minute):
			return []byte("not interrupted\n"), nil
		}
	})); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cat", filepath.Join(srv.Mountpoint(), "wait"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	<-entered
	cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-cancelled:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler's context was not cancelled 30 s after its caller was killed")
	}
	cmd.Wait()
}

// Requests that block hold little memory each: a loop copies a request out
// of the max_write-sized buffer it was read into before answering it, and
// answers into a buffer of the answer's size. With the read and answer
// buffers held by each blocked request (1 MiB each on a mount's main
// connection), 50 of them held over 100 MiB.
func TestBlockedRequestsHoldLittleMemory(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	const n = 50
	var entered atomic.Int64
	release := make(chan struct{})
	if _, err := srv.Create("wait", 0o444, handler.Generated(func(context.Context) ([]byte, error) {
		entered.Add(1)
		<-release
		return []byte("done\n"), nil
	})); err != nil {
		t.Fatal(err)
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var reads []<-chan string
	for range n {
		reads = append(reads, readLater(filepath.Join(srv.Mountpoint(), "wait")))
	}
	for deadline := time.Now().Add(time.Minute); entered.Load() < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			close(release)
			t.Fatalf("%d of %d opens reached the handler in a minute", entered.Load(), n)
		}
	}
	var during runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&during)
	close(release)
	for _, r := range reads {
		if got := <-r; got != "done\n" {
			t.Errorf("read: %q", got)
		}
	}
	grown := int64(during.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("live heap with %d requests blocked: %+d KiB", n, grown/1024)
	if grown > 16<<20 {
		t.Errorf("%d blocked requests grew the live heap by %d MiB", n, grown>>20)
	}
}
