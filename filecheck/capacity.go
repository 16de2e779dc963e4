package filecheck

// capacity/mmap-beyond: writes, fallocate and stores through a shared
// mapping beyond the file's capacity, against a tmpfs mounted with the same
// size= (Config.OracleSize).
//
// write(2) and fallocate(2) beyond the capacity must give what tmpfs gives.
// Stores through a mapping differ: tmpfs stops a program that stores into
// a page that does not fit with SIGBUS at the fault, so the lowest pages
// win; a file whose server hears of the page only at its writeback (FUSE
// without passthrough) cannot, and which pages fit then depends on the
// order in which the kernel writes them back, which nobody controls. So
// the check requires what holds whatever that order: the writer is told
// (SIGBUS, or ENOSPC from msync(2)), the file never holds more than its
// capacity (st_blocks, and the pages read(2) returns after
// POSIX_FADV_DONTNEED), no page holds bytes that were never stored in it,
// and pages written with write(2) and fsync'd before the stores are all
// still there. Which of the stored pages are kept is not compared.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
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
		b := mapByte(off / page)
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

	// Stores through a mapping of twice the capacity, after pages that
	// write(2) placed and fsync acknowledged: those must survive whatever
	// the stores do.
	ack := mapPages(int(min(ackPages, capacity/pg/2)))
	p.ftruncate(h, 2*capacity)
	p.pwrite(h, ack, 0)
	p.fsync(h)
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
	p.do("fstat: st_size twice the capacity, st_blocks within it?", func(s *side) outcome {
		var st unix.Stat_t
		if err := unix.Fstat(s.fd(h), &st); err != nil {
			return errOut(err)
		}
		if st.Blocks*512 > capacity {
			return outcome{hideN: true, info: fmt.Sprintf("st_size %d, st_blocks %d: more than the capacity (%d blocks)", st.Size, st.Blocks, capacity/512)}
		}
		return outcome{hideN: true, info: fmt.Sprintf("st_size %d, st_blocks within the capacity", st.Size)}
	})
	// A fresh read may still see pages the kernel cached from failed
	// writeback for a moment (the server drops them after replying); after
	// POSIX_FADV_DONTNEED it shows what the file holds.
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
			info, err := storedSummary(fd, 2*capacity, len(ack)/pg, dontneed)
			if err != nil {
				return errOut(err)
			}
			return outcome{hideN: true, info: info}
		})
	}
	freshRead("open(PATH, O_RDONLY), read the whole file: every page what was stored in it or zeros?", false)
	freshRead("open(PATH, O_RDONLY), posix_fadvise(POSIX_FADV_DONTNEED), read the whole file: within the capacity, the fsync'd pages kept?", true)
	p.ftruncate(h, 0)
}

// ackPages is how many pages capacity/mmap-beyond writes with write(2) and
// fsyncs before its stores through the mapping (at most half the capacity).
const ackPages = 16

// mapPages is the first n pages as mapFill stores them: one byte at the
// start of each page, zeros after it.
func mapPages(n int) []byte {
	const pg = 4096
	b := make([]byte, n*pg)
	for i := range n {
		b[i*pg] = mapByte(i)
	}
	return b
}

// mapByte is the byte mapFill stores at the start of page i.
func mapByte(i int) byte { return byte(i%251 + 1) }

// storedSummary reads fd, a file of size bytes that mapFill stored into
// after the first ack pages were written and fsync'd, and says whether it
// holds what it may, whatever the order of the writeback: every page is
// what was stored in it or zeros, and (strict) at most capacity's worth of
// pages hold data and the first ack pages all do. It reads in constant
// memory (capacities may be large).
func storedSummary(fd int, size int64, ack int, strict bool) (string, error) {
	const pg = 4096
	buf := make([]byte, 1<<20)
	var off, stored int64
	var bad []string
	lost := 0
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return "", err
		}
		if n == 0 {
			break
		}
		for i := 0; i < n; i += pg {
			page := (off + int64(i)) / pg
			b := buf[i:min(i+pg, n)]
			rest := bytes.Count(b[1:], []byte{0}) == len(b)-1
			switch {
			case b[0] == 0 && rest:
				if page < int64(ack) {
					lost++
				}
			case b[0] == mapByte(int(page)) && rest:
				stored++
			default:
				if len(bad) < 4 {
					bad = append(bad, strconv.FormatInt(page, 10))
				}
			}
		}
		off += int64(n)
	}
	switch {
	case off != size:
		return fmt.Sprintf("%d bytes, want %d", off, size), nil
	case len(bad) > 0:
		return "pages holding bytes never stored there: " + strings.Join(bad, ","), nil
	case !strict:
		return "every page what was stored in it or zeros", nil
	case stored*pg > size/2:
		return fmt.Sprintf("%d pages with data: more than the capacity (%d)", stored, size/2/pg), nil
	case lost > 0:
		return fmt.Sprintf("%d of the %d pages written and fsync'd before the stores are lost", lost, ack), nil
	}
	return "within the capacity, every page what was stored in it or zeros, the fsync'd pages kept", nil
}
