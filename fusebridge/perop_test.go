package fusebridge_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// numbered is a Generated file whose every generation is distinct and
// checkable: "open N" and a line of N-dependent length, then "end N".
func numbered(gens *atomic.Int64) handler.Generated {
	return func(context.Context) ([]byte, error) {
		n := gens.Add(1)
		return fmt.Appendf(nil, "open %d\n%s\nend %d\n", n, strings.Repeat("x", int(n*37%5000)), n), nil
	}
}

// generation checks that b is one whole generation of numbered and
// returns its number.
func generation(b []byte) (int64, error) {
	var n, m int64
	if _, err := fmt.Sscanf(string(b), "open %d\n", &n); err != nil {
		return 0, fmt.Errorf("not a generation: %.40q", b)
	}
	want := fmt.Sprintf("open %d\n%s\nend %d\n", n, strings.Repeat("x", int(n*37%5000)), n)
	if string(b) != want {
		fmt.Sscanf(string(b[bytes.LastIndex(b, []byte("end ")):]), "end %d", &m)
		return 0, fmt.Errorf("generation %d torn or cut (%d bytes, ends with %d)", n, len(b), m)
	}
	return n, nil
}

func mountPerOpen(t *testing.T) *fusebridge.Server {
	t.Helper()
	srv := mount(t, fusebridge.Options{PerOpenPassthrough: true})
	if !srv.Passthrough() {
		testenv.Missing(t, "needs FUSE passthrough (root, Linux >= 6.9)")
	}
	return srv
}

func preadAll(t *testing.T, fd int) []byte {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Pread(fd, buf, 0)
	if err != nil {
		t.Fatalf("pread: %v", err)
	}
	return buf[:n]
}

// TestPerOpenPassthrough follows one file through the cases of
// Options.PerOpenPassthrough, counting READ requests: a descriptor opened
// alone is read from its backing file (no READ) and keeps its snapshot
// (also from offset 0 again); one opened while it is open joins its
// inode's backing file and is read through the server, with its own
// content (never EIO, the kernel's answer to a conflicting backing file);
// once both are closed a new open is read from its own backing file
// again; a descriptor open across Entry.Remove keeps reading its
// snapshot. fstat and lseek(SEEK_END) show size 0, as a forwarded open
// does; mmap shows the snapshot.
func TestPerOpenPassthrough(t *testing.T) {
	srv := mountPerOpen(t)
	var gens atomic.Int64
	e, err := srv.Create("gen", 0o444, numbered(&gens))
	if err != nil {
		t.Fatal(err)
	}
	m := srv.Metrics()
	p := filepath.Join(srv.Mountpoint(), "gen")
	open := func() int {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		return fd
	}
	read := func(fd int, what string) int64 {
		t.Helper()
		n, err := generation(preadAll(t, fd))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return n
	}

	a := open()
	reads := m.Requests(fusebridge.OpRead)
	na := read(a, "the first descriptor")
	if again := read(a, "the first descriptor again"); again != na {
		t.Errorf("a re-read from offset 0 of a passthrough descriptor: generation %d, want its own %d", again, na)
	}
	if got := m.Requests(fusebridge.OpRead) - reads; got != 0 {
		t.Errorf("reads of a descriptor opened alone cost %d READ requests, want 0 (a backing file made at open)", got)
	}
	var st unix.Stat_t
	// The size of a file the kernel never caches: a sysfs attribute's
	// page (splice.go), as a forwarded open shows.
	if err := unix.Fstat(a, &st); err != nil || st.Size != 4096 {
		t.Errorf("fstat: size %d, %v; want 4096, as a forwarded open shows", st.Size, err)
	}
	if off, err := unix.Seek(a, 0, unix.SEEK_END); err != nil || off != 4096 {
		t.Errorf("lseek SEEK_END: %d, %v; want 4096, as a forwarded open shows", off, err)
	}
	size := len(fmt.Sprintf("open %d\n%s\nend %d\n", na, strings.Repeat("x", int(na*37%5000)), na))
	if mm, err := unix.Mmap(a, 0, size, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		t.Errorf("mmap: %v", err)
	} else {
		if n, err := generation(mm); err != nil || n != na {
			t.Errorf("mmap shows generation %d (%v), want %d", n, err, na)
		}
		unix.Munmap(mm)
	}

	// Opened while a is: joins a's backing file, read through the server.
	b := open()
	reads = m.Requests(fusebridge.OpRead)
	nb := read(b, "a descriptor opened meanwhile")
	if nb == na {
		t.Errorf("a descriptor opened meanwhile read the first one's generation %d", na)
	}
	if m.Requests(fusebridge.OpRead) == reads {
		t.Error("a descriptor opened meanwhile was not read through the server")
	}
	if again := read(a, "the first descriptor after the second's read"); again != na {
		t.Errorf("the first descriptor now reads generation %d, want %d", again, na)
	}
	unix.Close(a)
	read(b, "the second descriptor after the first's close")
	unix.Close(b)
	settle(t, m)

	c := open()
	reads = m.Requests(fusebridge.OpRead)
	nc := read(c, "a descriptor opened after both closed")
	if got := m.Requests(fusebridge.OpRead) - reads; got != 0 {
		t.Errorf("a descriptor opened after both closed cost %d READ requests, want 0", got)
	}
	if err := e.Remove(); err != nil {
		t.Fatal(err)
	}
	if got := read(c, "a passthrough descriptor after Remove"); got != nc {
		t.Errorf("after Remove the descriptor reads generation %d, want its snapshot %d", got, nc)
	}
	if _, err := unix.Open(p, unix.O_RDONLY, 0); errnoOf(err) != unix.ENOENT {
		t.Errorf("open after Remove: %v, want ENOENT", err)
	}
	unix.Close(c)
	settle(t, m)
}

// TestPerOpenPassthroughConcurrent has goroutines open, read and close
// one file at once, and some keep descriptors open meanwhile: every read
// is one whole generation, each open's own (no two opens read the same
// one), and no open fails (the kernel answers EIO to an open that breaks
// its rule of one backing file per inode).
func TestPerOpenPassthroughConcurrent(t *testing.T) {
	srv := mountPerOpen(t)
	var gens atomic.Int64
	if _, err := srv.Create("gen", 0o444, numbered(&gens)); err != nil {
		t.Fatal(err)
	}
	m := srv.Metrics()
	p := filepath.Join(srv.Mountpoint(), "gen")
	const workers, rounds = 6, 150
	var mu sync.Mutex
	seen := map[int64]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	reads := m.Requests(fusebridge.OpRead)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var held []*os.File // the odd workers keep a few open a while
			defer func() {
				for _, f := range held {
					f.Close()
				}
			}()
			for i := range rounds {
				f, err := os.Open(p)
				if err != nil {
					errs <- fmt.Errorf("open: %w", err)
					return
				}
				data, err := readAllFrom(f)
				if err == nil {
					var n int64
					if n, err = generation(data); err == nil {
						mu.Lock()
						if seen[n] {
							err = fmt.Errorf("generation %d read by two opens", n)
						}
						seen[n] = true
						mu.Unlock()
					}
				}
				if err != nil {
					f.Close()
					errs <- err
					return
				}
				if w%2 == 1 && i%10 == 0 {
					held = append(held, f)
					if len(held) > 3 {
						held[0].Close()
						held = held[1:]
					}
					continue
				}
				f.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	settle(t, m)
	t.Logf("%d opens, %d READ requests (2 per forwarded open)", workers*rounds, m.Requests(fusebridge.OpRead)-reads)
}

func readAllFrom(f *os.File) ([]byte, error) { return readAll(int(f.Fd()), 128<<10) }

// TestPerOpenPassthroughCallers has root and nobody, in separate
// processes, read at once a per-caller file and a Generated one on a
// PerOpenPassthrough mount: each per-caller read is its reader's own
// (per-caller files are never served from a backing file), each Generated
// read one whole generation of its own.
func TestPerOpenPassthroughCallers(t *testing.T) {
	testenv.RequireRoot(t, "reading as the user nobody")
	tmp := t.TempDir()
	os.Chmod(tmp, 0o755)
	os.Chmod(filepath.Dir(tmp), 0o755)
	testenv.RequireFUSE(t)
	srv, err := fusebridge.Mount(filepath.Join(tmp, "mnt"), fusebridge.Options{PerOpenPassthrough: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()
	if !srv.Passthrough() {
		testenv.Missing(t, "needs FUSE passthrough (root, Linux >= 6.9)")
	}
	me := handler.PerCallerGenerated(func(ctx context.Context) ([]byte, error) {
		c, _ := handler.CallerOf(ctx)
		return fmt.Appendf(nil, "uid=%d pid=%d\n", c.Uid, c.Tid), nil
	})
	var gens atomic.Int64
	if _, err := srv.Create("me", 0o444, me); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Create("gen", 0o444, numbered(&gens)); err != nil {
		t.Fatal(err)
	}
	ctx := boundedCtx(t)
	var mu sync.Mutex
	seen := map[int64]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for _, uid := range []uint32{0, 65534} {
		for _, name := range []string{"me", "gen"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 15 {
					out, pid, err := catAs(ctx, uid, filepath.Join(srv.Mountpoint(), name))
					if name == "me" {
						if want := fmt.Sprintf("uid=%d pid=%d\n", uid, pid); err != nil || string(out) != want {
							errs <- fmt.Errorf("me read by uid %d pid %d: %q, %v; want %q", uid, pid, out, err, want)
							return
						}
						continue
					}
					n, gerr := generation(out)
					if err != nil || gerr != nil {
						errs <- fmt.Errorf("gen read by uid %d: %v, %v", uid, err, gerr)
						return
					}
					mu.Lock()
					dup := seen[n]
					seen[n] = true
					mu.Unlock()
					if dup {
						errs <- fmt.Errorf("generation %d read by two opens", n)
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
}

// writableGen is a Generated file that also takes writes (and ignores
// them).
type writableGen struct{ handler.Generated }

func (writableGen) Write(ctx context.Context, f *handler.OpenFile, src []byte, off int64) (int, error) {
	return len(src), nil
}

// TestPerOpenPassthroughWritable opens a file that takes writes for
// reading, then for writing while the first descriptor is open, and maps
// the second shared and writable: the first descriptor must still read
// content made by the handler. Served from a backing file, it would not:
// the open for writing must join that backing file (the kernel's rule),
// and its mmap(2) maps it writable, past any seal on the memfd (seen on
// Linux 6.18). So such a file is read through the server.
func TestPerOpenPassthroughWritable(t *testing.T) {
	srv := mountPerOpen(t)
	var gens atomic.Int64
	if _, err := srv.Create("gen", 0o666, writableGen{numbered(&gens)}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(srv.Mountpoint(), "gen")
	a, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(a)
	m := srv.Metrics()
	reads := m.Requests(fusebridge.OpRead)
	na, err := generation(preadAll(t, a))
	if err != nil {
		t.Fatal(err)
	}
	if m.Requests(fusebridge.OpRead) == reads {
		t.Error("a descriptor of a file that takes writes was read from a backing file, want through the server")
	}
	w, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open for writing while a read-only descriptor is open: %v", err)
	}
	defer unix.Close(w)
	if mm, err := unix.Mmap(w, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		copy(mm, "changed")
		unix.Munmap(mm)
	}
	// Forwarded, a read from offset 0 takes a new snapshot (as seq_file
	// does): a whole generation, never bytes written through a mapping.
	if n, err := generation(preadAll(t, a)); err != nil || n < na {
		t.Errorf("the read-only descriptor now reads generation %d (%v), want a whole one from %d on", n, err, na)
	}
}
