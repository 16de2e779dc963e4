// Package bytestore is the byte store of ramproc: where the RAM file's bytes
// live.
//
// The bytes live in kernel shared memory (shmem), the same code that backs
// tmpfs, so that holes, SEEK_DATA/SEEK_HOLE, fallocate, hole punching, block
// accounting and timestamps are tmpfs's own rather than an imitation of them.
// There are two backings:
//
//   - PrivateTmpfs: a file on a tmpfs instance that is created with the new
//     mount API and never attached to any directory. The kernel enforces the
//     capacity exactly as it does for a tmpfs mounted with size=. It needs
//     CAP_SYS_ADMIN (in the caller's user namespace).
//   - Memfd: a memfd, which needs no privilege but has no size limit, so the
//     store emulates a size-limited tmpfs in WriteAt and Fallocate.
//
// Every method returns raw syscall.Errno values so that callers can hand them
// to the kernel unchanged.
package bytestore

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kind selects the kernel object that holds the bytes.
type Kind int

const (
	// Auto uses PrivateTmpfs when the process may create a tmpfs and
	// falls back to Memfd otherwise, so that the best backing is chosen
	// without the caller having to know its privileges.
	Auto Kind = iota
	// PrivateTmpfs keeps the bytes in a file on a private, unattached
	// tmpfs instance: the kernel itself enforces Capacity, and the
	// descriptor may be used for FUSE passthrough.
	PrivateTmpfs
	// Memfd keeps the bytes in a memfd. It works without privileges; the
	// store emulates Capacity because a memfd has no size limit of its own.
	Memfd
)

// String names the kind as the command line and log messages spell it.
func (k Kind) String() string {
	switch k {
	case Auto:
		return "auto"
	case PrivateTmpfs:
		return "private-tmpfs"
	case Memfd:
		return "memfd"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Options configures New.
type Options struct {
	// Capacity is the most bytes of memory the file may occupy, with the
	// meaning of tmpfs's size= option: it is rounded up to whole pages and
	// counts allocated pages, not the file size. 0 means no limit.
	Capacity int64
	// Kind selects the backing; the zero value is Auto.
	Kind Kind
}

// closedBit marks Store.refs once Close has been called; the low bits count
// the calls in flight. It lets Close run concurrently with I/O without ever
// closing a descriptor that a call is still using (which could then be reused
// by an unrelated open and receive our writes).
const closedBit = 1 << 62

// Store is a RAM file whose bytes live in shmem. All methods are safe for
// concurrent use.
type Store struct {
	fd       int
	kind     Kind
	capacity int64

	// emulate is set when the store, not the kernel, must enforce the
	// capacity (a memfd with Capacity > 0).
	emulate bool
	// page is the kernel page size, the unit in which shmem allocates and
	// tmpfs accounts (PAGE_SIZE).
	page int64
	// capPages is the capacity in pages, rounded up as tmpfs rounds size=.
	capPages int64
	// initNS records whether the process lives in the initial user
	// namespace, where capable() is decided; the emulation of
	// file_remove_privs needs it.
	initNS bool

	refs      atomic.Int64
	closeOnce sync.Once
	closeErr  error

	// mu serialises every call that changes the allocation when
	// emulating, so that "enough pages are free" stays true between the
	// check and the write. Unused otherwise: the unlimited and
	// kernel-enforced paths are lock-free.
	mu sync.Mutex
	// falloc holds the pages that fallocate allocated (guarded by mu).
	// shmem leaves such pages !uptodate, and SEEK_DATA reports them as
	// holes, and pages beyond EOF are invisible to SEEK_DATA altogether,
	// yet both occupy memory and make a later write to them free.
	falloc pageSet
	// stale holds pages beyond EOF that tmpfs would have initialised but
	// the memfd has not (see passFallocated); guarded by mu.
	stale pageSet
	// mapFd is a second, read-only, O_NOATIME open of the memfd (or -1),
	// through which the emulation maps pages without touching atime.
	mapFd int
}

// New creates an empty store. With Kind Auto it tries PrivateTmpfs first and
// falls back to Memfd when that fails (normally for lack of CAP_SYS_ADMIN).
func New(opts Options) (*Store, error) {
	if opts.Capacity < 0 {
		return nil, fmt.Errorf("bytestore: negative capacity %d", opts.Capacity)
	}
	switch opts.Kind {
	case PrivateTmpfs:
		return newPrivateTmpfs(opts.Capacity)
	case Memfd:
		return newMemfd(opts.Capacity)
	case Auto:
		s, err := newPrivateTmpfs(opts.Capacity)
		if err == nil {
			return s, nil
		}
		s, err2 := newMemfd(opts.Capacity)
		if err2 != nil {
			return nil, fmt.Errorf("%v; fallback: %w", err, err2)
		}
		return s, nil
	}
	return nil, fmt.Errorf("bytestore: unknown kind %v", opts.Kind)
}

// newPrivateTmpfs creates a tmpfs instance that is never attached to any
// directory, creates one file in it and unlinks it: the open file keeps the
// superblock alive and nothing is visible in any mount namespace, yet the
// file is an ordinary tmpfs file with its size= limit enforced by the kernel.
func newPrivateTmpfs(capacity int64) (*Store, error) {
	fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("bytestore: private tmpfs: fsopen: %w", err)
	}
	defer unix.Close(fsfd)
	// size=0 is tmpfs for "no limit"; without the option tmpfs would
	// apply its default of half of RAM, which a memfd does not have.
	if err := unix.FsconfigSetString(fsfd, "size", strconv.FormatInt(capacity, 10)); err != nil {
		return nil, fmt.Errorf("bytestore: private tmpfs: fsconfig size=%d: %w", capacity, err)
	}
	if err := unix.FsconfigSetString(fsfd, "mode", "0700"); err != nil {
		return nil, fmt.Errorf("bytestore: private tmpfs: fsconfig mode: %w", err)
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return nil, fmt.Errorf("bytestore: private tmpfs: fsconfig create: %w", err)
	}
	mntfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return nil, fmt.Errorf("bytestore: private tmpfs: fsmount: %w", err)
	}
	defer unix.Close(mntfd)
	fd, err := unix.Openat(mntfd, "data", unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("bytestore: private tmpfs: create file: %w", err)
	}
	if err := unix.Unlinkat(mntfd, "data", 0); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bytestore: private tmpfs: unlink file: %w", err)
	}
	return newStore(fd, PrivateTmpfs, capacity)
}

// newMemfd creates a memfd. MFD_EXEC keeps chmod +x possible (the default
// may become MFD_NOEXEC_SEAL, which would make Chmod fail with EPERM); old
// kernels that do not know the flag reject it with EINVAL.
func newMemfd(capacity int64) (*Store, error) {
	fd, err := unix.MemfdCreate("ramproc", unix.MFD_CLOEXEC|unix.MFD_EXEC)
	if err == unix.EINVAL || err == unix.EACCES {
		// EINVAL: a kernel before 6.3; EACCES: vm.memfd_noexec=2
		// forbids executable memfds, so take what the system allows.
		fd, err = unix.MemfdCreate("ramproc", unix.MFD_CLOEXEC)
	}
	if err != nil {
		return nil, fmt.Errorf("bytestore: memfd_create: %w", err)
	}
	return newStore(fd, Memfd, capacity)
}

func newStore(fd int, kind Kind, capacity int64) (*Store, error) {
	// Both kinds start as a freshly created 0600 file, whatever the
	// umask or memfd's 0777 default.
	if err := unix.Fchmod(fd, 0o600); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bytestore: %v: fchmod: %w", kind, err)
	}
	return setupStore(fd, kind, capacity)
}

// setupStore makes the Store of fd, a new or an adopted (handover.go) file.
func setupStore(fd int, kind Kind, capacity int64) (*Store, error) {
	page := int64(unix.Getpagesize())
	s := &Store{
		fd:       fd,
		kind:     kind,
		capacity: capacity,
		page:     page,
		emulate:  kind == Memfd && capacity > 0,
		capPages: capacity/page + b2i(capacity%page != 0),
	}
	s.mapFd = -1
	if s.emulate {
		s.initNS = inInitialUserNS()
		// Reopening through /proc gives a new open file description
		// of the same memfd, so O_NOATIME does not affect s.fd.
		if mfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDONLY|unix.O_NOATIME|unix.O_CLOEXEC, 0); err == nil {
			s.mapFd = mfd
		}
	}
	return s, nil
}

// Kind reports which backing is in use (never Auto).
func (s *Store) Kind() Kind { return s.kind }

// Fd returns the backing descriptor, open O_RDWR, valid until Close. When
// KernelEnforced is false, writing or allocating through it bypasses the
// capacity emulation and must not be done.
func (s *Store) Fd() int { return s.fd }

// KernelEnforced reports whether the kernel itself enforces Capacity: true for
// PrivateTmpfs and whenever there is no capacity. Only then may the
// descriptor be given to the kernel for FUSE passthrough, whose writes the
// store never sees.
func (s *Store) KernelEnforced() bool { return !s.emulate }

// acquire registers a call that uses s.fd; it fails once Close has begun.
func (s *Store) acquire() bool {
	if s.refs.Add(1)&closedBit != 0 {
		s.release()
		return false
	}
	return true
}

// release ends a call registered by acquire; the last call to end after
// Close closes the descriptor.
func (s *Store) release() {
	if s.refs.Add(-1) == closedBit {
		s.closeFd()
	}
}

func (s *Store) closeFd() {
	s.closeOnce.Do(func() {
		if s.mapFd >= 0 {
			unix.Close(s.mapFd)
		}
		if err := unix.Close(s.fd); err != nil {
			s.closeErr = err
		}
	})
}

// Close frees the memory (once no other reference to the descriptor, such
// as a FUSE passthrough registration, remains). It is idempotent; calls that
// are in flight finish first, and later calls fail with EBADF.
func (s *Store) Close() error {
	old := s.refs.Or(closedBit)
	if old&closedBit != 0 {
		return nil
	}
	if old == 0 {
		s.closeFd()
		return s.closeErr
	}
	return nil
}

// ReadAt reads like pread(2): it may return fewer bytes than len(p), and
// (0, nil) at or past the end of the file. Unlike io.ReaderAt it reports the
// end of file as a short count, not io.EOF, because the count is what the
// kernel must see.
func (s *Store) ReadAt(p []byte, off int64) (int, error) {
	if !s.acquire() {
		return 0, unix.EBADF
	}
	n, err := unix.Pread(s.fd, p, off)
	s.release()
	return count(n, err)
}

// WriteAt writes like pwrite(2) on a tmpfs file, including short writes and
// ENOSPC when the capacity runs out, and EINVAL/EFBIG for offsets that tmpfs
// rejects.
func (s *Store) WriteAt(p []byte, off int64) (int, error) {
	if !s.acquire() {
		return 0, unix.EBADF
	}
	defer s.release()
	if s.emulate {
		return s.writeEmulated(p, off)
	}
	return count(unix.Pwrite(s.fd, p, off))
}

// Truncate sets the size like ftruncate(2). Like tmpfs, a size at or below
// the current one also frees pages that fallocate(KEEP_SIZE) placed beyond
// the end of the file.
func (s *Store) Truncate(size int64) error {
	if !s.acquire() {
		return unix.EBADF
	}
	defer s.release()
	if !s.emulate {
		return errnoOf(unix.Ftruncate(s.fd, size))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var st unix.Stat_t
	if err := unix.Fstat(s.fd, &st); err != nil {
		return errnoOf(err)
	}
	if err := unix.Ftruncate(s.fd, size); err != nil {
		return errnoOf(err)
	}
	if size <= st.Size {
		s.falloc.remove(ceilDiv(size, s.page), math.MaxInt64)
		s.stale.remove(ceilDiv(size, s.page), math.MaxInt64)
	} else {
		s.settle()
	}
	return nil
}

// Fallocate behaves like fallocate(2) on tmpfs: modes 0 and
// FALLOC_FL_KEEP_SIZE allocate, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE
// frees, everything else fails as shmem fails it (EOPNOTSUPP, EINVAL, ...).
// An allocation that does not fit the capacity fails with ENOSPC and changes
// nothing.
func (s *Store) Fallocate(mode uint32, off, length int64) error {
	if !s.acquire() {
		return unix.EBADF
	}
	defer s.release()
	if s.emulate {
		return s.fallocateEmulated(mode, off, length)
	}
	return errnoOf(unix.Fallocate(s.fd, mode, off, length))
}

// Seek answers lseek(2) with SEEK_DATA or SEEK_HOLE, computed by the kernel
// on the backing file (ENXIO at or after the end of the file). Other origins
// are EINVAL: the store has no file position, so they would mean nothing.
// The backing descriptor's position changes, but ReadAt and WriteAt use
// pread and pwrite, which do not use it, and FUSE passthrough opens its own
// file.
func (s *Store) Seek(off int64, whence int) (int64, error) {
	if whence != unix.SEEK_DATA && whence != unix.SEEK_HOLE {
		return 0, unix.EINVAL
	}
	if !s.acquire() {
		return 0, unix.EBADF
	}
	r, err := unix.Seek(s.fd, off, whence)
	s.release()
	if err != nil {
		return 0, errnoOf(err)
	}
	return r, nil
}

// Stat returns the backing file's attributes (size, blocks, mode, times).
func (s *Store) Stat() (unix.Stat_t, error) {
	var st unix.Stat_t
	if !s.acquire() {
		return st, unix.EBADF
	}
	err := unix.Fstat(s.fd, &st)
	s.release()
	return st, errnoOf(err)
}

// Chmod sets the permission bits like fchmod(2), so that the mode, and the
// setuid/setgid stripping that writes do, follow tmpfs.
func (s *Store) Chmod(mode uint32) error {
	if !s.acquire() {
		return unix.EBADF
	}
	err := unix.Fchmod(s.fd, mode)
	s.release()
	return errnoOf(err)
}

// SetTimes sets the access and modification times like futimens(2); a nil
// time is left unchanged (UTIME_OMIT). The change time becomes the current
// time, as the kernel does it.
func (s *Store) SetTimes(atime, mtime *time.Time) error {
	ts := [2]unix.Timespec{timespec(atime), timespec(mtime)}
	if !s.acquire() {
		return unix.EBADF
	}
	err := futimens(s.fd, &ts)
	s.release()
	return errnoOf(err)
}

func timespec(t *time.Time) unix.Timespec {
	if t == nil {
		return unix.Timespec{Nsec: unix.UTIME_OMIT}
	}
	// Not UnixNano: it overflows outside 1678..2262.
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

// futimens is utimensat(fd, NULL, ts, 0), which x/sys/unix does not wrap.
func futimens(fd int, ts *[2]unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(ts)), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// count normalises a read/write result: the raw syscall reports -1 on error,
// but a count must never be negative.
func count(n int, err error) (int, error) {
	if err != nil {
		return 0, errnoOf(err)
	}
	return n, nil
}

// errnoOf returns err as a syscall.Errno whenever it carries one, so callers
// can pass it to the kernel; x/sys/unix already returns Errno values.
func errnoOf(err error) error {
	if err == nil {
		return nil
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return err
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// ceilDiv is ⌈x/d⌉ for x ≥ 0 without the overflow of (x+d-1)/d near MaxInt64.
func ceilDiv(x, d int64) int64 {
	if x <= 0 {
		return 0
	}
	return x/d + b2i(x%d != 0)
}
