package fusebridge

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// This file works around the kernel's splice of files read with
// FOPEN_DIRECT_IO: sendfile(2), splice(2) and copy_file_range(2)'s
// fallback read them through the inode's page cache, not through the
// server (fs/fuse/file.c, fuse_splice_read calls filemap_splice_read for
// them, Linux 6.18; fixed upstream by "fuse: use copy_splice_read() for
// FOPEN_DIRECT_IO splice read", Joanne Koong, May 2026, not in the
// kernels these machines run). Two things follow, both seen here:
//
//   - A file whose attributes show size 0, as /proc files do, splices
//     nothing: filemap_splice_read stops at i_size without a request.
//     busybox cat uses sendfile, so in a container cat /proc/uptime
//     printed nothing for cgroupfs's per-reader files, where read(2) gave
//     the content (LXCFS, which shows the content's length as the size,
//     does not have this).
//   - With a size, the kernel fills the inode's pages with READs on the
//     splicing descriptor and keeps them: one caller's content in the
//     cache every caller of the file shares, and stale content for the
//     next splice (LXCFS has this one).
//
// So a page-cache READ on a descriptor opened with FOPEN_DIRECT_IO is
// refused with EINVAL. The kernel tells the two kinds apart for us: a
// READ of fuse_direct_io carries FUSE_READ_LOCKOWNER (the reader's files
// table as its lock owner), and one that fills pages (readahead,
// read_folio: splice, mmap faults) does not. EINVAL is what sendfile(2)
// documents when "an mmap(2)-like operation is not available for in_fd",
// and what busybox, Python's shutil and Go's io.Copy take as "use
// read(2)": they fall back and read the content. A MAP_PRIVATE map of such
// a descriptor gets SIGBUS at its first access instead of another
// reader's bytes (the mmap(2) of a /proc file fails with ENODEV).
//
// And a file whose content the kernel never caches (directOnly) shows the
// size a sysfs attribute shows, one page, instead of 0, so that a splice
// asks at all: GNU tail and wc know that size from sysfs and read such a
// file to its end (tail reads the last lines of the first page only when
// the content is longer). A file that the page cache may serve
// (pagecache.go) keeps the sizes that code controls. One that takes writes
// shows the page too: an O_APPEND write then comes at offset 4096, which
// Knob and Value ignore, as sysfs's store() does (a handler that honours
// offsets states its size with a Getattrer, and is not direct-only).

// directSize is the size shown for a file the kernel never caches: a
// sysfs attribute's.
const directSize = 4096

// directOnly reports whether every open of e is read with
// FOPEN_DIRECT_IO, its size unknown to the kernel: content made per open
// that the page cache never serves (per caller, a stream, or on a mount
// that does not use it), on a connection that keeps OPEN. A handler with
// a backing file (handler.BackingFiler) is read from that file, whose size
// the kernel knows.
func (e *Entry) directOnly() bool {
	return e.kind == kindFile && !e.srv().opts.NoOpen && e.reader() != nil &&
		e.getattrer() == nil && e.backing() == nil && !e.pageCacheable()
}

// pageReads holds the READs in flight that fill pages (no
// FUSE_READ_LOCKOWNER), by their cancel channel: the one value that both
// the raw READ (countingFS.Read) and the node's Read (as
// fuse.Context.Cancel) see and that is unique to the request while it
// runs (as perop.go uses it for OPEN).
type pageReads struct {
	n  atomic.Int32 // entries in m: 0 spares every direct READ the lock
	mu sync.Mutex
	m  map[<-chan struct{}]struct{}
}

// start marks a READ; it returns false for a READ of fuse_direct_io, or
// one without a cancel channel (which is never refused).
func (p *pageReads) start(cancel <-chan struct{}, in *fuse.ReadIn) bool {
	if in.ReadFlags&fuse.READ_LOCKOWNER != 0 || cancel == nil {
		return false
	}
	p.mu.Lock()
	if p.m == nil {
		p.m = make(map[<-chan struct{}]struct{})
	}
	p.m[cancel] = struct{}{}
	p.mu.Unlock()
	p.n.Add(1)
	return true
}

func (p *pageReads) done(cancel <-chan struct{}) {
	p.n.Add(-1)
	p.mu.Lock()
	delete(p.m, cancel)
	p.mu.Unlock()
}

// fills reports whether the READ whose context is ctx fills pages.
func (p *pageReads) fills(ctx context.Context) bool {
	if p.n.Load() == 0 {
		return false
	}
	fc, ok := ctx.(*fuse.Context)
	if !ok || fc.Cancel == nil {
		return false
	}
	p.mu.Lock()
	_, found := p.m[fc.Cancel]
	p.mu.Unlock()
	return found
}
