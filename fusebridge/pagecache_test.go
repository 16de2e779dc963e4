package fusebridge_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// versionLens are the sizes of a sized file (TestPageCacheSnapshots)'s successive snapshots:
// longer, shorter and equal to the one before, within a page and across
// pages, up to the largest served from the page cache and one byte more,
// so that the kernel's size has to grow and shrink.
var versionLens = []int{100, 5000, 11, 11, 4096, 8193, 12, 300, 65536, 4097, 128 << 10, 128<<10 + 1, 20}

// sized is a Generated file whose snapshot k is "v=NNNNNNNN;" then the
// filler byte fillOf(k) up to lens[k%len(lens)] bytes: any byte of it says
// which snapshot it came from (the header, or the filler), so that a read
// that mixes two snapshots, stops short or runs past the end shows, at any
// offset.
type sized struct {
	n    atomic.Int64
	lens []int
}

func (s *sized) snap(k int64) []byte {
	b := fmt.Appendf(nil, "v=%08d;", k)
	return append(b, bytes.Repeat([]byte{fillOf(k)}, s.lens[k%int64(len(s.lens))]-len(b))...)
}

func (s *sized) gen() handler.Generated {
	return func(context.Context) ([]byte, error) { return s.snap(s.n.Add(1)), nil }
}

func fillOf(k int64) byte { return 'a' + byte(k%26) }

// whole checks that b is one whole snapshot and returns its number.
func (s *sized) whole(b []byte) (int64, error) {
	if len(b) < 11 || string(b[:2]) != "v=" || b[10] != ';' {
		return 0, fmt.Errorf("not a snapshot: %q", head(b))
	}
	k, err := strconv.ParseInt(string(b[2:10]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not a snapshot: %q", head(b))
	}
	want := s.snap(k)
	if len(b) != len(want) {
		return k, fmt.Errorf("snapshot %d read as %d bytes, want %d", k, len(b), len(want))
	}
	for i := range b {
		if b[i] != want[i] {
			return k, fmt.Errorf("snapshot %d has %q at %d: two snapshots mixed, or stale bytes", k, b[i], i)
		}
	}
	return k, nil
}

// segment checks that b, read at off, is a segment of one snapshot (up to
// its end, if b is shorter than asked), and returns that snapshot's number
// (0 for an empty read).
func (s *sized) segment(b []byte, off int64, asked int) (int64, error) {
	if len(b) == 0 {
		return 0, nil
	}
	// Candidates: the filler byte names k modulo 26; the header, if read,
	// names it exactly. Try every k the file has made (few in a test).
	for k := s.n.Load(); k > 0; k-- {
		w := s.snap(k)
		if off+int64(len(b)) > int64(len(w)) || !bytes.Equal(w[off:off+int64(len(b))], b) {
			continue
		}
		if len(b) < asked && off+int64(len(b)) != int64(len(w)) {
			continue // short, and not at that snapshot's end
		}
		return k, nil
	}
	return 0, fmt.Errorf("%d bytes read at %d (of %d asked) are no segment of one snapshot: %q...%q",
		len(b), off, asked, head(b), b[max(len(b)-8, 0):])
}

func head(b []byte) []byte { return b[:min(len(b), 16)] }

// readAll reads fd from its offset to EOF in reads of n bytes.
func readAll(fd, n int) ([]byte, error) {
	var out []byte
	buf := make([]byte, n)
	for {
		k, err := unix.Read(fd, buf)
		if err != nil {
			return out, err
		}
		if k == 0 {
			return out, nil
		}
		out = append(out, buf[:k]...)
	}
}

// Content made per open is read from the page cache, each open given its
// own snapshot: every read, whole or in small pieces, sees one whole
// snapshot, newer than the one before, while its size grows and shrinks;
// also with readers at once, where only one open at a time is cached.
func TestPageCacheSnapshots(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	v := &sized{lens: versionLens}
	if _, err := srv.Create("v", 0o444, v.gen()); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(srv.Mountpoint(), "v")
	m := srv.Metrics()
	cycle := func(readSize int) (int64, error) {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, err
		}
		defer unix.Close(fd)
		b, err := readAll(fd, readSize)
		if err != nil {
			return 0, err
		}
		return v.whole(b)
	}
	last := int64(0)
	for i := range 3 * len(versionLens) {
		readSize := 128 << 10
		if i%3 == 1 {
			readSize = 61 // pieces, across page boundaries
		}
		k, err := cycle(readSize)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		if k <= last {
			t.Fatalf("open %d read snapshot %d after %d", i, k, last)
		}
		last = k
		settle(t, m) // the next open is the only one: served from the cache
	}
	if m.CachedOpens() == 0 {
		t.Fatal("no open was served from the page cache")
	}

	// Readers at once, and a descriptor kept open that reads again.
	keep, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(keep)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for r := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if _, err := cycle([]int{128 << 10, 4096, 1000}[r]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 256<<10)
		for range 100 {
			n, err := unix.Pread(keep, buf, 0)
			if err == nil {
				_, err = v.whole(buf[:n])
			}
			if err != nil {
				errs <- fmt.Errorf("re-read: %w", err)
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A descriptor read from the page cache that reads again to the end gets a
// new snapshot once its own is DefaultMaxAge old, or after
// Entry.Invalidate (Notify); a read below the size keeps its snapshot; a
// new snapshot shorter than the longest given to the cache is not taken
// (the descriptor keeps its own, whole).
func TestPageCacheReread(t *testing.T) {
	srv, e, s, p := sizedFile(t, fusebridge.Options{}, 5000, 5000, 6000, 100)
	fd := cachedOpen(t, srv, p)
	buf := make([]byte, 64<<10)
	pread := func(n int) int64 {
		t.Helper()
		k, err := unix.Pread(fd, buf[:n], 0)
		if err != nil {
			t.Fatal(err)
		}
		v, err := s.segment(buf[:k], 0, n)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	first := pread(len(buf)) // 1: 5000 bytes
	// Past the bound of a cached descriptor's snapshot; a loaded machine
	// only makes the wait longer.
	wait := fusebridge.DefaultMaxAge + 50*time.Millisecond
	time.Sleep(wait)
	second := pread(len(buf)) // 2: 6000 bytes
	if second <= first {
		t.Errorf("a read to the end %v after the first read snapshot %d again, want a newer one", wait, second)
	}
	if err := e.Invalidate(); err != nil {
		t.Fatal(err)
	}
	// Ten bytes, below the size the kernel knows: no GETATTR asked first.
	if got := pread(10); got != second {
		t.Errorf("a read of 10 bytes after Invalidate read snapshot %d, want the descriptor's %d", got, second)
	}
	// To the end: snapshot 3 is 100 bytes, shorter than 6000: not taken;
	// 4 (5000) neither, and 5 (5000) neither; the descriptor keeps 2.
	if got := pread(len(buf)); got != second {
		t.Errorf("a read to the end after Invalidate read snapshot %d, want %d: the new ones are shorter", got, second)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Size != 6000 {
		t.Errorf("fstat: size %d (%v), want 6000, snapshot %d's", st.Size, err, second)
	}
}

// mmap(2) of a descriptor read from the page cache maps its snapshot.
func TestPageCacheMmap(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	v := &sized{lens: versionLens}
	if _, err := srv.Create("v", 0o444, v.gen()); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(srv.Mountpoint(), "v"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size == 0 {
		t.Fatal("size 0: the descriptor is not read from the page cache")
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	mem = viaSyscall(t, mem) // no page fault on our own mount from Go code
	k, err := v.whole(mem)
	if err != nil {
		t.Fatal(err)
	}
	b, err := readAll(int(f.Fd()), 128<<10)
	if err != nil || !bytes.Equal(b, mem) {
		t.Errorf("read %q (%v) after mmap showed snapshot %d (%q)", head(b), err, k, head(mem))
	}
}
