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

// childMmapBeyondCapacity truncates the file to twice the capacity and
// stores a distinct byte in every page through one shared mapping, in the
// given order, then msyncs. "desc" stores the upper half first and has the
// kernel write it back (sync_file_range, which reports nothing to anyone)
// before it stores the lower half, so that the upper half's writeback comes
// first. It prints what stopped it: the page of a SIGBUS, or msync's result.
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

// storedPages lists the pages whose first byte is the one the child stored
// there, as read(2) through a fresh descriptor shows them, optionally after
// POSIX_FADV_DONTNEED (which drops clean cached pages).
func storedPages(t *testing.T, path string, dontneed bool) string {
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
	var runs []string
	start := -1
	for i := 0; i <= mmapPages; i++ {
		ok := i < mmapPages && buf[i*4096] == pageByte(i) && bytes.Count(buf[i*4096+1:(i+1)*4096], []byte{0}) == 4095
		switch {
		case ok && start < 0:
			start = i
		case !ok && start >= 0:
			runs = append(runs, fmt.Sprintf("%d-%d", start, i-1))
			start = -1
		}
	}
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	return fmt.Sprintf("pages %s stored, st_blocks %d", strings.Join(runs, ","), st.Blocks)
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
// beyond the capacity. tmpfs (and passthrough) stop it with SIGBUS at the
// first page that does not fit; the forwarded modes cannot (the server is
// not asked at the fault), so msync fails with ENOSPC instead. Either way
// the writer learns of it, and the file then holds, and read(2) returns,
// exactly what tmpfs holds: the first half, before and after the kernel's
// cache is dropped. In the forwarded modes the result does not depend on
// the order of the writeback either.
func TestMmapBeyondCapacity(t *testing.T) {
	tmp := oracle(t, fmt.Sprintf("size=%d", mmapCapacity))
	if got := runMmapChild(t, tmp, "asc"); got != fmt.Sprintf("SIGBUS at page %d", mmapPages/2) {
		t.Fatalf("tmpfs: %s, want a SIGBUS at page %d", got, mmapPages/2)
	}
	want := storedPages(t, tmp, false)
	if w := fmt.Sprintf("pages 0-%d stored, st_blocks %d", mmapPages/2-1, mmapCapacity/512); want != w {
		t.Fatalf("tmpfs: %s, want %s", want, w)
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			s := serve(t, m, mmapCapacity)
			wantStop := "msync: no space left on device"
			if m.name == "passthrough" {
				wantStop = fmt.Sprintf("SIGBUS at page %d", mmapPages/2)
			}
			orders := []string{"asc"}
			if m.name != "passthrough" {
				orders = append(orders, "desc")
			}
			for _, order := range orders {
				if got := runMmapChild(t, s.path, order); got != wantStop {
					t.Errorf("%s: the writer saw %q, want %q", order, got, wantStop)
				}
				if got := storedPages(t, s.path, false); got != want {
					t.Errorf("%s: read(2) after the writer: %s; tmpfs: %s", order, got, want)
				}
				if got := storedPages(t, s.path, true); got != want {
					t.Errorf("%s: read(2) after POSIX_FADV_DONTNEED: %s; tmpfs: %s", order, got, want)
				}
			}
		})
	}
}
