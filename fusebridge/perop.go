package fusebridge

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// This file serves content made per open (a Generated without a freshness
// bound: a handler.OpenSnapshotter) with no READ request, where
// Options.PerOpenPassthrough asks for it. Read with FOPEN_DIRECT_IO, an
// open+read-to-EOF+close costs OPEN, a READ with the content and one more
// READ only to learn EOF (the kernel cannot know the size of what is made
// at open); the page cache cannot be used instead, as it is one per inode
// and each open has its own snapshot. So the snapshot the handler took at
// open is written to a memfd of its own, registered as a FUSE backing
// file, and the OPEN reply carries FOPEN_PASSTHROUGH with its ID: the
// kernel serves every read of that descriptor from the memfd, and
// open+read+close costs OPEN and the asynchronous RELEASE.
//
// The kernel's rules (fs/fuse/iomode.c, fuse_file_io_open and
// fuse_inode_uncached_io_start), each broken by an open(2) failing with
// EIO: while any descriptor of an inode is open in passthrough mode, every
// new open of it must be in passthrough mode too, with the same backing
// file. FOPEN_PASSTHROUGH with FOPEN_DIRECT_IO sends read(2) and write(2) to
// the server all the same, but mmap(2) maps the backing file. So an inode
// has at most one backing file at a time, a claim here: the open that
// makes it (the holder) is read from it; every open of the entry made
// while the claim lives joins it and is answered FOPEN_PASSTHROUGH |
// FOPEN_DIRECT_IO with its ID (read through the server, as before); the
// claim ends, and its ID is unregistered, at the RELEASE of the last open
// answered with it, when the kernel has dropped it from the inode (at the
// close(2) of its last passthrough descriptor, before that RELEASE).
// A claim made by an open that did not get a backing file (registering
// failed) lives the same way, without an ID: its OPEN reply could reach
// the kernel after another's FOPEN_PASSTHROUGH did. A file that takes
// writes gets no claim (see open).
//
// go-fuse's own passthrough (fs.FilePassthroughFder) keeps one backing ID
// per node and hands it to every open while any uses it, which would give
// an open another's bytes; so this layer sits between go-fuse's server and
// its bridge (inside restartFS and the counters). The node's Open decides, and hands its
// decision to the layer through the request's cancel channel, which
// go-fuse passes both to the raw Open and, as fuse.Context.Cancel, to the
// node: the one value both see that is unique to the request while it
// runs (the handle number is known only once the bridge has returned, and
// go-fuse offers no way from it to the node's file handle).
//
// What a reader sees differently from a forwarded open: the descriptor
// reads the snapshot of its open until it is closed, also from offset 0
// again (no new snapshot, as seq_file would take) and after Entry.Remove
// (no EIO); fstat(2) and lseek(SEEK_END) show 4096 as before (splice.go); mmap(2),
// which failed or faulted before, maps the snapshot (for a joining
// descriptor, the holder's: another moment's content of the same file,
// which is why per-caller files are never served this way).

// peropFS is the per-open passthrough layer of one connection.
type peropFS struct {
	fuse.RawFileSystem
	srv *Server

	mu sync.Mutex
	// claims maps an entry to the claim on its inode's backing file.
	claims map[*Entry]*ptClaim
	// pending holds the node's decisions for the OPENs in flight, by
	// cancel channel (nil for handover.go's replay, which is sequential).
	pending map[<-chan struct{}]ptOpen
	// byFh maps the bridge's file handle to the claim it was answered with.
	byFh map[uint64]*ptClaim
	// used is set once an OPEN has made or joined a claim: until then
	// (always, without the option and without inherited claims) OPEN and
	// RELEASE pass through without taking mu.
	used atomic.Bool
	// inheriting is the backing ID of the descriptor handover.go's replay
	// is opening again, 0 for none (written before the mount is served).
	inheriting int32
}

// ptClaim is the backing file of an entry's inode (see above).
type ptClaim struct {
	e *Entry
	// id is the backing ID; 0 for a claim whose opens are forwarded.
	id int32
	// refs counts the opens answered with the claim and not yet released.
	refs int
	// decided is set once the holder's registration is done; ready is
	// closed then.
	decided bool
	ready   chan struct{}
	// released is closed when refs reach 0. lingering is set once an OPEN
	// has waited slotWait for it in vain.
	released  chan struct{}
	lingering bool
}

// ptOpen is a node's decision for one OPEN.
type ptOpen struct {
	c      *ptClaim
	holder bool
}

func (s *Server) wrapPerOpen(fs fuse.RawFileSystem) *peropFS {
	p := &peropFS{
		RawFileSystem: fs,
		srv:           s,
		claims:        map[*Entry]*ptClaim{},
		pending:       map[<-chan struct{}]ptOpen{},
		byFh:          map[uint64]*ptClaim{},
	}
	s.perop = p
	return p
}

// enabled reports whether content made per open is served by passthrough
// on this connection: asked for, and the kernel grants passthrough (root,
// Linux >= 6.9, not PassthroughOff); not on a connection adopted after a
// crash, whose inodes may hold backing files of the dead process that no
// table names.
func (p *peropFS) enabled() bool {
	s := p.srv
	return s.opts.PerOpenPassthrough && s.passthrough.Load() && (s.rs.rfs == nil || !s.rs.rfs.strict)
}

// mayClaim reports whether an open on this connection can ever make or
// join a claim: with the option, or on a restartable mount, whose
// descriptors opened before a restart may hold one. Without, open below
// returns at once and the layer need not see the connection's requests.
func (p *peropFS) mayClaim() bool {
	return p.srv.opts.PerOpenPassthrough || p.srv.opts.Restartable
}

// slotWait is how long a read-only OPEN waits for the claim on its inode to
// end, so that it can make its own: a loop of open+read+close sends each
// OPEN right after the RELEASE of the open before (asynchronous, at
// close), and concurrent readers take turns. A claim that outlives the
// wait is marked lingering (a reader that keeps its descriptor, as top
// does), and later OPENs join it at once. The wait only decides which path
// serves an open, never what it reads.
const slotWait = 2 * time.Millisecond

// open is called by the node's Open of an entry with a handler.
// OpenSnapshotter (not per-caller), once it cannot fail any more: it makes
// or joins the claim on the entry's inode and leaves the decision for Open
// below.
func (p *peropFS) open(ctx context.Context, e *Entry, of *openFile) {
	fc, ok := ctx.(*fuse.Context)
	if !ok {
		return
	}
	cancel := fc.Cancel
	inherited := int32(0)
	if cancel == nil {
		if inherited = p.inheriting; inherited == 0 {
			return
		}
	}
	// Without the option (a restart may change it) only the claims of
	// descriptors opened before are joined, as the kernel requires. Nor
	// for a file that takes writes: an open for writing would have to
	// join the claim, and mmap(2) of its descriptor maps the backing file
	// shared and writable (the kernel maps it for the FUSE file, past any
	// seal on the memfd: Linux 6.18), so it could change the bytes the
	// read-only descriptors read as their snapshot.
	create := inherited != 0 || (p.enabled() && e.writer() == nil)
	if !create && !p.used.Load() {
		return // no claim to join
	}
	readOnly := !of.f.Writable() && inherited == 0 && create
	var snap []byte
	snapOK := false
	if readOnly {
		snap, snapOK = e.snapshotter().OpenSnapshot(&of.f)
	}
	var timer *time.Timer
	waited := false // once: a claim made meanwhile is joined
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	p.mu.Lock()
	for {
		c := p.claims[e]
		if c == nil && !create {
			p.mu.Unlock()
			return
		}
		if c == nil {
			c = &ptClaim{e: e, refs: 1, id: inherited, decided: inherited != 0,
				ready: make(chan struct{}), released: make(chan struct{})}
			// Held by a descriptor opened before a restart: most likely
			// long-lived, so OPENs do not wait for it.
			c.lingering = inherited != 0
			if c.decided {
				close(c.ready)
			}
			p.claims[e] = c
			p.used.Store(true)
			p.pending[cancel] = ptOpen{c: c, holder: !c.decided}
			p.mu.Unlock()
			if !c.decided {
				id := int32(0)
				if snapOK {
					id = p.register(snap)
				}
				p.mu.Lock()
				c.id, c.decided = id, true
				close(c.ready)
				p.mu.Unlock()
			}
			return
		}
		if !c.decided {
			ready := c.ready
			p.mu.Unlock()
			<-ready // the holder's registration: a few system calls
			p.mu.Lock()
			continue
		}
		if readOnly && !c.lingering && !waited {
			released := c.released
			p.mu.Unlock()
			if timer == nil {
				timer = time.NewTimer(slotWait)
			}
			select {
			case <-released:
			case <-timer.C:
				waited = true
				p.mu.Lock()
				c.lingering = true
				p.mu.Unlock()
			}
			p.mu.Lock()
			continue
		}
		c.refs++
		p.used.Store(true)
		p.pending[cancel] = ptOpen{c: c}
		p.mu.Unlock()
		return
	}
}

// register puts b in a memfd and registers it as a backing file; 0 if
// anything fails (the open is then forwarded, as without passthrough).
// The memfd is not sealed: every open answered with it is read-only (open
// above makes no claim on a file that takes writes), and a seal would not
// hold against a passthrough descriptor's mmap(2) anyway.
func (p *peropFS) register(b []byte) int32 {
	fd, err := unix.MemfdCreate("ramproc-open", unix.MFD_CLOEXEC)
	if err != nil {
		return 0
	}
	// The kernel's backing file holds its own reference to the memfd:
	// this process keeps no descriptor per open.
	defer unix.Close(fd)
	for rest := b; len(rest) > 0; {
		n, err := unix.Write(fd, rest)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			return 0
		}
		rest = rest[n:]
	}
	id, errno := p.srv.backingFds().RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
	if errno != 0 {
		return 0
	}
	return id
}

func (p *peropFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	st := p.RawFileSystem.Open(cancel, in, out)
	if !p.used.Load() {
		return st // set by the node's Open above if it made or joined a claim
	}
	p.mu.Lock()
	po, ok := p.pending[cancel]
	if !ok {
		p.mu.Unlock()
		return st
	}
	delete(p.pending, cancel)
	if st != fuse.OK {
		p.mu.Unlock()
		p.drop(po.c)
		return st
	}
	p.byFh[out.Fh] = po.c
	p.mu.Unlock()
	if id := po.c.id; id != 0 {
		out.BackingID = id
		fl := out.OpenFlags&^fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_PASSTHROUGH
		if po.holder {
			fl &^= fuse.FOPEN_DIRECT_IO
		} else {
			fl |= fuse.FOPEN_DIRECT_IO
		}
		out.OpenFlags = fl
	}
	return st
}

func (p *peropFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	if !p.used.Load() {
		p.RawFileSystem.Release(cancel, in)
		return
	}
	// Taken before the bridge frees the handle number, which a
	// concurrent OPEN may then be given.
	p.mu.Lock()
	c := p.byFh[in.Fh]
	delete(p.byFh, in.Fh)
	p.mu.Unlock()
	p.RawFileSystem.Release(cancel, in)
	if c != nil {
		p.drop(c)
	}
}

// drop ends one open's part in c; the last one unregisters c's backing ID
// (an ID of an earlier process too: it was registered on this connection)
// and frees the entry for a new claim.
func (p *peropFS) drop(c *ptClaim) {
	p.mu.Lock()
	c.refs--
	last := c.refs == 0
	if last {
		if p.claims[c.e] == c {
			delete(p.claims, c.e)
		}
		close(c.released)
	}
	p.mu.Unlock()
	if last && c.id != 0 {
		p.srv.backingFds().UnregisterBackingFd(c.id)
	}
}

// passthrough reports whether the bridge's handle fh was answered with a
// backing file of this layer's (for the restart tables, restartfs.go).
func (p *peropFS) passthrough(fh uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.byFh[fh]
	return c != nil && c.id != 0
}

// backingRegistrar registers and unregisters passthrough backing files.
type backingRegistrar interface {
	RegisterBackingFd(m *fuse.BackingMap) (int32, syscall.Errno)
	UnregisterBackingFd(id int32) syscall.Errno
}

// backingFds is the connection's registrar: its /dev/fuse descriptor where
// the server keeps one (a restartable mount, which may not have its
// fuse.Server yet while it adopts a connection), else go-fuse's server.
func (s *Server) backingFds() backingRegistrar {
	if s.rs.devFd >= 0 {
		return adoptCallbacks{fd: s.rs.devFd}
	}
	return s.fuse
}
