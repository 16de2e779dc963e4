package handler_test

// Knobs, streams and snapshots through a real FUSE mount (fusebridge,
// flat names), read and written by real processes.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

func mountFS(t *testing.T, opts fusebridge.Options) *fusebridge.Server {
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

func publish(t *testing.T, srv *fusebridge.Server, name string, mode os.FileMode, h any) string {
	t.Helper()
	if _, err := srv.Create(name, mode, h); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(srv.Mountpoint(), name)
}

// shellEscape spells s for printf '%b': backslash escapes for the bytes
// that argv cannot carry (NUL) or that are awkward (newline, backslash).
func shellEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case 0:
			b.WriteString(`\0000`)
		case '\n':
			b.WriteString(`\n`)
		case '\\':
			b.WriteString(`\\`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// shWrite writes s to path with one printf in sh and reports whether the
// shell said the write succeeded.
func shWrite(t *testing.T, path, s string) (bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", "-c", `printf '%b' "$1" > "$2"`, "sh", shellEscape(s), path).CombinedOutput()
	return err == nil, string(out)
}

func catFile(t *testing.T, path string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "cat", path).Output()
	if err != nil {
		t.Fatalf("cat %s: %v", path, err)
	}
	return string(out)
}

// Every spelling of every knob kind, written by printf through the mount:
// accepted ones change the value that cat and Get show, rejected ones fail
// the write (EINVAL, ERANGE) and change nothing.
func TestKnobSpellingsThroughMount(t *testing.T) {
	srv := mountFS(t, fusebridge.Options{})
	ik := handler.NewInt(5, -10, 1000)
	ip := publish(t, srv, "int", 0o644, ik)
	for _, c := range intSpellings {
		if c.in == "" {
			continue // printf '' makes no write(2); sysfs never sees one either
		}
		before := ik.Get()
		ok, msg := shWrite(t, ip, c.in)
		accepted := c.err == nil && c.want >= -10 && c.want <= 1000
		want := before
		if accepted {
			want = c.want
		}
		if ok != accepted || ik.Get() != want || catFile(t, ip) != fmt.Sprintf("%d\n", want) {
			t.Errorf("printf %q > int: ok=%v (%s), Get %d, cat %q; want ok=%v, %d", c.in, ok, strings.TrimSpace(msg), ik.Get(), catFile(t, ip), accepted, want)
		}
	}

	bk := handler.NewBool(false)
	bp := publish(t, srv, "bool", 0o644, bk)
	for _, c := range boolSpellings {
		if c.in == "" {
			continue
		}
		bk.Set(!c.want)
		before := bk.Get()
		ok, _ := shWrite(t, bp, c.in)
		want := before
		if c.ok {
			want = c.want
		}
		shown := map[bool]string{true: "1\n", false: "0\n"}[want]
		if ok != c.ok || bk.Get() != want || catFile(t, bp) != shown {
			t.Errorf("printf %q > bool: ok=%v, Get %v, cat %q; want ok=%v, %v", c.in, ok, bk.Get(), catFile(t, bp), c.ok, want)
		}
	}

	ek := handler.NewEnum("b", "a", "b", "c")
	ep := publish(t, srv, "enum", 0o644, ek)
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"a", "[a] b c\n", true}, {"c\n", "a b [c]\n", true}, {"A", "a b [c]\n", false},
		{" a", "a b [c]\n", false}, {"[a]", "a b [c]\n", false}, {"a\n\n", "a b [c]\n", false},
		{"\n", "a b [c]\n", false}, {"a b", "a b [c]\n", false}, {"b\n", "a [b] c\n", true},
	} {
		ok, _ := shWrite(t, ep, c.in)
		if got := catFile(t, ep); ok != c.ok || got != c.want {
			t.Errorf("printf %q > enum: ok=%v, cat %q; want ok=%v, %q", c.in, ok, got, c.ok, c.want)
		}
	}

	sk := handler.NewString("init", 8)
	sp := publish(t, srv, "string", 0o644, sk)
	for _, c := range []struct {
		in, want string
		ok       bool
	}{{"uplink\n", "uplink", true}, {"12345678", "12345678", true}, {"123456789", "12345678", false}, {"a\nb", "12345678", false}, {"x\x00y", "12345678", false}, {"\n", "", true}} {
		ok, _ := shWrite(t, sp, c.in)
		if got := catFile(t, sp); ok != c.ok || sk.Get() != c.want || got != c.want+"\n" {
			t.Errorf("printf %q > string: ok=%v, Get %q, cat %q; want ok=%v, %q", c.in, ok, sk.Get(), got, c.ok, c.want)
		}
	}

	// echo adds the newline; the errno of a rejected write is EINVAL.
	out, err := exec.Command("sh", "-c", "echo 42 > "+ip+" && echo on > "+bp+" && echo a > "+ep+" && cat "+ip+" "+bp+" "+ep).CombinedOutput()
	if err != nil || string(out) != "42\n1\n[a] b c\n" {
		t.Errorf("echo into three knobs: %q, %v", out, err)
	}
	fd, err := unix.Open(ip, unix.O_WRONLY|unix.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for in, want := range map[string]syscall.Errno{"abc\n": unix.EINVAL, "1001\n": unix.EINVAL, "99999999999999999999\n": unix.ERANGE, strings.Repeat("1", 4097): unix.E2BIG} {
		if _, err := unix.Write(fd, []byte(in)); !errors.Is(err, want) || ik.Get() != 42 {
			t.Errorf("write(%.20q): %v, value %d; want %v, 42", in, err, ik.Get(), want)
		}
	}
}

// The mode bits decide who may set a knob: nobody can read a 0644 knob but
// not write it, and cannot read a 0600 one; root can do both.
func TestKnobModeBitsAsNobody(t *testing.T) {
	srv := mountFS(t, fusebridge.Options{AllowOther: true})
	// nobody must be able to walk to the mountpoint (t.TempDir makes
	// two directories of mode 0700).
	for d := filepath.Dir(srv.Mountpoint()); d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	k := handler.NewInt(1, 0, 9)
	p := publish(t, srv, "level", 0o644, k)
	secret := publish(t, srv, "secret", 0o600, handler.NewString("s3cret", 0))
	nobody := func(script string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := exec.CommandContext(ctx, "sh", "-c", script)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := c.CombinedOutput()
		return string(out), err
	}
	if out, err := nobody("cat " + p); err != nil || out != "1\n" {
		t.Errorf("nobody reading a 0644 knob: %q, %v", out, err)
	}
	if out, err := nobody("echo 7 > " + p); err == nil || !strings.Contains(out, "Permission denied") || k.Get() != 1 {
		t.Errorf("nobody writing a 0644 knob: %q, %v, value %d; want Permission denied, 1", out, err, k.Get())
	}
	if out, err := nobody("cat " + secret); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("nobody reading a 0600 knob: %q, %v; want Permission denied", out, err)
	}
	if ok, msg := shWrite(t, p, "7\n"); !ok || k.Get() != 7 {
		t.Errorf("root writing the 0644 knob: %v %s, value %d", ok, msg, k.Get())
	}
}

// Set from Go, writes through the mount and reads through the mount, all
// at once: every read shows one whole value, and the knob ends at a value
// some writer stored.
func TestKnobConcurrencyThroughMount(t *testing.T) {
	srv := mountFS(t, fusebridge.Options{})
	k := handler.NewInt(0, 0, 1<<30)
	p := publish(t, srv, "k", 0o644, k)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	deadline := time.Now().Add(time.Second)
	for w := range 2 {
		wg.Add(2)
		go func() { // Set
			defer wg.Done()
			for i := 1; time.Now().Before(deadline); i++ {
				if err := k.Set(int64(w<<20 | i)); err != nil {
					errs <- err
					return
				}
			}
		}()
		go func() { // write(2)
			defer wg.Done()
			fd, err := unix.Open(p, unix.O_WRONLY, 0)
			if err != nil {
				errs <- err
				return
			}
			defer unix.Close(fd)
			for i := 1; time.Now().Before(deadline); i++ {
				if _, err := unix.Write(fd, fmt.Appendf(nil, "%#o\n", 1<<29|w<<20|i)); err != nil {
					errs <- err
					return
				}
				if _, err := unix.Write(fd, []byte("-3\n")); !errors.Is(err, unix.EINVAL) {
					errs <- fmt.Errorf("a rejected write: %v", err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() { // read(2)
		defer wg.Done()
		for time.Now().Before(deadline) {
			b, err := os.ReadFile(p)
			if err != nil {
				errs <- err
				return
			}
			if v, err := strconv.ParseInt(strings.TrimSuffix(string(b), "\n"), 10, 64); err != nil || v < 0 || !strings.HasSuffix(string(b), "\n") {
				errs <- fmt.Errorf("a read showed %q", b)
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := catFile(t, p); got != fmt.Sprintf("%d\n", k.Get()) {
		t.Errorf("cat %q, Get %d", got, k.Get())
	}
}

// A stream read through the mount in 1-byte, 4 KiB and 1 MiB pieces is
// the same content generated whole, and every read(2) of at least the
// largest record ends at a record boundary.
func TestStreamThroughMount(t *testing.T) {
	srv := mountFS(t, fusebridge.Options{})
	small, smallWhole := table(40)
	big, bigWhole := table(30000)
	sp := publish(t, srv, "small", 0o444, small)
	bp := publish(t, srv, "big", 0o444, big)
	for _, c := range []struct {
		path  string
		whole []byte
		size  int
	}{{sp, smallWhole, 1}, {bp, bigWhole, 4096}, {bp, bigWhole, 1 << 20}} {
		fd, err := unix.Open(c.path, unix.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		buf := make([]byte, c.size)
		for {
			n, err := unix.Read(fd, buf)
			if err == unix.EINTR {
				// A stream's read is cancelled by a signal, as seq_file's
				// is; the Go runtime's preemption signal is one. os.File
				// retries the same way.
				continue
			}
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if n == 0 {
				break
			}
			if c.size >= 300 && (buf[n-1] != '\n' || (len(got) > 0 && got[len(got)-1] != '\n')) {
				t.Errorf("a read of %d at %d returned %d bytes, not ending at a record boundary", c.size, len(got), n)
			}
			got = append(got, buf[:n]...)
		}
		// A seek back regenerates from the start.
		if _, err := unix.Seek(fd, 0, 0); err != nil {
			t.Fatal(err)
		}
		n, _ := unix.Read(fd, buf)
		unix.Close(fd)
		if !bytes.Equal(got, c.whole) || !bytes.Equal(buf[:n], c.whole[:n]) || n == 0 {
			t.Errorf("%s in %d-byte reads: %d bytes (first difference at %d), want the %d generated whole; after a seek to 0: %q...", filepath.Base(c.path), c.size, len(got), firstDiff(got, c.whole), len(c.whole), buf[:min(n, 20)])
		}
	}
	// cat (128 KiB reads) sees the same.
	if got := catFile(t, bp); got != string(bigWhole) {
		t.Errorf("cat: %d bytes, want %d", len(got), len(bigWhole))
	}
}

func vmRSS(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// heapRSS is the resident part of the Go heap's mappings, from the kernel
// (/proc/self/smaps): the RSS of the anonymous mappings within 64 GiB of a
// heap object (the runtime grows its heap arenas from one base, which Go
// may randomize). Unlike VmRSS it leaves out the race detector's shadow
// memory, which lives far from the heap.
func heapRSS(t *testing.T) int64 {
	t.Helper()
	probe := new([64]byte)
	heapAt := uint64(uintptr(unsafe.Pointer(probe)))
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(probe)
	var total int64
	in := false
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if lo, _, ok := strings.Cut(f[0], "-"); ok && len(f) >= 5 && !strings.HasSuffix(f[0], ":") {
			a, err := strconv.ParseUint(lo, 16, 64)
			in = err == nil && len(f) == 5 && a+1<<36 > heapAt && a < heapAt+1<<36
			continue
		}
		if in && f[0] == "Rss:" && len(f) >= 2 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			total += kb << 10
		}
	}
	return total
}

// goRetained is the memory the Go runtime holds from the OS: everything it
// mapped minus the heap pages it has released back.
func goRetained() int64 {
	m := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(m)
	return int64(m[0].Value.Uint64() - m[1].Value.Uint64())
}

// After a reader closes a 64 MiB Generated file, this process's memory
// comes back near where it was before the open, within seconds: the
// resident part of the Go heap (smaps), the Go runtime's own figure
// (runtime/metrics) and, without the race detector, whose shadow memory
// stays resident (see raceBuild), the whole VmRSS.
func TestGeneratedMemoryAfterRelease(t *testing.T) {
	srv := mountFS(t, fusebridge.Options{})
	line := append(bytes.Repeat([]byte("z"), 99), '\n')
	// Set by the server goroutine, read by the test after the reader
	// exits: the kernel orders the two, but the race detector cannot see
	// that, hence the mutex.
	var mu sync.Mutex
	var peak, peakGo, peakHeap, size int64
	p := publish(t, srv, "big", 0o444, handler.Generated(func(context.Context) ([]byte, error) {
		var b []byte // grown by append, as most generators do
		for len(b) < 64<<20 {
			b = append(b, line...)
		}
		mu.Lock()
		peak, peakGo, peakHeap, size = vmRSS(t), goRetained(), heapRSS(t), int64(len(b))
		mu.Unlock()
		return b, nil
	}))
	debug.FreeOSMemory()
	before, beforeGo, beforeHeap := vmRSS(t), goRetained(), heapRSS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", "-c", "wc -c < "+p).CombinedOutput()
	mu.Lock()
	defer mu.Unlock()
	if err != nil || strings.TrimSpace(string(out)) != strconv.FormatInt(size, 10) {
		t.Fatalf("wc -c: %q, %v", out, err)
	}
	if peakGo < beforeGo+64<<20 || peakHeap < beforeHeap+64<<20 || (!raceBuild && peak < before+64<<20) {
		t.Fatalf("memory while generating, before: RSS %d, %d MiB; heap RSS %d, %d MiB; Go %d, %d MiB: the measurement does not see the snapshot", peak>>20, before>>20, peakHeap>>20, beforeHeap>>20, peakGo>>20, beforeGo>>20)
	}
	const bound = 16 << 20
	back := func() bool {
		return goRetained() <= beforeGo+bound && heapRSS(t) <= beforeHeap+bound && (raceBuild || vmRSS(t) <= before+bound)
	}
	for end := time.Now().Add(5 * time.Second); !back() && time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond)
	}
	after, afterGo, afterHeap := vmRSS(t), goRetained(), heapRSS(t)
	t.Logf("before open, while open, after close: RSS %d, %d, %d MiB; Go heap RSS %d, %d, %d MiB; held by the Go runtime %d, %d, %d MiB (race detector: %v)",
		before>>20, peak>>20, after>>20, beforeHeap>>20, peakHeap>>20, afterHeap>>20, beforeGo>>20, peakGo>>20, afterGo>>20, raceBuild)
	if !back() {
		t.Errorf("five seconds after the close, each figure should be within %d MiB of its value before the open", bound>>20)
	}
}

// Two readers of one stream at once, each with its own position.
func TestStreamConcurrentReaders(t *testing.T) {
	srv := mountFS(t, fusebridge.Options{})
	s, whole := table(20000)
	p := publish(t, srv, "t", 0o444, s)
	var wg sync.WaitGroup
	got := make([]string, 3)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			// dd's 7000-byte reads keep the three out of step.
			out, _ := exec.CommandContext(ctx, "dd", "if="+p, "bs=7000", "status=none").Output()
			got[i] = string(out)
		}()
	}
	wg.Wait()
	for i, g := range got {
		if g != string(whole) {
			t.Errorf("reader %d: %d bytes, want %d (first difference at %d)", i, len(g), len(whole), firstDiff([]byte(g), whole))
		}
	}
}

// On a NoOpen mount a knob is served from the kernel's cache, yet a write
// reaches it and the next read shows the new value (the bridge drops the
// snapshot after each write); a rejected write still fails with EINVAL.
func TestKnobOnNoOpenMount(t *testing.T) {
	t.Run("NoOpen", func(t *testing.T) { testKnobNoOpen(t, fusebridge.Options{NoOpen: true}) })
	// As a handler file of a NoOpenHandlers mount the knob lives on the
	// second, no-open connection, bind-mounted over its name.
	t.Run("NoOpenHandlers", func(t *testing.T) { testKnobNoOpen(t, fusebridge.Options{NoOpenHandlers: true}) })
}

func testKnobNoOpen(t *testing.T, opts fusebridge.Options) {
	srv := mountFS(t, opts)
	k := handler.NewEnum("low", "low", "high")
	p := publish(t, srv, "prio", 0o644, k)
	if opts.NoOpenHandlers {
		if !srv.Passthrough() {
			testenv.Missing(t, "NoOpenHandlers needs FUSE passthrough (root, Linux >= 6.9)")
		}
		if m := testenv.MountsUnder(t, p); len(m) != 1 {
			t.Fatalf("mounts at %s: %q; want the second connection's bind mount", p, m)
		}
	}
	if got := catFile(t, p); got != "[low] high\n" {
		t.Errorf("cat: %q", got)
	}
	// A read after the write sees the new text at once, never the written
	// bytes over the old text the kernel had cached (fusebridge/pagedrop.go).
	out, err := exec.Command("sh", "-c", "echo high > "+p+" && cat "+p).CombinedOutput()
	if err != nil || k.Get() != "high" || string(out) != "low [high]\n" {
		t.Errorf("echo high > knob && cat knob: %q, %v, Get %q; want \"low [high]\\n\"", out, err, k.Get())
	}
	if ok, _ := shWrite(t, p, "medium\n"); ok || k.Get() != "high" || catFile(t, p) != "low [high]\n" {
		t.Errorf("a rejected write on a NoOpen mount: ok=%v, Get %q", ok, k.Get())
	}
}

// A reader that gets a signal while the stream's function waits is not
// stuck: the kernel sends INTERRUPT, the function's ctx is cancelled, the
// read fails and the reader dies of its signal; the file stays readable.
func TestStreamInterruptThroughMount(t *testing.T) {
	srv := mountFS(t, fusebridge.Options{})
	var block atomic.Bool
	block.Store(true)
	cancelled := make(chan struct{}, 1)
	p := publish(t, srv, "slow", 0o444, handler.Stream(func(ctx context.Context, w *handler.RecordWriter) error {
		if _, err := w.WriteString("first\n"); err != nil {
			return err
		}
		if block.Load() {
			<-ctx.Done()
			cancelled <- struct{}{}
			return ctx.Err()
		}
		_, err := w.WriteString("second\n")
		return err
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	// timeout(1) sends SIGINT after half a second, while cat's first read
	// waits in the function.
	err := exec.CommandContext(ctx, "timeout", "-s", "INT", "0.5", "cat", p).Run()
	took := time.Since(start)
	if err == nil || took > 10*time.Second {
		t.Errorf("cat interrupted after 0.5 s: %v after %v; want it killed by its signal at once", err, took)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Error("the function's ctx was not cancelled by the interrupt")
	}
	block.Store(false)
	if got := catFile(t, p); got != "first\nsecond\n" {
		t.Errorf("cat afterwards: %q", got)
	}
}
