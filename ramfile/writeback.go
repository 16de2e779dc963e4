package ramfile

// Writeback at the capacity (forwarded modes).
//
// Without passthrough, a store through a shared mapping dirties a page of the
// kernel's page cache, and the kernel writes it back later with a WRITE on
// nobody's behalf (pid 0), in batches of up to 1 MiB that may arrive
// concurrently and in any order. tmpfs (and passthrough, where the fault
// reaches the store itself) refuses the page at the fault with SIGBUS; a
// FUSE server is not asked at the fault, so the first it hears of the page
// is its writeback, after the program has moved on. Two things then go
// wrong unless the server takes care:
//
//   - the kernel keeps the pages whose writeback failed, so read(2) returns
//     bytes the store never held (the bridge drops the kernel's cache after
//     a failed writeback: fusebridge's writeback.go);
//   - which pages fit depends on which batch came first.
//
// What the file promises, whatever the order of the writeback: the store
// never holds more than its capacity; the writer learns of the loss (every
// WRITE that does not fit fails with ENOSPC, which the kernel reports to
// msync(2) and fsync(2)); nothing acknowledged is lost (pages that write(2)
// or fallocate(2) placed, or that a successful fsync covered, are never
// given up). Which of the stored pages are kept is not promised.
//
// Within that, writeback that does not fit gives the room to the lowest
// offsets where it can, as a program storing through the mapping from the
// start would have got on tmpfs: pages that earlier writeback (since the
// last fsync) allocated above the failing write are punched out again and
// the write retried. That makes the lowest pages win in the common case,
// not always: the kernel may write a batch back again after its failure,
// or split and interleave batches, and under load it has been seen to keep
// a few hundred pages above a gap.

import (
	"context"
	"errors"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/handler"
)

var pageSize = int64(os.Getpagesize())

// writeback holds the pages that writeback allocated since the last fsync.
type writeback struct {
	mu   sync.Mutex
	runs []pageRun // sorted, disjoint

	// any mirrors len(runs) > 0, so that the write(2) path, which must
	// forget what it overwrites, costs no lock while the set is empty
	// (always, but after a writeback at the capacity).
	any atomic.Bool
}

type pageRun struct{ lo, hi int64 } // pages [lo, hi)

func (w *writeback) add(lo, hi int64) {
	if lo >= hi {
		return
	}
	w.remove(lo, hi)
	i := sort.Search(len(w.runs), func(i int) bool { return w.runs[i].lo >= hi })
	w.runs = append(w.runs[:i], append([]pageRun{{lo, hi}}, w.runs[i:]...)...)
	// Merge with adjacent runs.
	if i+1 < len(w.runs) && w.runs[i+1].lo == hi {
		w.runs[i].hi = w.runs[i+1].hi
		w.runs = append(w.runs[:i+1], w.runs[i+2:]...)
	}
	if i > 0 && w.runs[i-1].hi == lo {
		w.runs[i-1].hi = w.runs[i].hi
		w.runs = append(w.runs[:i], w.runs[i+1:]...)
	}
}

func (w *writeback) remove(lo, hi int64) {
	var out []pageRun
	for _, r := range w.runs {
		if r.hi <= lo || r.lo >= hi {
			out = append(out, r)
			continue
		}
		if r.lo < lo {
			out = append(out, pageRun{r.lo, lo})
		}
		if r.hi > hi {
			out = append(out, pageRun{hi, r.hi})
		}
	}
	w.runs = out
}

// forget drops the bytes [off, off+n) from the set: something other than
// writeback wrote, allocated, punched or truncated them.
func (w *writeback) forget(off, n int64) {
	if !w.any.Load() {
		return
	}
	w.mu.Lock()
	w.remove(off/pageSize, ceilPages(off+n))
	w.any.Store(len(w.runs) > 0)
	w.mu.Unlock()
}

func (w *writeback) reset() {
	if !w.any.Load() {
		return
	}
	w.mu.Lock()
	w.runs = nil
	w.any.Store(false)
	w.mu.Unlock()
}

// ceilPages is the number of pages that b bytes touch (no overflow near
// MaxInt64).
func ceilPages(b int64) int64 {
	n := b / pageSize
	if b%pageSize != 0 {
		n++
	}
	return n
}

// isWriteback reports whether a WRITE is the kernel's writeback of cached
// pages rather than a write(2): the kernel sends those on nobody's behalf.
func isWriteback(ctx context.Context) bool {
	c, ok := handler.CallerOf(ctx)
	return ok && c.Tid == 0
}

// holes returns the pages of [off, end) that hold nothing yet.
func (f *File) holes(off, end int64) []pageRun {
	var out []pageRun
	for pos := off; pos < end; {
		d, err := f.store.Seek(pos, unix.SEEK_DATA)
		if err != nil || d >= end {
			// ENXIO: no data at or after pos.
			out = append(out, pageRun{pos / pageSize, ceilPages(end)})
			break
		}
		if d > pos {
			out = append(out, pageRun{pos / pageSize, d / pageSize})
		}
		h, err := f.store.Seek(d, unix.SEEK_HOLE)
		if err != nil {
			break
		}
		pos = h
	}
	return out
}

func countPages(runs []pageRun, lo, hi int64) int64 {
	var n int64
	for _, r := range runs {
		n += max(0, min(r.hi, hi)-max(r.lo, lo))
	}
	return n
}

// writeBack stores a writeback WRITE as described in the file comment.
func (f *File) writeBack(src []byte, off int64) (int, error) {
	w := &f.wb
	w.mu.Lock()
	defer func() {
		w.any.Store(len(w.runs) > 0)
		w.mu.Unlock()
	}()
	end := off + int64(len(src))
	holes := f.holes(off, end)
	done := 0
	evicted := false
	var err error
	for {
		var n int
		n, err = f.store.WriteAt(src[done:], off+int64(done))
		done += n
		if done == len(src) || !errors.Is(err, syscall.ENOSPC) {
			break
		}
		// Make room from the top: writeback pages above this write.
		need := countPages(holes, (off+int64(done))/pageSize, ceilPages(end))
		last := ceilPages(end)
		var freed int64
		for freed < need && len(w.runs) > 0 {
			r := &w.runs[len(w.runs)-1]
			if r.hi <= last {
				break
			}
			lo := max(r.lo, last, r.hi-(need-freed))
			if perr := f.store.Fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, lo*pageSize, (r.hi-lo)*pageSize); perr != nil {
				break
			}
			freed += r.hi - lo
			if lo == r.lo {
				w.runs = w.runs[:len(w.runs)-1]
			} else {
				r.hi = lo
			}
		}
		if freed == 0 {
			break
		}
		evicted = true
	}
	// The pages this write filled are now writeback's too.
	stored := off + int64(done)
	for _, h := range holes {
		w.add(h.lo, min(h.hi, ceilPages(stored)))
	}
	if done == len(src) && !evicted {
		return done, nil
	}
	if err == nil {
		err = syscall.ENOSPC
	}
	// A short writeback is not reported by the kernel: fail the whole
	// WRITE, whatever part of it the store now holds.
	return 0, err
}
