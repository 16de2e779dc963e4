package fusebridge_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// sizedFile mounts a server with opts and a sized file "v" of lens.
func sizedFile(t *testing.T, opts fusebridge.Options, lens ...int) (*fusebridge.Server, *fusebridge.Entry, *sized, string) {
	t.Helper()
	srv := mount(t, opts)
	s := &sized{lens: lens}
	e, err := srv.Create("v", 0o444, s.gen())
	if err != nil {
		t.Fatal(err)
	}
	return srv, e, s, filepath.Join(srv.Mountpoint(), "v")
}

// waitErrs waits for wg, then reports what errs holds.
func waitErrs(t *testing.T, wg *sync.WaitGroup, errs chan error) {
	t.Helper()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// cachedOpen opens p, which must be served from the page cache.
func cachedOpen(t *testing.T, srv *fusebridge.Server, p string) int {
	t.Helper()
	settle(t, srv.Metrics())
	before := srv.Metrics().CachedOpens()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if srv.Metrics().CachedOpens() != before+1 {
		t.Fatal("the only open of the file was not served from the page cache")
	}
	return fd
}

// After Entry.Invalidate, a read of a cached descriptor that stays below
// the size it read keeps reading its snapshot, whatever its offset (a READ
// tells the server a page's offset, not the reader's: a new snapshot made
// there was once read beside the old one's pages), and one that reaches
// the end gets a new snapshot, whole.
func TestPageCacheInvalidateThenMiddle(t *testing.T) {
	srv, e, s, p := sizedFile(t, fusebridge.Options{}, 3*4096+100)
	fd := cachedOpen(t, srv, p)
	buf := make([]byte, 64<<10)
	pread := func(n int, off int64) (int64, error) {
		k, err := unix.Pread(fd, buf[:n], off)
		if err != nil {
			return 0, err
		}
		return s.segment(buf[:k], off, n)
	}
	first, err := pread(len(buf), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Invalidate(); err != nil {
		t.Fatal(err)
	}
	if mid, err := pread(100, 5000); err != nil || mid != first {
		t.Errorf("a read at 5000 after Invalidate: snapshot %d (%v), want %d, the descriptor's", mid, err, first)
	}
	// Below the size: the kernel asks no GETATTR first, and reads the
	// pages it lacks, from the same snapshot.
	if part, err := pread(8000, 0); err != nil || part != first {
		t.Errorf("a read from 0 after one in the middle: snapshot %d (%v), want %d", part, err, first)
	}
	whole, err := pread(len(buf), 0)
	if err != nil {
		t.Fatal(err)
	}
	if whole <= first {
		t.Errorf("a read to the end after Invalidate read snapshot %d, want one newer than %d", whole, first)
	}
}

// A cached descriptor re-read with preads of sizes below, at and above the
// file's, at offsets across page boundaries, while other descriptors open,
// read and close in a loop and the snapshots grow and shrink across pages,
// and Entry.Invalidate and Entry.Notify come in storms: each read returns
// a segment of one snapshot, never another's bytes past a shorter one's
// end, never zeros.
func TestPageCacheStorm(t *testing.T) {
	for _, c := range []struct {
		name                     string
		opens, invalidate, notif bool
	}{
		{"opens", true, false, false},
		{"invalidate", false, true, false},
		{"opens+invalidate", true, true, false},
		{"invalidate+notify", false, true, true},
		{"all", true, true, true},
	} {
		t.Run(c.name, func(t *testing.T) { pageCacheStorm(t, c.opens, c.invalidate, c.notif) })
	}
}

func pageCacheStorm(t *testing.T, opens, invalidate, notif bool) {
	srv, e, s, p := sizedFile(t, fusebridge.Options{}, 100, 5000, 4096, 12, 8193, 4097, 20000, 11)
	fd := cachedOpen(t, srv, p)
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	fail := func(err error) {
		select {
		case errs <- err:
		default:
		}
		stop.Store(true)
	}
	const rounds = 150
	// The cached descriptor, read by one thread: whole reads and pieces,
	// at offsets across pages. (Read by two threads at once while its
	// snapshot is renewed, one read(2) could get pages of two snapshots,
	// and zeros past the older one's end: a known limit, see pagecache.go.)
	sizes := []int{1, 11, 100, 4096, 4097, 8192, 20000, 64 << 10}
	offs := []int64{0, 0, 10, 4095, 4096, 5000, 8192, 19999}
	for r := range 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for i := 0; i < rounds && !stop.Load(); i++ {
				n, off := sizes[(i+r)%len(sizes)], offs[(i*3+r)%len(offs)]
				k, err := unix.Pread(fd, buf[:n], off)
				if err != nil {
					fail(fmt.Errorf("pread(%d, %d): %w", n, off, err))
					return
				}
				if _, err := s.segment(buf[:k], off, n); err != nil {
					fail(fmt.Errorf("cached pread(%d, %d): %w", n, off, err))
					return
				}
			}
		}()
	}
	// Opens, reads and closes: each reads one whole snapshot.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; opens && i < rounds && !stop.Load(); i++ {
			b, err := os.ReadFile(p)
			if err == nil {
				_, err = s.segment(b, 0, len(b)+1)
			}
			if err != nil {
				fail(fmt.Errorf("open+read+close: %w", err))
				return
			}
		}
	}()
	// Invalidate and Notify storms (Notify also invalidates).
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; (invalidate || notif) && i < rounds && !stop.Load(); i++ {
			if invalidate && (i%2 == 0 || !notif) {
				if err := e.Invalidate(); err != nil {
					fail(fmt.Errorf("invalidate: %w", err))
					return
				}
			} else {
				e.Notify()
			}
		}
	}()
	waitErrs(t, &wg, errs)
}

// Entry.Remove while a cached descriptor reads and opens are in flight:
// the descriptor's reads fail with EIO after, no call hangs, and the server
// keeps no handle open.
func TestPageCacheRemoveWhileReading(t *testing.T) {
	srv, e, s, p := sizedFile(t, fusebridge.Options{}, 5000, 100, 9000)
	fd := cachedOpen(t, srv, p)
	var wg sync.WaitGroup
	var removed atomic.Bool
	errs := make(chan error, 8)
	for r := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 16<<10)
			for i := 0; i < 300; i++ {
				var err error
				if r == 0 {
					var k int
					k, err = unix.Pread(fd, buf, int64(i%3)*4096)
					if err == nil {
						_, err = s.segment(buf[:k], int64(i%3)*4096, len(buf))
					} else if errors.Is(err, syscall.EIO) && removed.Load() {
						err = nil
					}
				} else {
					var b []byte
					b, err = os.ReadFile(p)
					if err == nil {
						_, err = s.segment(b, 0, len(b)+1)
					} else if (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EIO)) && removed.Load() {
						err = nil
					}
				}
				if err != nil {
					errs <- fmt.Errorf("reader %d, round %d: %w", r, i, err)
					return
				}
				if i == 100 && r == 0 {
					removed.Store(true)
					if err := e.Remove(); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	waitErrs(t, &wg, errs)
	// Not the pages: EIO from offset 0, and in the middle.
	buf := make([]byte, 100)
	for _, off := range []int64{0, 4096} {
		if _, err := unix.Pread(fd, buf, off); !errors.Is(err, syscall.EIO) {
			t.Errorf("pread at %d after Remove: %v, want EIO", off, err)
		}
	}
	unix.Close(fd)
	settle(t, srv.Metrics())
}

// A cached descriptor shows its snapshot's size to fstat and lseek
// (SEEK_END); a descriptor opened meanwhile (direct I/O) reads its own whole
// snapshot; a shared and a private map of the cached descriptor map its
// snapshot while the other reads.
func TestPageCacheSizeAndMaps(t *testing.T) {
	srv, _, s, p := sizedFile(t, fusebridge.Options{}, 5000, 9000, 100, 13000)
	fd := cachedOpen(t, srv, p)
	b, err := readAll(fd, 1000)
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.segment(b, 0, len(b)+1)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(s.snap(k)))
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Size != size {
		t.Errorf("fstat of the cached descriptor: size %d (%v), want %d", st.Size, err, size)
	}
	if end, err := unix.Seek(fd, 0, unix.SEEK_END); err != nil || end != size {
		t.Errorf("lseek(SEEK_END) of the cached descriptor: %d (%v), want %d", end, err, size)
	}
	maps := map[string][]byte{}
	for name, flag := range map[string]int{"shared": unix.MAP_SHARED, "private": unix.MAP_PRIVATE} {
		m, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ, flag)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Munmap(m)
		maps[name] = m
	}
	for range 20 {
		// Another descriptor: direct I/O, its own snapshot, whole.
		o, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.segment(o, 0, len(o)+1); err != nil {
			t.Fatalf("a descriptor opened next to the cached one: %v", err)
		}
		for name, m := range maps {
			if got := viaSyscall(t, m); !bytes.Equal(got, s.snap(k)) {
				t.Fatalf("the %s map of the cached descriptor shows %q, not its snapshot %d", name, head(got), k)
			}
		}
		b := make([]byte, 64<<10)
		n, err := unix.Pread(fd, b, 0)
		if err != nil || !bytes.Equal(b[:n], s.snap(k)) {
			t.Fatalf("re-read of the cached descriptor: %q (%v), want its snapshot %d", head(b[:n]), err, k)
		}
	}
}

// viaSyscall copies the map m of a file of this process's own mount through a
// syscall: a page fault on it from Go code would leave the goroutine
// running while the kernel waits for the server, and a garbage collection
// that waits for that goroutine would stop the server: a deadlock of the
// test, not of the bridge. In a syscall, the goroutine does not hold it up.
func viaSyscall(t *testing.T, m []byte) []byte {
	t.Helper()
	fd, err := unix.MemfdCreate("pcreview", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if n, err := unix.Pwrite(fd, m, 0); err != nil || n != len(m) {
		t.Fatalf("copy of the map: %d bytes, %v", n, err)
	}
	b := make([]byte, len(m))
	if _, err := unix.Pread(fd, b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// A file with a Write method is never served from the page cache, not even
// for O_RDONLY opens: a write through another descriptor would leave the
// pages stale.
func TestPageCacheNotForWritable(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	var n atomic.Int64
	h := writableGen{handler.Generated(func(context.Context) ([]byte, error) {
		return []byte(strconv.FormatInt(n.Add(1), 10) + "\n"), nil
	})}
	if _, err := srv.Create("w", 0o644, h); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(srv.Mountpoint(), "w")
	settle(t, srv.Metrics())
	before := srv.Metrics().CachedOpens()
	for range 3 {
		if _, err := os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
		settle(t, srv.Metrics())
	}
	if got := srv.Metrics().CachedOpens() - before; got != 0 {
		t.Errorf("%d O_RDONLY opens of a file that takes writes were served from the page cache", got)
	}
}

// Server.Unmount while a cached descriptor and a direct one are open and
// read: it returns, the mount is gone, and the descriptors fail instead of
// reading the pages.
func TestPageCacheUnmountWhileOpen(t *testing.T) {
	srv, _, _, p := sizedFile(t, fusebridge.Options{UnmountGrace: 1}, 5000, 9000)
	cached := cachedOpen(t, srv, p)
	direct, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(direct)
	buf := make([]byte, 16<<10)
	for _, fd := range []int{cached, direct} {
		if n, err := unix.Pread(fd, buf, 0); err != nil || n == 0 {
			t.Fatalf("pread before unmount: %d, %v", n, err)
		}
	}
	if err := srv.Unmount(); err != nil {
		t.Fatal(err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(mi, []byte(" "+srv.Mountpoint()+" ")) {
		t.Errorf("%s still mounted after Unmount", srv.Mountpoint())
	}
	for name, fd := range map[string]int{"cached": cached, "direct": direct} {
		if n, err := unix.Pread(fd, buf, 0); err == nil {
			t.Errorf("%s descriptor read %d bytes after Unmount, want an error", name, n)
		}
	}
}
