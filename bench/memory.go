package bench

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// MemoryResult is what the memory workload measured on one target: the RAM
// spent to store Stored bytes in the file.
type MemoryResult struct {
	// Stored is the bytes written into the emptied file (less than asked
	// when the write deadline cut the run short).
	Stored int64 `json:"stored_bytes"`
	// WriteSeconds is how long writing them took, fsync included.
	WriteSeconds float64 `json:"write_s"`
	// CutShort is set when the deadline stopped the writing early.
	CutShort bool `json:"cut_short,omitempty"`
	// ShmemFilesDelta is the change of the RAM held by the target's
	// shmem files: for tmpfs the data file itself, for a server every
	// tmpfs or memfd file it holds open (ramproc's store), as
	// cachestat(2) counts their pages.
	ShmemFilesDelta int64 `json:"shmem_files_delta_bytes"`
	// ServerAnonDelta is the change of the server's RssAnon (its heap).
	ServerAnonDelta int64 `json:"server_anon_rss_delta_bytes"`
	// PageCacheDelta is the change of a FUSE data file's own page cache
	// (cachestat(2)): the kernel's copy of the server's data. It is 0 in
	// passthrough mode, where the page cache is the backing file's.
	PageCacheDelta int64 `json:"page_cache_delta_bytes"`
	// SystemShmemDelta is the change of Shmem in /proc/meminfo over the
	// same interval, system-wide: a cross-check of ShmemFilesDelta that
	// also sees shmem no file descriptor leads to, and whatever else the
	// machine did meanwhile. It is not part of PerByte.
	SystemShmemDelta int64 `json:"system_shmem_delta_bytes"`
	// PerByte = (ShmemFilesDelta + ServerAnonDelta + PageCacheDelta) / Stored.
	PerByte float64 `json:"ram_per_byte"`
}

// memoryRun empties t's data file, writes up to size bytes into it in 1 MiB
// pwrites (stopping at the deadline), fsyncs it and reports the RAM that
// the system spent on them.
func memoryRun(t *target, size int64, deadline time.Duration, buf []byte) (*MemoryResult, error) {
	fd, err := unix.Open(t.data, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", t.data, err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 0); err != nil {
		return nil, fmt.Errorf("truncate: %w", err)
	}
	if err := fsync(fd); err != nil {
		return nil, err
	}
	// Let the truncation's frees settle before the first reading.
	time.Sleep(100 * time.Millisecond)

	type reading struct{ sys, files, anon, cache int64 }
	read := func() (r reading, err error) {
		if r.sys, err = shmemBytes(); err != nil {
			return r, err
		}
		cache, shmem, err := fileCache(fd)
		if err != nil {
			return r, err
		}
		if shmem {
			r.files = cache // tmpfs: the file's pages are its RAM
		} else {
			r.cache = cache
		}
		if t.pid != 0 {
			if r.anon, err = anonRSS(t.pid); err != nil {
				return r, err
			}
			if r.files, err = serverShmemFiles(t.pid); err != nil {
				return r, err
			}
		}
		return r, nil
	}
	before, err := read()
	if err != nil {
		return nil, err
	}
	m := &MemoryResult{}
	start := time.Now()
	chunk := buf[:min(len(buf), maxBlock)]
	for m.Stored < size {
		if time.Since(start) >= deadline {
			m.CutShort = true
			break
		}
		b := chunk[:min(int64(len(chunk)), size-m.Stored)]
		n, err := unix.Pwrite(fd, b, m.Stored)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("write at %d: %w", m.Stored, err)
		}
		if n == 0 {
			return nil, fmt.Errorf("write at %d: 0 bytes written", m.Stored)
		}
		m.Stored += int64(n)
	}
	if err := fsync(fd); err != nil {
		return nil, err
	}
	m.WriteSeconds = time.Since(start).Seconds()
	after, err := read()
	if err != nil {
		return nil, err
	}
	m.SystemShmemDelta = after.sys - before.sys
	m.ShmemFilesDelta = after.files - before.files
	m.ServerAnonDelta = after.anon - before.anon
	m.PageCacheDelta = after.cache - before.cache
	if m.Stored == 0 {
		return nil, fmt.Errorf("nothing stored within %v", deadline)
	}
	m.PerByte = float64(m.ShmemFilesDelta+m.ServerAnonDelta+m.PageCacheDelta) / float64(m.Stored)
	return m, nil
}

// fsync flushes fd. A file system without fsync (go-fuse answers ENOTSUP
// for a node without Fsync, like MemRegularFile) has nothing to flush:
// its writes reached the server synchronously.
func fsync(fd int) error {
	err := unix.Fsync(fd)
	if err == unix.ENOTSUP || err == unix.ENOSYS {
		return nil
	}
	if err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	return nil
}
