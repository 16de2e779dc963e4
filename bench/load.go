package bench

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// maxBlock is the largest block any workload moves in one call.
const maxBlock = 1 << 20

// appendCap bounds the file that the O_APPEND workload grows: when one run
// has appended this much, the file is cut back to empty (off the clock), so
// a fast target does not fill the machine's memory.
const appendCap = 256 << 20

// newBuffer maps a page-aligned (so O_DIRECT-ready) buffer of maxBlock bytes
// filled with a non-zero pattern, so no layer can take a zero-page shortcut.
func newBuffer(seed uint64) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, maxBlock, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap buffer: %w", err)
	}
	x := seed | 1
	for i := 0; i+8 <= len(b); i += 8 {
		x = xorshift(x)
		for k := range 8 {
			b[i+k] = byte(x >> (8 * k))
		}
	}
	return b, nil
}

func xorshift(x uint64) uint64 {
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	return x
}

// jobResult is what one job (one thread of a workload) did.
type jobResult struct {
	ops, bytes int64
	paused     time.Duration // time spent off the clock (append resets)
	err        error
}

// goRun runs workload w with the built-in load generator on path for about
// d: w.jobs goroutines, each locked to its own OS thread, issue raw
// syscalls (pread/pwrite/write/open/fstatat) from preallocated buffers.
// size is the data file's size: the range that sequential and random
// workloads cover.
func goRun(w *workload, path string, size int64, d time.Duration, bufs [][]byte) (sample, error) {
	jobs := max(w.jobs, 1)
	if len(bufs) < jobs {
		return sample{}, fmt.Errorf("%d buffers for %d jobs", len(bufs), jobs)
	}
	res := make([]jobResult, jobs)
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	var t0 time.Time
	for j := range jobs {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			// Locked so the job keeps one thread (as fio's do); unlocked
			// before returning so the runtime keeps the thread instead of
			// killing it, which would fire the Pdeathsig of any server
			// child that this thread happened to fork.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			res[j] = runJob(w, path, size, d, bufs[j], uint64(j)+1, &ready, start, &t0)
		}()
	}
	ready.Wait()
	t0 = time.Now()
	close(start)
	done.Wait()
	wall := time.Since(t0)
	var s sample
	var paused time.Duration
	for _, r := range res {
		if r.err != nil {
			return sample{}, r.err
		}
		s.ops += float64(r.ops)
		s.bytes += float64(r.bytes)
		paused = max(paused, r.paused)
	}
	s.wall = (wall - paused).Seconds()
	if s.ops == 0 {
		return sample{}, errors.New("no operation completed")
	}
	return s, nil
}

// runJob is one job of goRun. It opens its own descriptor (off the clock,
// as fio does), waits for the common start and loops until d has passed.
func runJob(w *workload, path string, size int64, d time.Duration, buf []byte, seed uint64,
	ready *sync.WaitGroup, start <-chan struct{}, t0 *time.Time) (r jobResult) {
	fd := -1
	flags := 0
	switch w.op {
	case opSeqWrite, opRandWrite:
		flags = unix.O_WRONLY
	case opAppend:
		flags = unix.O_WRONLY | unix.O_APPEND
	case opSeqRead, opRandRead:
		flags = unix.O_RDONLY
	case opDirectRandRead:
		flags = unix.O_RDONLY | unix.O_DIRECT
	}
	if w.op != opOpenReadClose && w.op != opStat {
		var err error
		fd, err = unix.Open(path, flags|unix.O_CLOEXEC, 0)
		if err != nil {
			ready.Done()
			r.err = fmt.Errorf("open %s: %w", path, err)
			return r
		}
		defer unix.Close(fd)
		if w.op == opAppend {
			if err := unix.Ftruncate(fd, 0); err != nil {
				ready.Done()
				r.err = fmt.Errorf("truncate before appending: %w", err)
				return r
			}
		}
	}
	bs := w.bs
	if bs <= 0 || bs > len(buf) {
		bs = len(buf)
	}
	b := buf[:bs]
	blocks := size / int64(bs)
	if blocks < 1 && (w.op == opSeqRead || w.op == opSeqWrite || w.op == opRandRead || w.op == opRandWrite || w.op == opDirectRandRead) {
		ready.Done()
		r.err = fmt.Errorf("file size %d is smaller than the block size %d", size, bs)
		return r
	}
	// How many operations between two looks at the clock: cheap ones are
	// batched so that reading the clock costs under 1% of the run.
	every := int64(8)
	if bs >= 64<<10 {
		every = 1
	}
	rng := xorshift(seed*0x9E3779B97F4A7C15 | 1)
	var off int64
	var appended int64

	ready.Done()
	<-start
	begin := *t0
	for {
		var n int
		var err error
		switch w.op {
		case opSeqWrite:
			n, err = unix.Pwrite(fd, b, off)
			off += int64(bs)
			if off+int64(bs) > size {
				off = 0
			}
		case opSeqRead:
			n, err = unix.Pread(fd, b, off)
			off += int64(bs)
			if off+int64(bs) > size {
				off = 0
			}
		case opRandRead, opDirectRandRead:
			rng = xorshift(rng)
			n, err = unix.Pread(fd, b, int64(rng%uint64(blocks))*int64(bs))
		case opRandWrite:
			rng = xorshift(rng)
			n, err = unix.Pwrite(fd, b, int64(rng%uint64(blocks))*int64(bs))
		case opAppend:
			n, err = unix.Write(fd, b)
			appended += int64(n)
			if err == nil && appended >= appendCap {
				p := time.Now()
				if terr := unix.Ftruncate(fd, 0); terr != nil {
					r.err = fmt.Errorf("truncate after %d bytes appended: %w", appended, terr)
					return r
				}
				appended = 0
				r.paused += time.Since(p)
			}
		case opOpenReadClose:
			n, err = openReadClose(path, b[:100])
			n = max(n, 1) // count the operation, not the bytes
		case opStat:
			var st unix.Stat_t
			err = unix.Stat(path, &st)
			n = 1
		default:
			r.err = fmt.Errorf("workload %s has no Go load generator", w.name)
			return r
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			r.err = fmt.Errorf("%s on %s after %d operations: %w", w.name, path, r.ops, err)
			return r
		}
		if n == 0 {
			r.err = fmt.Errorf("%s on %s: 0 bytes transferred (file shorter than %d bytes?)", w.name, path, size)
			return r
		}
		r.ops++
		if w.op != opOpenReadClose && w.op != opStat {
			r.bytes += int64(n)
		}
		if r.ops%every == 0 && time.Since(begin)-r.paused >= d {
			return r
		}
	}
}

// openReadClose is what cat does to a small file: open, one read, close.
// It returns the bytes read; reading 0 bytes from a file that should hold
// data is an error.
func openReadClose(path string, b []byte) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	n, err := unix.Read(fd, b)
	cerr := unix.Close(fd)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, errors.New("read returned 0 bytes")
	}
	return n, cerr
}
