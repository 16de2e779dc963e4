package handler

import (
	"context"
	"runtime/debug"
	"sync"
	"time"
	"unsafe"
)

// Generated is a read-only handler whose content is produced by a function,
// the way most /proc files are made with seq_file's single_open: the
// function runs once per open(2), and every read(2) through that descriptor
// sees the same snapshot, so a reader that reads in small pieces never sees
// a torn mix of two generations. As with seq_file, a descriptor that has
// read and then reads from offset 0 again (lseek(fd, 0, SEEK_SET), or
// pread at 0: the sysfs and procfs habit of re-reading after a change)
// gets a fresh snapshot. Where the kernel caches the content across opens
// (a no-open connection: OpenFile.Caching is set there) a snapshot is
// served until it is older than the file's freshness bound (see MaxAge),
// or until Entry.Invalidate or Entry.Notify. Where the bridge gives a
// descriptor's snapshot to the kernel's page cache at open
// (OpenSnapshotter; fusebridge does for the only open of a file), a
// re-read to the end gets a new snapshot once the one it read is
// fusebridge.DefaultMaxAge old or after Entry.Notify (unless the new one is
// shorter than the longest given to the cache), and a reader that reads
// in pieces for longer than that may get pieces of two;
// with fusebridge.Options.PerOpenPassthrough a re-read from offset 0 sees
// the same snapshot.
//
// The snapshot lives until the descriptor is closed; Release then drops it
// and, for a large one, gives its memory back to the operating system (see
// Release). For content too large to hold whole, use a Stream.
type Generated func(ctx context.Context) ([]byte, error)

var (
	_ Opener          = Generated(nil)
	_ Reader          = Generated(nil)
	_ Releaser        = Generated(nil)
	_ SnapshotSizer   = Generated(nil)
	_ OpenSnapshotter = Generated(nil)
)

// Open takes the snapshot; for a reopened descriptor (OpenFile.Reopened)
// the first read takes it, for the reading caller.
func (g Generated) Open(ctx context.Context, f *OpenFile) error {
	if f.Reopened {
		f.Private = &snapshot{stale: true}
		return nil
	}
	b, err := g(ctx)
	if err != nil {
		return err
	}
	f.Private = newSnapshot(b)
	return nil
}

// Read serves the snapshot; a read from offset 0 after an earlier read
// takes a new one.
func (g Generated) Read(ctx context.Context, f *OpenFile, dst []byte, off int64) (int, error) {
	return readSnapshot(ctx, f, dst, off, g)
}

// SnapshotSize is the length of the snapshot taken by Open.
func (g Generated) SnapshotSize(f *OpenFile) int64 { return snapshotSize(f) }

// OpenSnapshot returns the snapshot Open took (see OpenSnapshotter).
func (g Generated) OpenSnapshot(f *OpenFile) ([]byte, bool) { return openSnapshot(f) }

// Release drops the snapshot. For a snapshot of BigSnapshot bytes or more
// it also has the Go runtime return the freed memory to the operating
// system (see releaseSnapshot for why it would not by itself).
func (g Generated) Release(ctx context.Context, f *OpenFile) { releaseSnapshot(f) }

// MaxAge returns g with a freshness bound: its content is never read older
// than d (plus the moment one regeneration takes). The bridge then serves it
// from the kernel's page cache, at the speed of a cached file, and
// regenerates it at the first read after d has passed (so an idle file
// costs nothing and a busy one one run of g per d); Entry.Notify
// regenerates it at once. d = 0 is g itself: generated per open.
//
// A read(2) sees one version of the content when the whole file fits in
// what that read returns (cat, and every /proc-style reader, read 128 KiB
// or more at a time); a reader that reads a larger file in pieces may get
// the pieces of two versions, when a piece is read after the bound of the
// version the earlier ones came from has passed.
//
// See fusebridge's package documentation for the layout that serves it:
// a second, no-open connection, which needs root, for files published in
// static directories; elsewhere (an unprivileged mount, a child of a
// dynamic directory) a bounded file is generated per open, which is within
// any bound.
func (g Generated) MaxAge(d time.Duration) Bounded {
	return Bounded{Generated: g, Age: d}
}

// Bounded is a Generated file with a freshness bound, made by
// Generated.MaxAge: the kernel may serve a snapshot of it for at most Age.
type Bounded struct {
	Generated
	Age time.Duration
}

// AgeBound is implemented by handlers whose content may be served from a
// cache for at most a bounded time: the bridge regenerates it once
// FreshFor has passed since it was made. A zero or negative duration asks
// for content made per open.
type AgeBound interface {
	FreshFor() time.Duration
}

var _ AgeBound = Bounded{}

// FreshFor is the bound given to MaxAge.
func (b Bounded) FreshFor() time.Duration { return b.Age }

// Value is a small writable knob, the /sys attribute of the handler API:
// reading it shows the current value, and each write(2) replaces the whole
// value (as `echo 42 > knob` expects; the offset is ignored, like a sysfs
// store). Set, if not nil, validates and applies a new value; an error
// rejects the write and leaves the value unchanged.
//
// Value implements SourceChanger: a write through one path raises the
// kernel's own events there, and the bridges of the other paths that
// publish it are told (from another goroutine, shortly after the write is
// answered). For typed values (numbers, booleans,
// words) prefer a Knob, which parses and validates for you.
//
// A Value (and a Knob) needs no freshness bound: it changes only by a write
// through the mount or by its Go-side setter, and both drop every cache of
// it, so a reader never sees an older value than the current one.
type Value struct {
	mu  sync.Mutex
	val []byte
	// Set is called with each written value before it is stored.
	Set func(ctx context.Context, v []byte) error

	notifiers
}

var (
	_ Opener        = (*Value)(nil)
	_ Reader        = (*Value)(nil)
	_ Writer        = (*Value)(nil)
	_ SnapshotSizer = (*Value)(nil)
	_ Releaser      = (*Value)(nil)
	_ SourceChanger = (*Value)(nil)
)

// NewValue returns a knob holding initial.
func NewValue(initial string) *Value { return &Value{val: []byte(initial)} }

// Get returns the current value.
func (v *Value) Get() []byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]byte(nil), v.val...)
}

// Open snapshots the value for readers.
func (v *Value) Open(ctx context.Context, f *OpenFile) error {
	f.Private = newSnapshot(v.Get())
	return nil
}

// SnapshotSize is the length of the snapshot taken by Open.
func (v *Value) SnapshotSize(f *OpenFile) int64 { return snapshotSize(f) }

// Release drops the snapshot taken at open.
func (v *Value) Release(ctx context.Context, f *OpenFile) { releaseSnapshot(f) }

// Read serves the snapshot taken at open; a read from offset 0 after an
// earlier read shows the current value, as a sysfs attribute does.
func (v *Value) Read(ctx context.Context, f *OpenFile, dst []byte, off int64) (int, error) {
	return readSnapshot(ctx, f, dst, off, func(context.Context) ([]byte, error) { return v.Get(), nil })
}

// Write replaces the value with src.
func (v *Value) Write(ctx context.Context, f *OpenFile, src []byte, off int64) (int, error) {
	nv := append([]byte(nil), src...)
	if v.Set != nil {
		if err := v.Set(ctx, nv); err != nil {
			return 0, err
		}
	}
	v.mu.Lock()
	v.val = nv
	v.mu.Unlock()
	// Only other paths that publish it, on their own goroutine: see
	// Knob.OnChange.
	v.notifyWrite(ctx)
	return len(src), nil
}

// snapshot is what the snapshot handlers (Generated, PerCallerGenerated,
// Value, Knob) keep in OpenFile.Private: the content taken at open, and
// whether a read has returned part of it since.
//
// The content is kept as a pointer and a length, not a slice: without the
// slice's capacity a snapshot is 32 bytes, not 48, and a bounded file of a
// large tree keeps one for as long as the kernel caches it (issue 14's
// footprint per file).
type snapshot struct {
	mu     sync.Mutex // reads through one descriptor may run concurrently
	p      *byte
	n      int
	served bool
	stale  bool // none taken yet (OpenFile.Reopened): the next read takes it
}

// newSnapshot is a snapshot of b.
func newSnapshot(b []byte) *snapshot { return &snapshot{p: unsafe.SliceData(b), n: len(b)} }

// bytes is the content; under s.mu.
func (s *snapshot) bytes() []byte { return unsafe.Slice(s.p, s.n) }

// set replaces the content by b; under s.mu.
func (s *snapshot) set(b []byte) { s.p, s.n = unsafe.SliceData(b), len(b) }

// readSnapshot copies the part of the snapshot in f.Private that starts at
// off. A read from offset 0 after a read that returned bytes first replaces
// the snapshot with regen's, as seq_file regenerates when a reader goes
// back to the start, unless the kernel caches the content (f.Caching, set
// on a no-open connection, where the bridge's size and the kernel's pages
// must stay those of one snapshot until it is invalidated). A reopened
// descriptor's first read takes the snapshot, whatever its offset.
func readSnapshot(ctx context.Context, f *OpenFile, dst []byte, off int64, regen func(context.Context) ([]byte, error)) (int, error) {
	s, _ := f.Private.(*snapshot)
	if s == nil || off < 0 {
		return 0, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stale || (off == 0 && s.served && !f.Caching) {
		b, err := regen(ctx)
		if err != nil {
			return 0, err
		}
		s.set(b)
		s.served, s.stale = false, false
	}
	if off >= int64(s.n) {
		return 0, nil
	}
	n := copy(dst, s.bytes()[off:])
	s.served = n > 0
	return n, nil
}

// BigSnapshot is the size from which releasing a snapshot (Generated,
// Value) returns memory to the operating system at once.
const BigSnapshot = 4 << 20

// releaseSnapshot drops the snapshot in f.Private and, for a big one,
// schedules a return of free memory to the OS.
//
// Why: measured with one 64 MiB Generated file, the server's RSS rose to
// 276 MB (the generating function's append had left ~190 MiB of heap, the
// final slice and its smaller predecessors) and stayed there after the
// close. Nothing frees that by itself soon: the garbage is collected only
// when the program next allocates enough to start a GC cycle (an idle
// server may not for two minutes, the forced-GC period), and even after a
// GC the runtime's background scavenger returns the freed pages to the OS
// a few MB per second, keeping up to the heap goal (twice the peak). So
// Release forgets the snapshot and, past BigSnapshot bytes, runs
// debug.FreeOSMemory: one GC plus an immediate return of every free page.
// It runs on its own goroutine so close(2) does not wait for it, and
// requests that arrive while one runs are folded into one more run, so a
// burst of big releases costs at most two GCs.
func releaseSnapshot(f *OpenFile) {
	s, _ := f.Private.(*snapshot)
	f.Private = nil
	if s == nil {
		return
	}
	s.mu.Lock()
	big := s.n >= BigSnapshot
	s.set(nil)
	s.mu.Unlock()
	if big {
		scavenge()
	}
}

var scavenger struct {
	mu      sync.Mutex
	running bool
	again   bool
}

// scavenge starts debug.FreeOSMemory on a goroutine, or asks the one that
// is running for one more pass.
func scavenge() {
	s := &scavenger
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		s.again = true
		return
	}
	s.running = true
	go func() {
		for {
			debug.FreeOSMemory()
			s.mu.Lock()
			if !s.again {
				s.running = false
				s.mu.Unlock()
				return
			}
			s.again = false
			s.mu.Unlock()
		}
	}()
}

// openSnapshot is the snapshot in f.Private, if Open took one.
func openSnapshot(f *OpenFile) ([]byte, bool) {
	s, _ := f.Private.(*snapshot)
	if s == nil {
		return nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stale || s.served {
		return nil, false
	}
	return s.bytes(), true
}

func snapshotSize(f *OpenFile) int64 {
	s, _ := f.Private.(*snapshot)
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(s.n)
}
