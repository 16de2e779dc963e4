package handler

import (
	"context"
	"errors"
	"iter"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Stream is a read-only handler whose content is produced record by record
// while it is read, the seq_file of the handler API: the function writes
// records (lines of a table, usually) to w, and only as many are produced
// as the reads ask for, so a huge table never sits whole in memory. Memory
// per open file is one read's worth plus the largest record, whatever the
// content's size.
//
// The semantics are seq_file's (fs/seq_file.c):
//
//   - each open(2) has its own position in the generation: the function
//     starts at the first read and is suspended inside w.Write whenever
//     the read being served is full, until the next read;
//   - a read returns whole records: a record that does not fit in what is
//     left of the read waits for the next read, so a reader never sees one
//     cut at the end of a read(2), unless the record alone is larger than
//     the read, which then gets its first bytes and the next reads the rest;
//   - a read at an offset other than where the last one ended repositions,
//     as seq_lseek does: forwards by producing and dropping records up to
//     the offset, backwards by starting the function again from the
//     beginning (so content that changes between generations may differ
//     from what was read before, as with seq_file);
//   - an error returned by the function fails the read that reaches it
//     (after the records before it were delivered), and every later read
//     at that point; returning nil ends the file.
//
// The function's ctx carries the Caller of the open(2) (CallerOf works on
// it) and is cancelled when the file is released, when the generation is
// restarted, and when the read it is producing for is interrupted (the
// reader got a signal; the read fails with EINTR and the next read starts
// a new generation and skips to its offset, so an interrupted reader that
// retries sees nothing lost). w.Write then returns an error and the
// function should return; a function that waits for something should wait
// on ctx.Done() too, or a reader killed during the wait is stuck until it
// ends.
//
// Its size is unknown, so a Stream has no SnapshotSizer and must be served
// with direct I/O on a connection that sends OPEN (a connection that caches
// files reads no further than the size it knows). fusebridge routes every
// such handler there in every mount mode: on a NoOpenHandlers mount it stays
// on the main connection, on a NoOpen mount made by root a second
// connection that keeps OPEN serves it, and an unprivileged NoOpen mount,
// which has none, refuses it at Create with EINVAL.
type Stream func(ctx context.Context, w *RecordWriter) error

var (
	_ Opener   = Stream(nil)
	_ Reader   = Stream(nil)
	_ Releaser = Stream(nil)
)

// errStopped is what RecordWriter.Write returns once the open file is
// released or the generation restarted.
var errStopped = errors.New("handler: stream stopped")

// RecordWriter receives a Stream's records. Each call to Write is one
// record: it reaches a reader whole. It implements io.Writer and
// io.StringWriter, so fmt.Fprintf(w, ...) writes one record.
type RecordWriter struct {
	s *streamState
}

// Write emits p as one record. It returns len(p) and nil, or an error
// once the reader is gone (the file was released, or a seek backwards
// restarts the generation); the Stream function should then return. p may
// be reused as soon as Write returns.
func (w *RecordWriter) Write(p []byte) (int, error) {
	if err := w.s.record(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteString emits s as one record, like Write.
func (w *RecordWriter) WriteString(s string) (int, error) {
	// The conversion does not escape: record copies the bytes before
	// returning, so it costs no allocation.
	return w.Write([]byte(s))
}

// streamState is one open file's generation.
type streamState struct {
	gen    Stream
	caller *fuse.Caller // of the open(2), for the function's ctx

	mu sync.Mutex // one read at a time

	// The running generation (nil before the first read and after a
	// restart); next resumes it until it suspends, stop ends it.
	next   func() (struct{}, bool)
	stop   func()
	ctx    context.Context // the function's
	cancel context.CancelFunc
	yield  func(struct{}) bool
	done   bool  // the function returned
	err    error // what it returned

	// cancelMu guards a copy of cancel that Release calls without s.mu.
	cancelMu sync.Mutex
	cancelFn context.CancelFunc

	// interrupted is set (from the goroutine that watches the read's ctx)
	// when a read was interrupted while the function ran for it.
	interrupted atomic.Bool

	// pos is the stream offset of the next byte not yet delivered, which
	// is where pending (the unread tail of a record cut by a short read or
	// a seek) starts.
	pos     int64
	pending []byte

	// What the function is to do with its records until it is next
	// suspended: copy them into out[n:] (fill), or drop them up to
	// offset target (skip).
	skip    bool
	target  int64
	out     []byte
	n       int
	stopped bool
}

// Open prepares the file's own position; nothing is generated yet.
func (g Stream) Open(ctx context.Context, f *OpenFile) error {
	s := &streamState{gen: g}
	if c, ok := fuse.FromContext(ctx); ok && c != nil {
		cc := *c
		s.caller = &cc
	}
	f.Private = s
	return nil
}

// Read serves the records at off.
func (g Stream) Read(ctx context.Context, f *OpenFile, dst []byte, off int64) (int, error) {
	s, ok := f.Private.(*streamState)
	if !ok {
		// Opened without Open (a bridge that sends no OPEN): one state
		// per OpenFile all the same.
		if err := g.Open(ctx, f); err != nil {
			return 0, err
		}
		s = f.Private.(*streamState)
	}
	return s.read(ctx, dst, off)
}

// Release ends the generation and frees the file's buffers.
func (g Stream) Release(ctx context.Context, f *OpenFile) {
	if s, ok := f.Private.(*streamState); ok {
		// Cancel first, without s.mu: a read may hold it while the
		// function waits on its ctx.
		s.cancelGen()
		s.mu.Lock()
		s.end()
		s.pending = nil
		s.mu.Unlock()
	}
	f.Private = nil
}

func (s *streamState) read(ctx context.Context, dst []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off < 0 {
		return 0, nil
	}
	if off < s.pos || s.interrupted.Load() {
		// After an interrupt the generation was cancelled midway: start
		// again and skip to off.
		s.restart()
	}
	if off > s.pos {
		if err := s.skipTo(ctx, off); err != nil {
			return 0, err
		}
		if s.pos < off {
			return 0, nil // the content ends before off
		}
	}
	n := copy(dst, s.pending)
	s.pending = s.pending[n:]
	s.pos += int64(n)
	if len(s.pending) > 0 || n == len(dst) {
		return n, nil
	}
	s.pending = nil
	if s.done {
		if n == 0 {
			return 0, s.err
		}
		return n, nil
	}
	// Let the function fill the rest of dst with whole records.
	s.skip, s.out, s.n = false, dst, n
	s.resume(ctx)
	n = s.n
	s.out = nil
	if s.interrupted.Load() {
		// What the function placed in dst is dropped with the rest of
		// the generation: the next read restarts it and skips to its
		// offset, which the kernel did not advance.
		return 0, syscall.EINTR
	}
	if n == 0 && s.done {
		return 0, s.err
	}
	return n, nil
}

// skipTo drops records up to off; the tail of a record that straddles it
// is kept in pending.
func (s *streamState) skipTo(ctx context.Context, off int64) error {
	if len(s.pending) > 0 {
		if d := off - s.pos; d < int64(len(s.pending)) {
			s.pending = s.pending[d:]
			s.pos = off
			return nil
		}
		s.pos += int64(len(s.pending))
		s.pending = nil
	}
	if s.done {
		if s.pos < off {
			return s.err
		}
		return nil
	}
	s.skip, s.target = true, off
	s.resume(ctx)
	s.skip = false
	if s.interrupted.Load() {
		return syscall.EINTR
	}
	if s.pos < off && s.done {
		return s.err
	}
	return nil
}

// resume runs the function until it suspends or returns, starting it on
// the first call. If the read's ctx (readCtx) is cancelled meanwhile, the
// function's ctx is cancelled too and interrupted is set.
func (s *streamState) resume(readCtx context.Context) {
	if s.next == nil {
		s.begin()
	}
	var unwatch func() bool
	if readCtx.Done() != nil {
		cancel := s.cancel
		unwatch = context.AfterFunc(readCtx, func() {
			s.interrupted.Store(true)
			cancel()
		})
	}
	if _, ok := s.next(); !ok {
		s.done = true
	}
	if unwatch != nil {
		unwatch()
	}
}

func (s *streamState) begin() {
	ctx, cancel := context.WithCancel(context.Background())
	if s.caller != nil {
		ctx = fuse.NewContext(ctx, s.caller)
	}
	s.ctx, s.cancel = ctx, cancel
	s.cancelMu.Lock()
	s.cancelFn = cancel
	s.cancelMu.Unlock()
	s.stopped = false
	s.interrupted.Store(false)
	w := &RecordWriter{s: s}
	s.next, s.stop = iter.Pull(func(yield func(struct{}) bool) {
		s.yield = yield
		s.err = s.gen(ctx, w)
		if errors.Is(s.err, errStopped) || s.err == nil {
			s.err = nil
		}
	})
}

// end stops a running generation: a function suspended in Write gets
// errStopped and should return.
func (s *streamState) end() {
	if s.cancel != nil {
		s.cancel()
	}
	if s.stop != nil {
		s.stop()
	}
	s.next, s.stop, s.ctx, s.cancel, s.yield = nil, nil, nil, nil, nil
}

// cancelGen cancels the running generation's ctx; it needs no s.mu.
func (s *streamState) cancelGen() {
	s.cancelMu.Lock()
	if s.cancelFn != nil {
		s.cancelFn()
	}
	s.cancelMu.Unlock()
}

// restart goes back to offset 0 with a new generation.
func (s *streamState) restart() {
	s.end()
	s.pos, s.pending, s.done, s.err = 0, nil, false, nil
}

// suspend hands control back to the read; false means the generation is
// over (the file was released or restarted).
func (s *streamState) suspend() bool {
	if s.stopped || !s.yield(struct{}{}) {
		s.stopped = true
		return false
	}
	return true
}

// record runs inside the function: it places one record according to
// what the read being served wants.
func (s *streamState) record(p []byte) error {
	for {
		if s.stopped {
			return errStopped
		}
		if err := s.ctx.Err(); err != nil {
			// Interrupted or released: stop producing.
			return err
		}
		if s.skip {
			if end := s.pos + int64(len(p)); end <= s.target {
				s.pos = end
				return nil
			}
			// The record straddles the target: keep its tail.
			s.pending = append(s.pending[:0], p[s.target-s.pos:]...)
			s.pos = s.target
			s.skip = false
			if !s.suspend() {
				return errStopped
			}
			return nil
		}
		if s.out == nil {
			// Produced while no read is waiting: cannot happen, since the
			// function runs only inside resume, which sets out or skip.
			if !s.suspend() {
				return errStopped
			}
			continue
		}
		room := len(s.out) - s.n
		if len(p) <= room {
			s.n += copy(s.out[s.n:], p)
			s.pos += int64(len(p))
			if len(p) == room {
				// Full: suspend now rather than at the next record, so
				// the read returns without waiting for the function to
				// produce one more.
				s.out = nil
				if !s.suspend() {
					return errStopped
				}
			}
			return nil
		}
		if s.n > 0 {
			// It does not fit in what is left: it opens the next read.
			s.out = nil
			if !s.suspend() {
				return errStopped
			}
			continue
		}
		// A record larger than a whole read: its head now, the rest next.
		s.n = copy(s.out, p)
		s.pos += int64(s.n)
		s.pending = append(s.pending[:0], p[s.n:]...)
		s.out = nil
		if !s.suspend() {
			return errStopped
		}
		return nil
	}
}
