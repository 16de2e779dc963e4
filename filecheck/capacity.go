package filecheck

// capacity/mmap-beyond: writes, fallocate and stores through a shared
// mapping beyond the file's capacity, against a tmpfs mounted with the same
// size= (Config.OracleSize).
//
// tmpfs stops a program that stores through a mapping into a page that does
// not fit with SIGBUS at the fault. A file whose server hears of the page
// only at writeback (FUSE without passthrough) cannot; it must then fail
// msync(2) instead. The check counts either as the writer being told, and
// then requires what matters to readers: read(2) through a fresh descriptor,
// st_blocks, and read(2) again after POSIX_FADV_DONTNEED return exactly what
// tmpfs holds.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

func skipCapacity(r *runner) string {
	if r.cfg.OracleSize <= 0 {
		return "needs --oracle-size SIZE, the file's capacity (e.g. the -max-size of ramproc mount), to compare with a tmpfs of that size"
	}
	if os.Geteuid() != 0 {
		return "needs root to mount a private tmpfs with size= for the oracle (run ramproc check as root)"
	}
	return ""
}

// mapFill, in the child: map Len bytes of Path shared, store one byte in
// every page in ascending order until a fault, then msync. N is the number
// of pages stored before a fault.
func mapFill(req request) response {
	fd, err := unix.Open(req.Path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return response{N: -1, Errno: errnoOf(err), Msg: "open"}
	}
	defer unix.Close(fd)
	m, err := unix.Mmap(fd, 0, int(req.Len), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return response{N: -1, Errno: errnoOf(err), Msg: "mmap"}
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	var stored int64
	for off := 0; off < len(m); off += page {
		b := byte(off/page%251 + 1)
		if f := guard(func() { m[off] = b }); f != "" {
			return response{N: stored, Fault: f}
		}
		stored++
	}
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		return response{N: stored, Errno: errnoOf(err), Msg: "msync"}
	}
	return response{N: stored}
}

func runCapacity(r *runner, c *check) Result {
	dir, err := os.MkdirTemp("", "filecheck-capacity-")
	if err != nil {
		return Result{Status: Fail, Reason: err.Error()}
	}
	defer os.Remove(dir)
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", r.cfg.OracleSize)); err != nil {
		return Result{Status: Fail, Reason: fmt.Sprintf("cannot mount a tmpfs with size=%d for the oracle: %v", r.cfg.OracleSize, err)}
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	oracle := filepath.Join(dir, "oracle")
	if err := os.WriteFile(oracle, nil, 0o600); err != nil {
		return Result{Status: Fail, Reason: err.Error()}
	}
	if err := os.Chmod(oracle, os.FileMode(r.targetMode&0o777)); err != nil {
		return Result{Status: Fail, Reason: err.Error()}
	}
	p, err := r.newPairPaths(c.name, oracle)
	if err != nil {
		return Result{Status: Fail, Reason: err.Error()}
	}
	defer p.release()
	return p.exec(capacitySteps)
}

func capacitySteps(p *pair) {
	const pg = 4096
	// tmpfs rounds size= up to whole pages.
	capacity := (p.r.cfg.OracleSize + pg - 1) / pg * pg
	h := p.open(rdwr, 0)
	// write(2): a short write up to the last page that fits, then ENOSPC.
	p.pwrite(h, pattern(int(capacity)+2*pg, 1), 0)
	p.pwrite(h, []byte("more"), capacity+pg)
	p.fallocate(h, 0, 0, 2*capacity)
	p.fstat(h, stSize|stBlocks)
	p.ftruncate(h, 0)
	p.fstat(h, stSize|stBlocks)

	// Stores through a mapping of twice the capacity.
	p.ftruncate(h, 2*capacity)
	w := p.child()
	p.do("mmap(2*capacity, MAP_SHARED), store a byte in each page, msync: is the writer told that the second half does not fit?", func(s *side) outcome {
		resp, err := w.call(request{Op: "mapfill", Path: s.path, Len: 2 * capacity}, p.r.cfg.CommandTimeout)
		if err != nil {
			p.failf("child process: %v", err)
		}
		switch {
		case resp.Fault != "" && resp.N == capacity/pg:
			return outcome{hideN: true, info: "told (SIGBUS at the first page beyond the capacity, or msync ENOSPC)"}
		case resp.Fault == "" && resp.Msg == "msync" && unix.Errno(resp.Errno) == unix.ENOSPC:
			return outcome{hideN: true, info: "told (SIGBUS at the first page beyond the capacity, or msync ENOSPC)"}
		case resp.Fault != "":
			return outcome{hideN: true, info: fmt.Sprintf("%s after %d pages", resp.Fault, resp.N)}
		case resp.Errno != 0:
			return outcome{hideN: true, info: fmt.Sprintf("%s: %s", resp.Msg, errnoName(unix.Errno(resp.Errno)))}
		}
		return outcome{hideN: true, info: fmt.Sprintf("not told: all %d pages stored, msync succeeded", resp.N)}
	})
	p.fstat(h, stSize|stBlocks)
	freshRead := func(what string, dontneed bool) {
		p.do(what, func(s *side) outcome {
			fd, err := unix.Open(s.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return errOut(err)
			}
			defer unix.Close(fd)
			if dontneed {
				unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
			}
			info, err := digest(fd)
			if err != nil {
				return errOut(err)
			}
			return outcome{hideN: true, info: info}
		})
	}
	freshRead("open(PATH, O_RDONLY), read the whole file", false)
	freshRead("open(PATH, O_RDONLY), posix_fadvise(POSIX_FADV_DONTNEED), read the whole file", true)
	p.fstat(h, stSize|stBlocks)
	p.ftruncate(h, 0)
}

// digest reads fd to the end and describes what it read in constant memory
// (capacities may be large): the length, which pages hold anything but
// zeros, as runs, and a SHA-256 of the bytes.
func digest(fd int) (string, error) {
	const pg = 4096
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var off int64
	var runs []string
	start := int64(-1)
	flush := func(end int64) {
		if start >= 0 {
			runs = append(runs, fmt.Sprintf("%d-%d", start, end-1))
			start = -1
		}
	}
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return "", err
		}
		if n == 0 {
			break
		}
		h.Write(buf[:n])
		for i := 0; i < n; i += pg {
			page := (off + int64(i)) / pg
			zero := bytes.Count(buf[i:min(i+pg, n)], []byte{0}) == min(pg, n-i)
			if !zero && start < 0 {
				start = page
			} else if zero {
				flush(page)
			}
		}
		off += int64(n)
	}
	flush((off + pg - 1) / pg)
	if len(runs) > 8 {
		runs = append(runs[:8], "...")
	}
	if len(runs) == 0 {
		runs = []string{"none"}
	}
	return fmt.Sprintf("%d bytes, pages with data %s, sha256 %x", off, strings.Join(runs, ","), h.Sum(nil)[:8]), nil
}
