package fusebridge

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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
// invalidates the pages before it is answered, unless the invalidation is
// waiting for a folio lock (reclaim evicted the cached folio, or a large
// folio is only partly written, and the folio is this WRITE's): then the
// reply goes out and the invalidation completes right after it. Until it
// has, GETATTRs of the file wait for it: a read(2) after a write asks for
// the attributes first (the write made them stale), so it sees no stale
// page.
//
// What the reply waits for is a state, never a time (where /proc shows the
// state: elsewhere a fixed blindWait). The kernel's
// invalidation (fuse_reverse_inval_inode) first moves the inode's
// attribute version on and marks the attributes stale, and only then
// drops the pages; a GETATTR sent before that move is thrown away when its
// reply comes, and the read that sent it goes on with the size it had. So
// the reply to the WRITE waits until the invalidation either completed or
// sleeps in the kernel (the thread that makes it is in uninterruptible
// sleep, on a folio where /proc says so): from then on the move is made,
// and every GETATTR a read(2) after the write sends counts. An earlier
// version gave the invalidation 50 ms and then answered: under load (two
// CPU hogs, -race) the goroutine that makes it sometimes had not run by
// then, its move came after the read's GETATTR, and the read kept the size
// the write had left: after `printf 100` over "7\n", "100" (the text cut
// short; TestKnobReadAfterSlowDrop makes the late thread with a hook).
// GETATTRs waited at most a second, which a busy machine may exceed too.
//
// A read concurrent with the write can see the written bytes over the old
// text while the write is in flight: the kernel serves an uptodate folio
// without asking, and the write copied into it before sending the WRITE.
//
// The kernel's own race, which the bridge cannot close: a GETATTR reply
// whose size differs from the kernel's makes the kernel truncate the
// cached pages to it (fs/fuse/inode.c, fuse_change_attributes_i), after it
// checked, under the inode's spinlock, that no write is extending the
// file, but outside every lock, so a reader thread preempted between the
// two (a busy machine) truncates later, zeroing the cached page beyond the
// size it was told. The sizes differ after every write that changes the
// text's length or ends beyond it (the kernel takes the file to end where
// the write ended, until a GETATTR says otherwise). If the late truncation
// lands on a page a later write(2) has copied its bytes into and whose
// WRITE the server has not read yet, the WRITE carries NULs ("0x\0\0..."
// for "0x100000\n"), which a knob refuses with EINVAL (zeroedWrites counts
// them); if it lands on a page a READ filled afterwards, reads show the
// text cut by NULs until the next change. Seen about once in 3,000 rounds
// of TestKnobReadAfterWrite with four readers under a load of 12-18; not
// seen without load. Content that must not meet it is served by a connection
// that keeps OPEN (direct I/O: no page cache, the write's bytes taken from
// the writer's own memory): the default layout, or a PerCaller handler.
//
// Measured by TestKnobReadAfterWrite (400 rounds of read, echo, read per
// knob, two readers hammering) when this was written: before, 21-53% of
// the reads right after write(2) saw mixed or stale text; after, none in
// 8,000 rounds. With the wait for a state (3,000 rounds per knob and mode,
// four readers, three test processes at once beside two CPU hogs and
// -race, a load of 12-18): no read right after write(2) in 36,000 (one
// read(2) each) saw anything but the new text, 1-2% of the WRITEs were
// answered while their invalidation slept on a folio, and one write's
// bytes were zeroed by the kernel's race. Answering the O_TRUNC's SETATTR with size 0, so
// that the kernel drops the pages before the write, was tried and dropped:
// readers of the truncated size see an empty file, reads racing with the
// SETATTR cache the old text again after the kernel dropped it, and that
// made 5 to 10 times as many WRITEs wait for the folio.

// stuckWait bounds how long a WRITE, and a GETATTR after it, waits for an
// invalidation: a safety net for a kernel that never serves it, not a
// time any invalidation is expected to take (they take microseconds, or
// as long as a busy machine takes to run the thread that makes them).
const stuckWait = 30 * time.Second

// blindWait is how long a WRITE waits for its invalidation where /proc
// does not show the state of the thread that makes it: the old fixed
// wait, with the old risk under load.
const blindWait = 50 * time.Millisecond

// pageSize is the kernel's page size, the smallest folio.
var pageSize = int64(os.Getpagesize())

// pageState is what a fileNode of a no-open connection knows of the pages
// the kernel may cache for it.
type pageState struct {
	reads atomic.Uint64 // READs served, counted when they start
	clean atomic.Uint64 // reads counted before the last completed invalidation

	// pending counts the invalidations that WRITEs started and that have
	// not completed (read without mu: every GETATTR looks); idle is
	// closed when none is left. mu guards both changes.
	pending atomic.Int32
	mu      sync.Mutex
	idle    chan struct{}
}

// readStarting is called when a READ is about to be answered: from now on
// the kernel may hold an uptodate folio of the file.
func (p *pageState) readStarting() {
	if p != nil {
		p.reads.Add(1)
	}
}

// begin records an invalidation under way; end, that it completed.
func (p *pageState) begin() {
	p.mu.Lock()
	if p.pending.Load() == 0 {
		p.idle = make(chan struct{})
	}
	p.pending.Add(1)
	p.mu.Unlock()
}

func (p *pageState) end() {
	p.mu.Lock()
	if p.pending.Add(-1) == 0 {
		close(p.idle)
	}
	p.mu.Unlock()
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
// have left stale is cached, or once the invalidation waits for a folio
// (the one the WRITE holds locked until its reply) in the kernel.
func (n *fileNode) dropWritten(off int64, length int) {
	if n.pages.reads.Load() == n.pages.clean.Load() && !coversPage(off, int64(length)) {
		// No folio of the file can be uptodate: the written one is
		// locked until the reply and is read afresh afterwards.
		return
	}
	n.pages.begin()
	done := make(chan struct{})
	tids := make(chan int, 1)
	go func() {
		defer close(done)
		defer n.pages.end()
		// On a thread of its own, which /proc shows asleep in the kernel
		// (see sleepsOnFolio).
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tids <- unix.Gettid()
		if h := dropWrittenHook.Load(); h != nil {
			(*h)()
		}
		n.dropPages()
	}()
	tid := 0
	poll := time.NewTicker(100 * time.Microsecond)
	defer poll.Stop()
	stuck := time.NewTimer(stuckWait)
	defer stuck.Stop()
	for {
		select {
		case <-done:
			return
		case tid = <-tids:
		case <-poll.C:
			if tid == 0 {
				continue
			}
			switch asleep, known := sleepsOnFolio(tid); {
			case asleep:
				writeDropsAnswered.Add(1)
				return
			case !known:
				// Without /proc the bridge cannot see the state: it
				// waits blindWait more at most, as it once did for
				// every WRITE.
				poll.Stop()
				stuck.Reset(blindWait)
			}
		case <-stuck.C:
			writeDropsAnswered.Add(1)
			return
		}
	}
}

// sleepsOnFolio reports whether thread tid of this process sleeps in the
// kernel uninterruptibly, and where /proc names the place (wchan), on a
// folio or page: the invalidation it makes has moved the attribute
// version on and waits for a folio lock or writeback. Where /proc names
// no place ("0"), the sleep alone tells: before that move the kernel's
// invalidation sleeps only while the connection is being torn down.
//
// known is false where /proc does not show the thread's state at all.
func sleepsOnFolio(tid int) (asleep, known bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", tid))
	if err != nil {
		return false, false
	}
	// The state follows the command, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false, false
	}
	if b[i+2] != 'D' {
		return false, true
	}
	w, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/wchan", tid))
	if err != nil || len(w) == 0 || string(w) == "0" {
		return true, true
	}
	return bytes.Contains(w, []byte("folio")) || bytes.Contains(w, []byte("page")), true
}

// waitDropped waits for the invalidations that WRITEs started and were
// answered before they completed.
func (n *fileNode) waitDropped() {
	if n.pages == nil {
		return // no WRITE leaves an invalidation pending
	}
	p := n.pages
	if p.pending.Load() == 0 {
		return
	}
	p.mu.Lock()
	idle := p.idle
	left := p.pending.Load()
	p.mu.Unlock()
	if left == 0 {
		return
	}
	t := time.NewTimer(stuckWait)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
	}
}

// zeroedWrites counts refused WRITEs of cached content whose bytes hold
// NULs: on a no-open connection the kernel takes a WRITE's bytes from the
// page cache when the request is read, not when write(2) copied them, and
// a truncation of the cached pages to a size a GETATTR reported may zero
// them meanwhile (see "The kernel's own race" above). Tests read it.
var zeroedWrites atomic.Int64

// dropWrittenHook, set by tests, runs before a WRITE's invalidation is
// sent: it stands for a busy machine that does not run its thread.
var dropWrittenHook atomic.Pointer[func()]

// writeDropsAnswered counts WRITEs answered before their invalidation
// completed (tests read it).
var writeDropsAnswered atomic.Int64

// coversPage reports whether [off, off+length) holds a whole page, which
// the kernel marks uptodate after copying it.
func coversPage(off, length int64) bool {
	first := (off + pageSize - 1) / pageSize * pageSize
	return first+pageSize <= off+length
}
