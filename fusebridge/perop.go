package fusebridge

import (
	"context"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// This file serves content made per open (a Generated without a bound, a
// handler.PerCallerGenerated: every handler.OpenSnapshotter) with no READ
// request. Read with FOPEN_DIRECT_IO, an open+read-to-EOF+close costs OPEN,
// a READ with the content and one more READ only to learn EOF (the kernel
// cannot know the size of what is made at open), and the page cache cannot
// be used instead: it is one per inode, and one open's (one caller's)
// bytes must never reach another. So where passthrough is available, the
// snapshot the handler took at open is written to a memfd of its own,
// registered as a FUSE backing file, and the OPEN reply carries
// FOPEN_PASSTHROUGH with its ID: the kernel serves every read of that
// descriptor from the memfd, and open+read+close costs OPEN and the
// asynchronous RELEASE.
//
// The kernel's rule (fs/fuse/iomode.c, fuse_inode_uncached_io_start): the
// passthrough opens of one inode that are open at the same time must share
// one backing file, or the open(2) fails with EIO. go-fuse's own
// passthrough (fs.FilePassthroughFder) keeps one backing ID per node and
// hands it to every open while any uses it, which would give a later open
// an earlier one's bytes. So each node has one passthrough slot: the OPEN
// that finds it free takes it, an OPEN that finds it taken is answered as
// before (FOPEN_DIRECT_IO takes no part in the kernel's I/O modes), and the
// slot is freed by the RELEASE of the open that took it, once its backing
// ID is unregistered. The kernel drops an inode's backing file at the
// close(2) of its last passthrough open, before it sends that RELEASE, so
// a free slot here means none in the kernel.
//
// The layer sits between go-fuse's server and its bridge (inside
// restartFS), because the node's Open cannot set a backing ID without
// go-fuse's per-node sharing. The OPEN hands the slot to the node's Open
// through the request's cancel channel, which go-fuse passes both to the
// raw Open and, as fuse.Context.Cancel, to the node: it is the one value
// both see that is unique to the request while it runs (a handle number is
// only known once the bridge's Open has returned, and go-fuse offers no way
// from a handle number to the node's file handle).

// peropFS is the per-open passthrough layer of one connection.
type peropFS struct {
	fuse.RawFileSystem
	srv *Server

	mu sync.Mutex
	// slots maps a node ID to the open that holds its passthrough slot.
	slots map[uint64]*peropClaim
	// pending holds the claims of the OPENs in flight, by cancel channel.
	pending map[<-chan struct{}]*peropClaim
	// byFh maps the bridge's file handle to the claim it answered with.
	byFh map[uint64]*peropClaim
}

// peropClaim is one open's hold on its node's passthrough slot.
type peropClaim struct {
	node uint64
	// id is the backing ID of the memfd with the open's content, 0 until
	// the node's Open registers one (it may not: the file may not qualify).
	id int32
	// released is closed when the slot is freed (nil after); lingering
	// is set once an OPEN has waited slotWait for it in vain (p.mu).
	released  chan struct{}
	lingering bool
}

func (s *Server) wrapPerOpen(fs fuse.RawFileSystem) *peropFS {
	p := &peropFS{
		RawFileSystem: fs,
		srv:           s,
		slots:         map[uint64]*peropClaim{},
		pending:       map[<-chan struct{}]*peropClaim{},
		byFh:          map[uint64]*peropClaim{},
	}
	s.perop = p
	return p
}

// enabled reports whether content made per open is served by passthrough
// on this connection: the kernel grants passthrough (root, Linux >= 6.9,
// not PassthroughOff), Options.ForwardPerOpen is unset, and the connection
// was not adopted after a crash, when the kernel may still hold passthrough
// opens of the dead process that no table names (their inodes' backing
// files would make a new one fail with EIO).
func (p *peropFS) enabled() bool {
	s := p.srv
	return !s.opts.ForwardPerOpen && s.passthrough.Load() && (s.rs.rfs == nil || !s.rs.rfs.strict)
}

func (p *peropFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	c := p.claim(cancel, in)
	st := p.RawFileSystem.Open(cancel, in, out)
	if c == nil {
		return st
	}
	p.mu.Lock()
	delete(p.pending, cancel)
	if st == fuse.OK && c.id != 0 {
		p.byFh[out.Fh] = c
		p.mu.Unlock()
		out.BackingID = c.id
		out.OpenFlags = out.OpenFlags&^(fuse.FOPEN_DIRECT_IO|fuse.FOPEN_KEEP_CACHE) | fuse.FOPEN_PASSTHROUGH
		return st
	}
	p.freeLocked(c)
	p.mu.Unlock()
	if c.id != 0 {
		p.srv.backingFds().UnregisterBackingFd(c.id)
	}
	return st
}

// claim takes node's slot for a read-only OPEN; nil where the file stays
// forwarded. A replayed open (handover.go) has no cancel channel and never
// needs it: its handler takes its snapshot at the first read.
//
// A slot that is taken is most often held by an open already closed, whose
// RELEASE (sent asynchronously at close) is on its way: a loop of
// open+read+close sends each OPEN right after the RELEASE before it. So
// the OPEN waits for that RELEASE, up to slotWait; a holder still open
// after that is marked lingering (a reader that keeps its descriptor, as
// top does), and later OPENs are forwarded at once until it is released.
// The wait only decides which path serves the open, never what it reads.
func (p *peropFS) claim(cancel <-chan struct{}, in *fuse.OpenIn) *peropClaim {
	if cancel == nil || in.Flags&syscall.O_ACCMODE != syscall.O_RDONLY || !p.enabled() {
		return nil
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		p.mu.Lock()
		h := p.slots[in.NodeId]
		if h == nil {
			c := &peropClaim{node: in.NodeId, released: make(chan struct{})}
			p.slots[in.NodeId] = c
			p.pending[cancel] = c
			p.mu.Unlock()
			return c
		}
		if h.lingering {
			p.mu.Unlock()
			return nil
		}
		released := h.released
		p.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(slotWait)
		}
		select {
		case <-released:
		case <-timer.C:
			p.mu.Lock()
			h.lingering = true
			p.mu.Unlock()
			return nil
		}
	}
}

// slotWait is how long an OPEN waits for the RELEASE of the open that
// holds its node's passthrough slot: far more than a RELEASE takes to
// arrive after close(2), little beside what an open that then finds the
// holder still open costs once.
const slotWait = 2 * time.Millisecond

// freeLocked frees c's slot and wakes the OPENs waiting for it; p.mu held.
func (p *peropFS) freeLocked(c *peropClaim) {
	if p.slots[c.node] == c {
		delete(p.slots, c.node)
	}
	if c.released != nil {
		close(c.released)
		c.released = nil
	}
}

// serve is called by a node's Open with the content its handler made for
// this open: if the OPEN holds its node's slot, the content goes into a
// memfd registered as a backing file, and the reply will carry its ID.
// Anything failing leaves the open to FOPEN_DIRECT_IO, as before.
func (p *peropFS) serve(ctx context.Context, b []byte) {
	fc, ok := ctx.(*fuse.Context)
	if !ok || fc.Cancel == nil {
		return
	}
	p.mu.Lock()
	c := p.pending[fc.Cancel]
	p.mu.Unlock()
	if c == nil {
		return
	}
	fd, err := unix.MemfdCreate("ramproc-open", unix.MFD_CLOEXEC)
	if err != nil {
		return
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
			return
		}
		rest = rest[n:]
	}
	id, errno := p.srv.backingFds().RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
	if errno != 0 {
		return
	}
	c.id = id // read by Open after the bridge returns, on this goroutine
}

func (p *peropFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	// Taken before the bridge frees the handle number, which a
	// concurrent OPEN may then be given.
	p.mu.Lock()
	c := p.byFh[in.Fh]
	delete(p.byFh, in.Fh)
	p.mu.Unlock()
	p.RawFileSystem.Release(cancel, in)
	if c == nil {
		return
	}
	// An ID of an earlier process (inherit) was registered on the same
	// connection: it is closed here all the same.
	p.srv.backingFds().UnregisterBackingFd(c.id)
	p.mu.Lock()
	p.freeLocked(c)
	p.mu.Unlock()
}

// passthrough reports whether the bridge's handle fh was answered with a
// backing file of its own (for the restart tables, restartfs.go).
func (p *peropFS) passthrough(fh uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byFh[fh] != nil
}

// inherit takes node's slot for a descriptor an earlier process opened
// with backing ID id (handover.go's replay), which the kernel serves from
// that backing file until its close: fh is the bridge's handle for it here,
// whose RELEASE frees the slot; 0 (its handle could not be opened again)
// keeps the slot taken for the connection's life, and the kernel frees the
// ID at unmount.
func (p *peropFS) inherit(node, fh uint64, id int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Held by a descriptor opened before the restart: long-lived, most
	// likely, so OPENs do not wait for it.
	c := &peropClaim{node: node, id: id, released: make(chan struct{}), lingering: true}
	p.slots[node] = c
	if fh != 0 {
		p.byFh[fh] = c
	}
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
