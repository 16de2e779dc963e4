package bytestore

import (
	"bytes"
	"math"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// This file emulates, on a memfd, a tmpfs mounted with size=: the kernel
// would enforce the limit for us on a real tmpfs, but a memfd lives on the
// kernel's internal shm mount, which has none.
//
// tmpfs counts allocated pages (i_blocks, shared by the superblock). A write
// allocates, page by page and in order, the pages of its range that hold no
// memory yet, and stops at the first page it cannot allocate: the result is a
// short write ending where that page begins, or ENOSPC when it is the first
// page. fallocate allocates the pages its range covers, fails with ENOSPC up
// front when the range alone exceeds the capacity, and undoes its own
// allocations when it runs out midway, so a failed fallocate changes neither
// the size, the blocks nor the times (only which earlier-fallocated pages
// SEEK_DATA calls data: see passFallocated). Hole punching and truncation
// free pages; truncating to the current size or less also frees the pages
// fallocate(KEEP_SIZE) put beyond EOF. All of this was checked against a
// real tmpfs by the tests of this package.

// maxRW is MAX_RW_COUNT: the kernel silently shortens longer reads and
// writes to this, so the emulation must count pages for this much only.
func (s *Store) maxRW() int64 { return int64(math.MaxInt32) &^ (s.page - 1) }

// writeEmulated is WriteAt for a memfd with a capacity. Requests that the
// kernel rejects before allocating anything (negative offset, offset+length
// overflowing, empty writes) go to the kernel unchanged so that the errno is
// the kernel's own.
func (s *Store) writeEmulated(p []byte, off int64) (int, error) {
	n := int64(len(p))
	if off < 0 || n == 0 || off > math.MaxInt64-n {
		return count(unix.Pwrite(s.fd, p, off))
	}
	n = min(n, s.maxRW())

	s.mu.Lock()
	defer s.mu.Unlock()
	allowed, err := s.writable(off, n)
	if err != nil {
		return 0, err
	}
	if allowed == 0 {
		return 0, s.failWrite(p, off)
	}
	n2, err := count(unix.Pwrite(s.fd, p[:allowed], off))
	s.settle()
	return n2, err
}

// writable reports how many bytes of a write of n bytes at off tmpfs would
// accept: all of them, or up to the start of the first page that the
// capacity cannot pay for.
func (s *Store) writable(off, n int64) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(s.fd, &st); err != nil {
		return 0, errnoOf(err)
	}
	first := off / s.page
	end := (off+n-1)/s.page + 1
	free := s.freePages(&st)
	if end-first <= free {
		// Even if every page were new it would fit: the common case
		// needs no walk over the file's pages.
		return n, nil
	}
	stop, err := s.firstUnaffordable(first, end, free, st.Size)
	if err != nil {
		return 0, err
	}
	if stop >= end {
		return n, nil
	}
	if stop == first {
		return 0, nil
	}
	return min(stop*s.page-off, n), nil
}

// failWrite answers a write that cannot allocate even its first page. tmpfs
// does the write's preparation before it allocates: generic_write_checks
// (RLIMIT_FSIZE: EFBIG), then file_remove_privs and file_update_time, so an
// ENOSPC write still strips setuid/setgid and updates mtime and ctime.
func (s *Store) failWrite(p []byte, off int64) error {
	if beyondFsizeLimit(off, true) {
		// The kernel fails this write with EFBIG (and SIGXFSZ) before
		// it looks for memory; let it do exactly that.
		return errnoOf(errOnly(unix.Pwrite(s.fd, p, off)))
	}
	if err := s.removePrivs(); err != nil {
		return err
	}
	now := [2]unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_NOW}}
	if err := futimens(s.fd, &now); err != nil {
		return errnoOf(err)
	}
	return unix.ENOSPC
}

func errOnly(_ int, err error) error { return err }

// beyondFsizeLimit reports whether RLIMIT_FSIZE forbids a write at pos
// (atPos: pos >= limit, as generic_write_checks tests) or growing the file
// to pos (pos > limit, as inode_newsize_ok tests). The kernel checks the
// limit before it allocates, so where the limit applies the emulation leaves
// the answer (EFBIG, with SIGXFSZ) to the kernel.
func beyondFsizeLimit(pos int64, atPos bool) bool {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_FSIZE, &rl) != nil || rl.Cur == unix.RLIM_INFINITY {
		return false
	}
	if atPos {
		return uint64(pos) >= rl.Cur
	}
	return uint64(pos) > rl.Cur
}

// removePrivs does what file_remove_privs does before a write: setuid is
// dropped, and setgid when group-execute is set or the writer is not in the
// file's group, unless the writer has CAP_FSETID (see
// setattr_should_drop_suidgid in fs/attr.c).
func (s *Store) removePrivs() error {
	var st unix.Stat_t
	if err := unix.Fstat(s.fd, &st); err != nil {
		return errnoOf(err)
	}
	mode := st.Mode
	if mode&unix.S_IFMT != unix.S_IFREG {
		return nil
	}
	var kill uint32
	if mode&unix.S_ISUID != 0 {
		kill |= unix.S_ISUID
	}
	if mode&unix.S_ISGID != 0 && (mode&unix.S_IXGRP != 0 || !inGroupOrCapable(st.Gid)) {
		kill |= unix.S_ISGID
	}
	// capable() asks about the initial user namespace.
	if kill == 0 || (s.initNS && hasCapFsetid()) {
		return nil
	}
	return errnoOf(unix.Fchmod(s.fd, mode&0o7777&^kill))
}

// hasCapFsetid reports whether the calling thread has CAP_FSETID in its
// effective set. Capabilities are per thread, and the kernel checks the
// thread that makes the write, which is this one.
func hasCapFsetid() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if unix.Capget(&hdr, &data[0]) != nil {
		return false
	}
	return data[0].Effective&(1<<unix.CAP_FSETID) != 0
}

// inGroupOrCapable mirrors in_group_or_capable: the writer is in the file's
// group, or has CAP_FSETID over it.
func inGroupOrCapable(gid uint32) bool {
	if uint32(unix.Getegid()) == gid {
		return true
	}
	if groups, err := unix.Getgroups(); err == nil {
		for _, g := range groups {
			if uint32(g) == gid {
				return true
			}
		}
	}
	return hasCapFsetid()
}

// inInitialUserNS reports whether the process runs in the initial user
// namespace, whose uid_map is the identity over all 2^32-1 ids.
func inInitialUserNS() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return true // no /proc: assume the common case
	}
	return bytes.Equal(bytes.Join(bytes.Fields(b), []byte(" ")), []byte("0 0 4294967295"))
}

// fallocateEmulated is Fallocate for a memfd with a capacity.
func (s *Store) fallocateEmulated(mode uint32, off, length int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	valid := off >= 0 && length > 0 && off <= math.MaxInt64-length
	switch {
	case !valid:
		// EINVAL or EFBIG, from the kernel, before any allocation.
		return errnoOf(unix.Fallocate(s.fd, mode, off, length))

	case mode == 0 || mode == unix.FALLOC_FL_KEEP_SIZE:
		first, end := off/s.page, ceilDiv(off+length, s.page)
		stop, err := s.fallocateStop(first, end)
		if err != nil {
			return err
		}
		if stop < end && !beyondFsizeLimit(off+length, false) {
			s.passFallocated(first, stop)
			return unix.ENOSPC
		}
		if err := unix.Fallocate(s.fd, mode, off, length); err != nil {
			return errnoOf(err)
		}
		s.falloc.add(first, end)
		s.settle()
		return nil

	case mode == unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE:
		if err := unix.Fallocate(s.fd, mode, off, length); err != nil {
			return errnoOf(err)
		}
		// shmem frees the pages wholly inside the range and only
		// zeroes the partial ones at its ends.
		s.falloc.remove(ceilDiv(off, s.page), (off+length)/s.page)
		s.stale.remove(ceilDiv(off, s.page), (off+length)/s.page)
		return nil
	}
	// Modes shmem does not support: the kernel says which errno.
	return errnoOf(unix.Fallocate(s.fd, mode, off, length))
}

// fallocateStop returns the page at which tmpfs's fallocate of the pages
// [first, end) would run out of space, or end when it would not. A range
// larger than the whole capacity fails up front, before any page (first).
func (s *Store) fallocateStop(first, end int64) (int64, error) {
	if end-first > s.capPages {
		return first, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(s.fd, &st); err != nil {
		return 0, errnoOf(err)
	}
	free := s.freePages(&st)
	if end-first <= free {
		return end, nil
	}
	return s.firstUnaffordable(first, end, free, st.Size)
}

// passFallocated reproduces the one lasting effect of a tmpfs fallocate that
// ran out of space at page to: it undoes the pages it allocated, but the
// pages that an earlier fallocate had allocated, and that it went through
// on its way, are now initialised ("uptodate"), and SEEK_DATA reports them as
// data instead of holes. Below EOF the store initialises them by faulting
// them in through a mapping, which changes no timestamp (a fallocate would
// change mtime and ctime, which the failed one does not); beyond EOF they
// cannot be mapped, so they are remembered in stale until EOF passes them.
// This is best effort: a failure only affects SEEK_DATA's view.
func (s *Store) passFallocated(from, to int64) {
	var st unix.Stat_t
	if unix.Fstat(s.fd, &st) != nil {
		return
	}
	eof := ceilDiv(st.Size, s.page)
	for p := from; p < to; {
		lo, hi, ok := s.falloc.next(p)
		if !ok || lo >= to {
			return
		}
		hi = min(hi, to)
		if lo < eof {
			s.populate(lo, min(hi, eof))
		}
		if hi > eof {
			s.stale.add(max(lo, eof), hi)
		}
		p = hi
	}
}

// settle initialises the stale pages that EOF has moved past, after an
// operation that may have grown the file. Best effort, like passFallocated.
func (s *Store) settle() {
	if len(s.stale.runs) == 0 {
		return
	}
	var st unix.Stat_t
	if unix.Fstat(s.fd, &st) != nil {
		return
	}
	eof := ceilDiv(st.Size, s.page)
	for {
		lo, hi, ok := s.stale.next(0)
		if !ok || lo >= eof {
			return
		}
		hi = min(hi, eof)
		s.populate(lo, hi)
		s.stale.remove(lo, hi)
	}
}

// populate faults the present pages [lo, hi), all below EOF, into a
// read-only shared mapping, which initialises fallocated pages as a second
// fallocate would, without allocating or changing any timestamp (the
// mapping goes through an O_NOATIME descriptor).
func (s *Store) populate(lo, hi int64) {
	fd := s.mapFd
	if fd < 0 {
		fd = s.fd
	}
	b, err := unix.Mmap(fd, lo*s.page, int((hi-lo)*s.page), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return
	}
	defer unix.Munmap(b)
	if unix.Madvise(b, unix.MADV_POPULATE_READ) == nil {
		return
	}
	// Before Linux 5.14: touch every page.
	var sum byte
	for i := 0; i < len(b); i += int(s.page) {
		sum += b[i]
	}
	runtime.KeepAlive(sum)
}

// freePages is the number of pages the capacity still allows.
func (s *Store) freePages(st *unix.Stat_t) int64 {
	used := st.Blocks / (s.page / 512)
	return max(s.capPages-used, 0)
}

// firstUnaffordable walks the pages [from, to) in order, paying one page of
// budget for each page that holds no memory, and returns the first page it
// cannot pay for, or to when all are paid. The walk visits runs of pages,
// not single pages, and ends after at most budget+1 runs of empty pages.
func (s *Store) firstUnaffordable(from, to, budget, size int64) (int64, error) {
	eof := ceilDiv(size, s.page)
	p := from
	for p < to {
		q, err := s.nextPresent(p, to, eof)
		if err != nil {
			return 0, err
		}
		if q-p > budget {
			return p + budget, nil
		}
		budget -= q - p
		if q >= to {
			return to, nil
		}
		if p, err = s.presentEnd(q, to, eof); err != nil {
			return 0, err
		}
	}
	return to, nil
}

// nextPresent returns the first page in [p, to) that holds memory, or to.
// A page holds memory when SEEK_DATA sees it (a written page below EOF) or
// when fallocate allocated it (SEEK_DATA cannot see those).
func (s *Store) nextPresent(p, to, eof int64) (int64, error) {
	best := to
	if lo, _, ok := s.falloc.next(p); ok && lo < best {
		best = lo
	}
	if lim := min(best, eof); p < lim {
		d, err := s.nextDataPage(p, lim)
		if err != nil {
			return 0, err
		}
		best = min(best, d)
	}
	return best, nil
}

// presentEnd returns the first page at or after the present page q that holds
// no memory, or to.
func (s *Store) presentEnd(q, to, eof int64) (int64, error) {
	for q < to {
		r := q
		if lo, hi, ok := s.falloc.next(q); ok && lo <= q {
			r = hi
		}
		if q < eof {
			e, err := s.dataEnd(q)
			if err != nil {
				return 0, err
			}
			r = max(r, e)
		}
		if r == q {
			return q, nil
		}
		q = r
	}
	return to, nil
}

// lastPage is the index of the page that ends at 2^63. The kernel's
// mapping_seek_hole_data overflows on it: SEEK_DATA never reports it and
// SEEK_HOLE in a data run that reaches it returns -2^63 instead of an offset,
// so it needs its own probe.
func (s *Store) lastPage() int64 { return math.MaxInt64 / s.page }

// nextDataPage returns the first page in [p, lim) that SEEK_DATA counts as
// data, or lim. p must be below EOF.
func (s *Store) nextDataPage(p, lim int64) (int64, error) {
	d, err := unix.Seek(s.fd, p*s.page, unix.SEEK_DATA)
	switch {
	case err == nil && d >= 0:
		return min(d/s.page, lim), nil
	case err != nil && err != unix.ENXIO:
		return 0, errnoOf(err)
	}
	if last := s.lastPage(); p <= last && last < lim {
		if e, err := s.dataEnd(last); err != nil {
			return 0, err
		} else if e > last {
			return last, nil
		}
	}
	return lim, nil
}

// dataEnd returns the first page at or after q that SEEK_HOLE calls a hole
// (q itself when q is a hole). q must be below EOF. A hole at EOF that is
// not page-aligned begins inside the last, partially used page, which holds
// memory, hence the rounding up.
func (s *Store) dataEnd(q int64) (int64, error) {
	h, err := unix.Seek(s.fd, q*s.page, unix.SEEK_HOLE)
	if err != nil {
		return 0, errnoOf(err)
	}
	if h < 0 {
		return s.lastPage() + 1, nil // the overflow described at lastPage
	}
	return ceilDiv(h, s.page), nil
}
