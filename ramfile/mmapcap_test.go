package ramfile_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	mmapCapacity = 1 << 20
	mmapPages    = 2 * mmapCapacity / 4096
)

// ackPages is how many pages the child writes with pwrite(2) and fsyncs
// before its stores through the mapping: acknowledged, they must survive.
const ackPages = 16

// childMmapBeyondCapacity truncates the file to twice the capacity, writes
// and fsyncs the first ackPages pages, and stores a distinct byte in every
// page through one shared mapping, in the given order, then msyncs. "desc"
// stores the upper half first and has the kernel write it back
// (sync_file_range, which reports nothing to anyone) before it stores the
// lower half, so that the upper half's writeback comes first. It prints
// what stopped it: the page of a SIGBUS, or msync's result.
func childMmapBeyondCapacity(path, order string) error {
	fd, err := unix.Open(path, unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 0); err != nil {
		return err
	}
	if err := unix.Ftruncate(fd, 2*mmapCapacity); err != nil {
		return err
	}
	ack := make([]byte, ackPages*4096)
	for i := range ackPages {
		ack[i*4096] = pageByte(i)
	}
	if _, err := unix.Pwrite(fd, ack, 0); err != nil {
		return err
	}
	if err := unix.Fsync(fd); err != nil {
		return err
	}
	m, err := unix.Mmap(fd, 0, 2*mmapCapacity, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	defer unix.Munmap(m)
	var pages []int
	for i := range mmapPages {
		pages = append(pages, i)
	}
	if order == "desc" {
		pages = append(pages[mmapPages/2:], pages[:mmapPages/2]...)
	}
	debug.SetPanicOnFault(true)
	for k, i := range pages {
		faulted := func() (f bool) {
			defer func() {
				if v := recover(); v != nil {
					f = true
				}
			}()
			m[i*4096] = pageByte(i)
			return false
		}()
		if faulted {
			fmt.Printf("SIGBUS at page %d\n", i)
			return nil
		}
		if order == "desc" && k == mmapPages/2-1 {
			if err := unix.SyncFileRange(fd, mmapCapacity, mmapCapacity, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER); err != nil {
				fmt.Printf("sync_file_range: %v\n", err)
			}
		}
	}
	fmt.Printf("msync: %v\n", unix.Msync(m, unix.MS_SYNC))
	return nil
}

func pageByte(i int) byte { return byte(i%251 + 1) }

// pagesRead is what read(2) through a fresh descriptor shows of the file
// after the child: the pages holding what the child stored there, and
// those holding anything else but zeros.
type pagesRead struct {
	stored []bool
	bad    []int
	blocks int64
}

// readPages reads the file through a fresh descriptor, optionally after
// POSIX_FADV_DONTNEED (which drops clean cached pages).
func readPages(t *testing.T, path string, dontneed bool) pagesRead {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if dontneed {
		unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
	}
	buf := make([]byte, 2*mmapCapacity)
	n, err := unix.Pread(fd, buf, 0)
	if err != nil || n != len(buf) {
		t.Fatalf("pread: %d, %v", n, err)
	}
	r := pagesRead{stored: make([]bool, mmapPages)}
	for i := range mmapPages {
		b := buf[i*4096 : (i+1)*4096]
		rest := bytes.Count(b[1:], []byte{0}) == 4095
		switch {
		case b[0] == pageByte(i) && rest:
			r.stored[i] = true
		case b[0] != 0 || !rest:
			r.bad = append(r.bad, i)
		}
	}
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	r.blocks = st.Blocks
	return r
}

// String lists the stored pages as runs, as "pages 0-255 stored,
// st_blocks 2048".
func (r pagesRead) String() string {
	var runs []string
	start := -1
	for i := 0; i <= len(r.stored); i++ {
		ok := i < len(r.stored) && r.stored[i]
		switch {
		case ok && start < 0:
			start = i
		case !ok && start >= 0:
			runs = append(runs, fmt.Sprintf("%d-%d", start, i-1))
			start = -1
		}
	}
	s := fmt.Sprintf("pages %s stored, st_blocks %d", strings.Join(runs, ","), r.blocks)
	if len(r.bad) > 0 {
		s += fmt.Sprintf(", pages %v hold bytes never stored there", r.bad)
	}
	return s
}

func (r pagesRead) count() int {
	n := 0
	for _, ok := range r.stored {
		if ok {
			n++
		}
	}
	return n
}

func runMmapChild(t *testing.T, path, order string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$", order, path)
	cmd.Env = append(os.Environ(), childEnv+"=mmapcap")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestMmapBeyondCapacity: a program that stores through a shared mapping
// beyond the capacity, after writing and fsyncing its first pages. tmpfs
// (and passthrough, where the fault reaches the store) stop it with SIGBUS
// at the first page that does not fit, and hold exactly the pages below
// it. The forwarded modes cannot stop it at the fault (the server is not
// asked), and which pages fit then depends on the order in which the
// kernel writes them back, which nobody controls; so they promise what
// holds whatever that order, and the test requires exactly that, with the
// upper half written back first and last: msync fails with ENOSPC; the
// store never holds more than its capacity; no page holds bytes never
// stored there; the pages written and fsync'd before are all kept. read(2)
// shows that after POSIX_FADV_DONTNEED; right after the writer it may still
// show cached pages of the failed writeback (the bridge drops them once it
// has replied), but never bytes that were not stored.
func TestMmapBeyondCapacity(t *testing.T) {
	tmp := oracle(t, fmt.Sprintf("size=%d", mmapCapacity))
	if got := runMmapChild(t, tmp, "asc"); got != fmt.Sprintf("SIGBUS at page %d", mmapPages/2) {
		t.Fatalf("tmpfs: %s, want a SIGBUS at page %d", got, mmapPages/2)
	}
	want := readPages(t, tmp, false).String()
	if w := fmt.Sprintf("pages 0-%d stored, st_blocks %d", mmapPages/2-1, mmapCapacity/512); want != w {
		t.Fatalf("tmpfs: %s, want %s", want, w)
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			s := serve(t, m, mmapCapacity)
			if m.name == "passthrough" {
				if got := runMmapChild(t, s.path, "asc"); got != fmt.Sprintf("SIGBUS at page %d", mmapPages/2) {
					t.Errorf("the writer saw %q, want a SIGBUS at page %d as on tmpfs", got, mmapPages/2)
				}
				for _, dontneed := range []bool{false, true} {
					if got := readPages(t, s.path, dontneed).String(); got != want {
						t.Errorf("read(2) after the writer (POSIX_FADV_DONTNEED %v): %s; tmpfs: %s", dontneed, got, want)
					}
				}
				return
			}
			for _, order := range []string{"asc", "desc"} {
				// The upper half does not fit beside the fsync'd pages:
				// sync_file_range may report that too.
				got := strings.TrimPrefix(runMmapChild(t, s.path, order), "sync_file_range: no space left on device\n")
				if got != "msync: no space left on device" {
					t.Errorf("%s: the writer saw %q, want msync's ENOSPC", order, got)
				}
				if st, err := s.store.Stat(); err != nil || st.Blocks*512 > mmapCapacity {
					t.Errorf("%s: the store holds %d blocks (%v), more than its capacity of %d", order, st.Blocks, err, mmapCapacity/512)
				}
				if got := readPages(t, s.path, false); len(got.bad) > 0 {
					t.Errorf("%s: read(2) right after the writer: %s", order, got)
				}
				kept := readPages(t, s.path, true)
				if len(kept.bad) > 0 || kept.count() > mmapPages/2 || kept.blocks*512 > mmapCapacity {
					t.Errorf("%s: read(2) after POSIX_FADV_DONTNEED: %s; want at most %d pages, none with bytes never stored", order, kept, mmapPages/2)
				}
				for i := range ackPages {
					if !kept.stored[i] {
						t.Errorf("%s: page %d, written and fsync'd before the stores, is lost: %s", order, i, kept)
						break
					}
				}
			}
		})
	}
}
