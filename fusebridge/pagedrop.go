package fusebridge

import (
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// This file makes a write to a generated file on a no-open connection
// visible to the next read(2), as a store() is on sysfs.
//
// Without OPEN the kernel keeps a file's pages across opens, and a
// buffered write goes through them (fs/fuse/file.c, fuse_perform_write):
// fuse_fill_write_pages copies the written bytes into the page-cache
// folio; a folio that was already uptodate (a reader cached the old text)
// stays uptodate and is unlocked before the WRITE is even sent, so it now
// holds the written bytes over the old text ("high\n high\n" for an enum
// whose text was "[low] high\n"); a folio that was not uptodate stays
// locked until the WRITE reply and is left not uptodate, so the next read
// asks the server. After the reply the kernel only marks the attributes
// stale; with explicit data cache control (server.go) a new size drops the
// pages beyond it, never the ones below. So only the first kind of folio
// can serve stale bytes, and that one is unlocked while the WRITE is in
// flight: dropping the pages from inside the WRITE is safe exactly when it
// is needed. When it is not needed it would wait for the locked folio until
// the reply, which waits for it: a deadlock.
//
// The bridge therefore counts the READs it served for the inode since the
// last invalidation that it knows completed. A WRITE that follows no READ
// (and covers no whole page, which the kernel marks uptodate itself)
// cannot meet an uptodate folio and needs nothing. Otherwise the WRITE
// invalidates the pages before it is answered, waiting at most
// writeDropWait: if a folio is locked after all (reclaim evicted the cached
// one, or a large folio is only partly written), the reply goes out when
// the bound expires and the invalidation completes right after it. Until it
// has, GETATTRs of the file wait for it: a read(2) to the end of the file
// after a write asks for the attributes first (the write made them stale),
// so it still sees no stale page. Only a read that stays within the size
// the kernel knows (and so asks nothing) could, until the invalidation
// completes, which in the locked case is microseconds after the reply.
//
// A read concurrent with the write can see the written bytes over the old
// text while the write is in flight: the kernel serves an uptodate folio
// without asking, and the write copied into it before sending the WRITE.
//
// Measured by TestKnobReadAfterWrite (400 rounds of read, echo, read per
// knob, two readers hammering): before, 21-53% of the reads right after
// write(2) saw mixed or stale text; after, none in 8,000 rounds, with 0-3
// WRITEs per 400 reaching writeDropWait (their invalidation then completed
// 0.2-9 ms later, once the reply had released the locked folio). Answering the O_TRUNC's SETATTR with size 0, so
// that the kernel drops the pages before the write, was tried and dropped:
// readers of the truncated size see an empty file, reads racing with the
// SETATTR cache the old text again after the kernel dropped it, and that
// made 5 to 10 times as many WRITEs wait for the bound.

// writeDropWait bounds how long a WRITE waits for the invalidation of the
// pages it may have left stale. Dropping unlocked pages takes microseconds;
// the bound only matters when the kernel holds a folio locked for the
// WRITE, where waiting longer gains nothing.
const writeDropWait = 50 * time.Millisecond

// pageSize is the kernel's page size, the smallest folio.
var pageSize = int64(os.Getpagesize())

// pageState is what a fileNode of a no-open connection knows of the pages
// the kernel may cache for it.
type pageState struct {
	reads atomic.Uint64 // READs served, counted when they start
	clean atomic.Uint64 // reads counted before the last completed invalidation
	// pending is closed when the invalidation that a WRITE stopped
	// waiting for completes; nil when there is none.
	pending atomic.Pointer[chan struct{}]
}

// droppedWait bounds how long a GETATTR waits for a pending invalidation.
const droppedWait = time.Second

// readStarting is called when a READ is about to be answered: from now on
// the kernel may hold an uptodate folio of the file.
func (p *pageState) readStarting() {
	if p != nil {
		p.reads.Add(1)
	}
}

// dropPages invalidates the kernel's pages (and attributes) of n and
// records that the READs counted before it began no longer have pages in
// the cache.
func (n *fileNode) dropPages() syscall.Errno {
	if n.pages == nil {
		return n.NotifyContent(0, 0)
	}
	r := n.pages.reads.Load()
	errno := n.NotifyContent(0, 0)
	if errno != 0 && errno != syscall.ENOENT {
		return errno // ENOENT: the kernel forgot the inode, and its pages
	}
	n.markClean(r)
	return errno
}

// markClean records that no page of the READs counted up to r is cached.
func (n *fileNode) markClean(r uint64) {
	for {
		c := n.pages.clean.Load()
		if c >= r || n.pages.clean.CompareAndSwap(c, r) {
			return
		}
	}
}

// dropWritten is called by a WRITE of len bytes at off, after the handler
// stored them, on a no-open connection for content the kernel's own
// write-through does not keep right. It returns once no page the write may
// have left stale is cached, or after writeDropWait.
func (n *fileNode) dropWritten(off int64, length int) {
	if n.pages.reads.Load() == n.pages.clean.Load() && !coversPage(off, int64(length)) {
		// No folio of the file can be uptodate: the written one is
		// locked until the reply and is read afresh afterwards.
		return
	}
	done := make(chan struct{})
	go func() {
		n.dropPages()
		close(done)
	}()
	t := time.NewTimer(writeDropWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		writeDropTimeouts.Add(1)
		n.pages.pending.Store(&done)
		go func() {
			<-done
			n.pages.pending.CompareAndSwap(&done, nil)
		}()
	}
}

// waitDropped waits (boundedly) for an invalidation that a WRITE was
// answered before.
func (n *fileNode) waitDropped() {
	if n.pages == nil {
		return // no WRITE leaves an invalidation pending
	}
	p := n.pages.pending.Load()
	if p == nil {
		return
	}
	t := time.NewTimer(droppedWait)
	defer t.Stop()
	select {
	case <-*p:
	case <-t.C:
	}
}

// writeDropTimeouts counts WRITEs answered before their invalidation
// completed (tests read it).
var writeDropTimeouts atomic.Int64

// coversPage reports whether [off, off+length) holds a whole page, which
// the kernel marks uptodate after copying it.
func coversPage(off, length int64) bool {
	first := (off + pageSize - 1) / pageSize * pageSize
	return first+pageSize <= off+length
}
