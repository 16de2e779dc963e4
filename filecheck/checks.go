package filecheck

import (
	"fmt"
	"math"
	"os"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// allChecks lists every check in the order Run runs them. seed/reload runs
// last because it stops and restarts the file's server.
func allChecks() []*check {
	return []*check{
		{name: "seed/open-options", fn: seedOpenOptions},
		{name: "seed/read-write", fn: seedReadWrite},
		{name: "seed/write-seek-read", fn: seedWriteSeekRead},
		{name: "seed/write-seek-overwrite", fn: seedWriteSeekOverwrite},
		{name: "seed/concurrent-writes", fn: seedConcurrentWrites},
		{name: "semantics/open-trunc", fn: semOpenTrunc},
		{name: "semantics/open-append", fn: semOpenAppend},
		{name: "semantics/open-creat", fn: semOpenCreat},
		{name: "semantics/open-excl", fn: semOpenExcl},
		{name: "semantics/access-mode", fn: semAccessMode},
		{name: "semantics/pread-pwrite", fn: semPreadPwrite},
		{name: "semantics/hole", fn: semHole},
		{name: "semantics/seek", fn: semSeek},
		{name: "semantics/seek-hole", fn: semSeekHole},
		{name: "semantics/ftruncate", fn: semFtruncate},
		{name: "semantics/fallocate", fn: semFallocate},
		{name: "semantics/fstat", fn: semFstat},
		{name: "semantics/times", fn: semTimes},
		{name: "semantics/fsync", fn: semFsync},
		{name: "semantics/mmap", fn: semMmap},
		{name: "semantics/edge-offsets", fn: semEdgeOffsets},
		{name: "semantics/edge-lengths", fn: semEdgeLengths},
		{name: "semantics/o-direct", fn: semODirect},
		{name: "semantics/o-sync", fn: semOSync},
		{name: "semantics/splice-read", fn: semSpliceRead},
		{name: "random", run: runRandom},
		{name: "concurrency/append", fn: concAppend},
		{name: "concurrency/pwrite", fn: concPwrite},
		{name: "permissions/setid-clearing", fn: permSetid, skip: skipNotRoot},
		{name: "capacity/mmap-beyond", run: runCapacity, skip: skipCapacity},
		{name: "seed/reload", run: runReload, skip: skipReload},
	}
}

// pattern is n printable bytes that depend on seed, so that a byte in the
// wrong place shows.
func pattern(n int, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte((i+seed*7+i/26*3)%26)
	}
	if n > 0 {
		b[0] = 'A' + byte(seed%26)
	}
	return b
}

const (
	rdonly = unix.O_RDONLY
	wronly = unix.O_WRONLY
	rdwr   = unix.O_RDWR
)

// ---- The seed's six checks (the sixth, seed/reload, is in reload.go).

// seedOpenOptions is the seed's by-hand session (echo >, echo >>, cat) and
// opening without O_TRUNC, which must not truncate.
func seedOpenOptions(p *pair) {
	h := p.open(wronly|unix.O_CREAT|unix.O_TRUNC, 0o644)
	p.write(h, []byte("abcd\n"))
	p.close(h)
	p.contents()
	h = p.open(wronly|unix.O_CREAT|unix.O_TRUNC, 0o644)
	p.write(h, []byte("defg\n"))
	p.close(h)
	p.contents()
	h = p.open(wronly|unix.O_CREAT|unix.O_APPEND, 0o644)
	p.write(h, []byte("abcd\n"))
	p.close(h)
	p.contents()
	h = p.open(rdonly, 0)
	p.read(h, 100)
	p.read(h, 100)
	p.close(h)
	h = p.open(rdwr, 0)
	p.write(h, []byte("XY"))
	p.close(h)
	p.contents()
	h = p.open(wronly, 0)
	p.write(h, []byte("Z"))
	p.close(h)
	p.contents()
}

// seedReadWrite writes in pieces and reads back in other pieces.
func seedReadWrite(p *pair) {
	w := p.open(wronly, 0)
	r := p.open(rdonly, 0)
	for i, n := range []int{1, 100, 4096, 5000, 70000} {
		p.write(w, pattern(n, i))
	}
	p.pos(w)
	for _, n := range []int{10, 4096, 65536, 100000, 10} {
		p.read(r, n)
	}
	p.pos(r)
	p.contents()
}

func seedWriteSeekRead(p *pair) {
	h := p.open(rdwr, 0)
	p.write(h, pattern(1000, 1))
	p.lseek(h, 100, unix.SEEK_SET)
	p.read(h, 50)
	p.lseek(h, 100, unix.SEEK_CUR)
	p.read(h, 50)
	p.lseek(h, -50, unix.SEEK_END)
	p.read(h, 100)
	p.lseek(h, -1000, unix.SEEK_CUR)
	p.read(h, 1000)
	p.lseek(h, 0, unix.SEEK_SET)
	p.read(h, 5000)
	p.pos(h)
}

func seedWriteSeekOverwrite(p *pair) {
	h := p.open(rdwr, 0)
	p.write(h, pattern(1000, 1))
	p.lseek(h, 100, unix.SEEK_SET)
	p.write(h, []byte("OVERWRITE!"))
	p.pos(h)
	p.contents()
	p.lseek(h, 0, unix.SEEK_SET)
	p.write(h, []byte("START"))
	p.contents()
	p.lseek(h, -5, unix.SEEK_END)
	p.write(h, []byte("0123456789"))
	p.contents()
	p.lseek(h, 500, unix.SEEK_SET)
	p.write(h, pattern(4000, 2)) // overwrites the tail and extends
	p.contents()
}

// seedConcurrentWrites has goroutines, each with its own descriptor, write
// disjoint ranges at the same time, then reads the file.
func seedConcurrentWrites(p *pair) {
	const writers, stride, chunk = 8, 10000, 1000
	p.do(fmt.Sprintf("%d goroutines, each open(O_WRONLY), lseek to i*%d and %d write(%d)", writers, stride, stride/chunk, chunk), func(s *side) outcome {
		var wg sync.WaitGroup
		errs := make([]string, writers)
		for i := 0; i < writers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				fd, err := unix.Open(s.path, wronly|unix.O_CLOEXEC, 0)
				if err != nil {
					errs[i] = "open: " + err.Error()
					return
				}
				defer unix.Close(fd)
				if _, err := unix.Seek(fd, int64(i*stride), unix.SEEK_SET); err != nil {
					errs[i] = "lseek: " + err.Error()
					return
				}
				data := pattern(stride, i)
				for off := 0; off < stride; off += chunk {
					n, err := unix.Write(fd, data[off:off+chunk])
					if err != nil || n != chunk {
						errs[i] = fmt.Sprintf("write at %d: %d, %v", i*stride+off, n, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		var bad []string
		for i, e := range errs {
			if e != "" {
				bad = append(bad, fmt.Sprintf("writer %d: %s", i, e))
			}
		}
		if len(bad) > 0 {
			return outcome{n: -1, info: fmt.Sprint(bad)}
		}
		return outcome{hideN: true, info: "all writes complete"}
	})
	p.contents()
}

// ---- Regular-file semantics.

func semOpenTrunc(p *pair) {
	h := p.open(rdwr, 0)
	p.write(h, pattern(5000, 1))
	p.close(h)
	h = p.open(rdwr|unix.O_TRUNC, 0)
	p.fstat(h, stSize)
	p.read(h, 10)
	p.write(h, []byte("new"))
	p.close(h)
	p.contents()
	h = p.open(wronly|unix.O_TRUNC, 0)
	p.fstat(h, stSize)
	p.close(h)
	p.contents()
	h = p.open(rdwr|unix.O_TRUNC, 0) // already empty
	p.write(h, pattern(300, 2))
	p.close(h)
	h = p.open(rdonly|unix.O_TRUNC, 0) // unspecified by POSIX; Linux truncates
	p.read(h, 10)
	p.close(h)
	p.contents()
	h = p.open(rdwr|unix.O_TRUNC|unix.O_APPEND, 0)
	p.write(h, []byte("appended"))
	p.close(h)
	p.contents()
	// Another descriptor keeps its offset past the new end.
	a := p.open(rdwr, 0)
	p.write(a, pattern(100, 3))
	b := p.open(rdwr|unix.O_TRUNC, 0)
	p.write(a, []byte("tail"))
	p.pos(a)
	p.pos(b)
	p.contents()
}

func semOpenAppend(p *pair) {
	a := p.open(wronly|unix.O_APPEND, 0)
	p.write(a, []byte("one\n"))
	p.pos(a)
	p.lseek(a, 0, unix.SEEK_SET)
	p.write(a, []byte("two\n"))
	p.pos(a)
	p.contents()
	p.pwrite(a, []byte("three\n"), 0) // Linux: pwrite on O_APPEND appends
	p.pos(a)
	p.contents()
	b := p.open(rdwr, 0)
	p.write(b, []byte("XX"))
	p.write(a, []byte("four\n"))
	p.contents()
	p.ftruncate(b, 2)
	p.write(a, []byte("five\n"))
	p.contents()
	p.ftruncate(b, 10000)
	p.write(a, []byte("after a hole\n"))
	p.pos(a)
	p.contents()
	p.ftruncate(b, 0)
	p.close(b)
	p.close(a)

	const writers, count = 4, 50
	p.do(fmt.Sprintf("%d goroutines, each open(O_WRONLY|O_APPEND) and %d write(record)", writers, count), func(s *side) outcome {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs []string
		for g := 0; g < writers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				fd, err := unix.Open(s.path, wronly|unix.O_APPEND|unix.O_CLOEXEC, 0)
				if err != nil {
					mu.Lock()
					errs = append(errs, "open: "+err.Error())
					mu.Unlock()
					return
				}
				defer unix.Close(fd)
				for seq := 0; seq < count; seq++ {
					rec := record(g, seq)
					if n, err := unix.Write(fd, rec); err != nil || n != len(rec) {
						mu.Lock()
						errs = append(errs, fmt.Sprintf("write: %d, %v", n, err))
						mu.Unlock()
						return
					}
				}
			}()
		}
		wg.Wait()
		if len(errs) > 0 {
			return outcome{n: -1, info: fmt.Sprint(errs)}
		}
		data, err := readAll(s.vfd, 64<<20)
		if err != nil {
			return errOut(err)
		}
		return outcome{hideN: true, info: recordsVerdict(data, writers, count)}
	})
}

// recordsVerdict says whether data holds every record of procs × count
// exactly once and intact.
func recordsVerdict(data []byte, procs, count int) string {
	found, problems := parseRecords(data)
	var missing, dup []string
	for proc := 0; proc < procs; proc++ {
		for seq := 0; seq < count; seq++ {
			switch n := found[[2]int{proc, seq}]; {
			case n == 0:
				missing = append(missing, fmt.Sprintf("%d:%d", proc, seq))
			case n > 1:
				dup = append(dup, fmt.Sprintf("%d:%d×%d", proc, seq, n))
			}
		}
	}
	if len(problems) == 0 && len(missing) == 0 && len(dup) == 0 {
		return fmt.Sprintf("%d bytes: all %d records present once and intact", len(data), procs*count)
	}
	cut := func(l []string) []string {
		if len(l) > 5 {
			return append(l[:5:5], fmt.Sprintf("... (%d in all)", len(l)))
		}
		return l
	}
	return fmt.Sprintf("%d bytes: problems %v; missing records %v; duplicated %v", len(data), problems, cut(missing), cut(dup))
}

func semOpenCreat(p *pair) {
	h := p.open(rdwr, 0)
	p.write(h, []byte("keep me"))
	p.close(h)
	h = p.open(rdwr|unix.O_CREAT, 0o600)
	p.fstat(h, stMode|stSize)
	p.read(h, 20)
	p.close(h)
	h = p.open(wronly|unix.O_CREAT, 0o600)
	p.write(h, []byte("KEEP"))
	p.close(h)
	p.contents()
	h = p.open(wronly|unix.O_CREAT|unix.O_TRUNC, 0o600)
	p.fstat(h, stMode|stSize)
	p.close(h)
	p.contents()
}

func semOpenExcl(p *pair) {
	h := p.open(rdwr, 0)
	p.write(h, []byte("exists"))
	p.open(rdwr|unix.O_CREAT|unix.O_EXCL, 0o644)
	p.open(rdonly|unix.O_CREAT|unix.O_EXCL, 0o644)
	p.open(rdwr|unix.O_CREAT|unix.O_EXCL|unix.O_TRUNC, 0o644)
	x := p.open(rdwr|unix.O_EXCL, 0) // without O_CREAT, O_EXCL means nothing here
	p.read(x, 10)
	p.contents()
}

func semAccessMode(p *pair) {
	rw := p.open(rdwr, 0)
	p.write(rw, []byte("data"))
	r := p.open(rdonly, 0)
	p.write(r, []byte("x"))
	p.pwrite(r, []byte("x"), 0)
	p.ftruncate(r, 0)
	p.fallocate(r, 0, 0, 10)
	p.read(r, 10)
	w := p.open(wronly, 0)
	p.read(w, 10)
	p.pread(w, 10, 0)
	p.write(w, []byte("D"))
	path := p.open(unix.O_PATH, 0)
	p.read(path, 10)
	p.write(path, []byte("x"))
	p.fstat(path, stSize|stMode)
	p.contents()
}

func semPreadPwrite(p *pair) {
	h := p.open(rdwr, 0)
	p.pwrite(h, pattern(100, 1), 0)
	p.pos(h)
	p.pwrite(h, pattern(50, 2), 75) // across EOF
	p.pwrite(h, pattern(300, 3), 4000)
	p.pwrite(h, pattern(10, 4), 4090)
	p.pos(h)
	p.pread(h, 10, 0)
	p.pread(h, 100, 70)
	p.pread(h, 200, 4200) // crosses EOF
	p.pread(h, 10, 4300)  // at EOF
	p.pread(h, 10, 5000)  // past EOF
	p.pread(h, 8192, 0)
	p.pos(h)
	p.read(h, 10)
	p.pos(h)
	p.pwrite(h, []byte("mid"), 2)
	p.read(h, 10)
	p.contents()
}

func semHole(p *pair) {
	h := p.open(rdwr, 0)
	p.pwrite(h, []byte("X"), 10000)
	p.fstat(h, stSize)
	p.pread(h, 10001, 0)
	p.lseek(h, 20000, unix.SEEK_SET)
	p.write(h, []byte("Y"))
	p.contents()
	p.pwrite(h, pattern(100, 1), 9950)   // straddles the hole's end and the X
	p.pwrite(h, pattern(8192, 2), 12000) // straddles pages of a hole
	p.pread(h, 300, 9900)
	p.contents()
	p.ftruncate(h, 40000)
	p.pwrite(h, []byte("Z"), 30000)
	p.pread(h, 100, 29950)
	p.pread(h, 100, 39950)
	p.contents()
	p.pwrite(h, []byte("far"), 1<<30)
	p.fstat(h, stSize)
	p.pread(h, 20, 1<<30-10)
	p.pread(h, 4096, 1<<29)
	p.contents()
}

func semSeek(p *pair) {
	h := p.open(rdwr, 0)
	p.lseek(h, 0, unix.SEEK_END)
	p.lseek(h, 100, unix.SEEK_SET)
	p.read(h, 10)
	p.pos(h)
	p.write(h, pattern(10, 1))
	p.pos(h)
	p.lseek(h, -5, unix.SEEK_CUR)
	p.lseek(h, -200, unix.SEEK_CUR)
	p.pos(h)
	p.lseek(h, -110, unix.SEEK_END)
	p.lseek(h, -111, unix.SEEK_END)
	p.pos(h)
	p.lseek(h, 1000, unix.SEEK_END)
	p.read(h, 5)
	p.lseek(h, -1, unix.SEEK_SET)
	p.pos(h)
	for _, w := range []int{5, 6, -1, 100, math.MaxInt32} {
		p.lseek(h, 0, w)
		p.lseek(h, 10, w)
	}
	p.pos(h)
	p.lseek(h, math.MaxInt64, unix.SEEK_SET)
	p.read(h, 10)
	p.write(h, []byte("x"))
	p.lseek(h, 1, unix.SEEK_CUR)
	p.lseek(h, math.MaxInt64, unix.SEEK_END)
	p.lseek(h, math.MinInt64, unix.SEEK_CUR)
	p.pos(h)
	p.lseek(h, 1<<40, unix.SEEK_SET)
	p.write(h, []byte("far"))
	p.fstat(h, stSize)
	p.lseek(h, 0, unix.SEEK_END)
	p.ftruncate(h, 110)
	p.pos(h)
	a := p.open(rdwr|unix.O_APPEND, 0)
	p.lseek(a, 5, unix.SEEK_SET)
	p.pos(a)
	p.write(a, []byte("z"))
	p.pos(a)
	p.contents()
}

// probeHoles runs SEEK_DATA and SEEK_HOLE from every interesting offset:
// page boundaries and their neighbours, the end of the file, and
// impossible offsets.
func probeHoles(p *pair, h fdh, extra ...int64) {
	size := p.size()
	set := map[int64]bool{-1: true, math.MaxInt64: true}
	add := func(o int64) {
		for _, d := range []int64{-1, 0, 1} {
			if o+d >= 0 {
				set[o+d] = true
			}
		}
	}
	for o := int64(0); o <= min(size+4096, 12*4096); o += 4096 {
		add(o)
	}
	add(size)
	for _, o := range extra {
		add(o)
	}
	var offs []int64
	for o := range set {
		offs = append(offs, o)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	for _, o := range offs {
		p.lseek(h, o, unix.SEEK_DATA)
		p.lseek(h, o, unix.SEEK_HOLE)
	}
	p.pos(h)
}

func semSeekHole(p *pair) {
	const pg = 4096
	h := p.open(rdwr, 0)
	probeHoles(p, h)
	p.write(h, []byte("0123456789"))
	probeHoles(p, h, 9, 10)
	p.ftruncate(h, 3*pg+100)
	p.pwrite(h, []byte("abcdefghij"), 2*pg+5)
	probeHoles(p, h, 2*pg+5, 2*pg+15)
	p.fallocate(h, 0, 5*pg, pg) // allocated, extends the file, never written
	probeHoles(p, h)
	p.fallocate(h, unix.FALLOC_FL_KEEP_SIZE, 7*pg, 2*pg) // past EOF
	probeHoles(p, h)
	p.pwrite(h, pattern(4*pg, 1), 0)
	p.fallocate(h, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, pg, pg) // aligned
	probeHoles(p, h)
	p.fallocate(h, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 100, 200) // within a page
	probeHoles(p, h, 100, 300)
	p.ftruncate(h, pg+1)
	probeHoles(p, h)
	p.ftruncate(h, 1<<30)
	p.pwrite(h, []byte("far"), 1<<29)
	probeHoles(p, h, 1<<29, 1<<29+3, 1<<30)
}

func semFtruncate(p *pair) {
	h := p.open(rdwr, 0)
	p.write(h, pattern(10000, 1))
	p.ftruncate(h, 5000)
	p.fstat(h, stSize)
	p.pread(h, 6000, 0)
	p.ftruncate(h, 10000) // the cut tail must come back as zeros
	p.pread(h, 10000, 0)
	p.ftruncate(h, 10000) // same size
	p.fstat(h, stSize)
	p.ftruncate(h, 4097) // mid-page
	p.ftruncate(h, 8192)
	p.pread(h, 200, 4000)
	p.pos(h) // the offset is not moved
	p.read(h, 10)
	p.write(h, []byte("past the end")) // offset 10000 > size 8192: a hole
	p.contents()
	p.ftruncate(h, 0)
	p.pread(h, 10, 0)
	p.ftruncate(h, 1<<40) // sparse and huge
	p.fstat(h, stSize)
	p.pread(h, 10, 1<<40-5)
	p.ftruncate(h, -1)
	p.ftruncate(h, math.MaxInt64)
	p.fstat(h, stSize)
	p.ftruncate(h, 100)
	a := p.open(wronly|unix.O_APPEND, 0)
	p.ftruncate(a, 50)
	r := p.open(rdonly, 0)
	p.ftruncate(r, 10)
	p.contents()
}

func semFallocate(p *pair) {
	const pg = 4096
	keep := uint32(unix.FALLOC_FL_KEEP_SIZE)
	punch := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
	h := p.open(rdwr, 0)
	p.fallocate(h, 0, 0, 10000)
	p.fstat(h, stSize|stBlocks)
	p.pread(h, 10000, 0)
	p.pwrite(h, pattern(3000, 1), 1000)
	p.fallocate(h, 0, 0, 5000) // inside: data stays
	p.fallocate(h, 0, 8000, 10000)
	p.fstat(h, stSize|stBlocks)
	p.contents()
	p.fallocate(h, keep, 30000, 3*pg) // past EOF: size stays
	p.fstat(h, stSize|stBlocks)
	p.ftruncate(h, 50000)
	p.pread(h, 100, 30000)
	p.fallocate(h, punch, pg, pg) // aligned
	p.fallocate(h, punch, 1500, 100)
	p.fallocate(h, punch, 60000, pg) // past EOF
	p.fstat(h, stSize|stBlocks)
	p.contents()
	p.fallocate(h, unix.FALLOC_FL_PUNCH_HOLE, 0, pg) // punching needs KEEP_SIZE
	p.fallocate(h, unix.FALLOC_FL_ZERO_RANGE, 0, pg)
	p.fallocate(h, unix.FALLOC_FL_COLLAPSE_RANGE, 0, pg)
	p.fallocate(h, unix.FALLOC_FL_INSERT_RANGE, 0, pg)
	p.fallocate(h, 0x100, 0, pg) // no such mode
	p.fallocate(h, 0, 0, 0)
	p.fallocate(h, 0, -1, 10)
	p.fallocate(h, 0, 10, -1)
	p.fallocate(h, 0, math.MaxInt64-10, 100)
	p.fallocate(h, keep, 1<<40, pg)
	p.fstat(h, stSize|stBlocks)
	r := p.open(rdonly, 0)
	p.fallocate(r, 0, 0, 10)
	p.contents()
}

// canChmod says whether fchmod on the file may succeed for this process.
func (r *runner) canChmod() bool {
	return os.Geteuid() == 0 || uint32(os.Geteuid()) == r.targetUID
}

func semFstat(p *pair) {
	const pg = 4096
	all := stSize | stBlocks | stMode
	h := p.open(rdwr, 0)
	p.fstat(h, all)
	p.write(h, []byte("x"))
	p.fstat(h, all)
	p.pwrite(h, pattern(pg-1, 1), 1)
	p.fstat(h, all)
	p.pwrite(h, []byte("y"), pg)
	p.fstat(h, all)
	p.pwrite(h, []byte("z"), 1<<20)
	p.fstat(h, all)
	p.ftruncate(h, 4<<20)
	p.fstat(h, all)
	p.fallocate(h, unix.FALLOC_FL_KEEP_SIZE, 8<<20, 1<<20)
	p.fstat(h, all)
	p.fallocate(h, 0, 2<<20, 100000)
	p.fstat(h, all)
	p.fallocate(h, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 2*pg)
	p.fstat(h, all)
	p.ftruncate(h, 100)
	p.fstat(h, all)
	if p.r.canChmod() {
		p.fchmod(h, 0o600)
		p.fstat(h, stMode)
		p.fchmod(h, p.r.targetMode)
	}
	p.do("stat(PATH) [size,blocks,mode]", func(s *side) outcome {
		var st unix.Stat_t
		if err := unix.Stat(s.path, &st); err != nil {
			return errOut(err)
		}
		return outcome{hideN: true, info: statInfo(&st, all)}
	})
}

func semTimes(p *pair) {
	h := p.open(rdwr, 0)
	fd := func(s *side) int { return s.fd(h) }
	p.timed("write(fd1, 5 bytes)", func(s *side) outcome {
		n, err := unix.Write(fd(s), []byte("hello"))
		return nOut(int64(n), err)
	})
	p.timed("pread(fd1, 5, 0)", func(s *side) outcome {
		n, err := unix.Pread(fd(s), make([]byte, 5), 0)
		return nOut(int64(n), err)
	})
	p.timed("pwrite(fd1, 0 bytes, 0)", func(s *side) outcome {
		n, err := unix.Pwrite(fd(s), nil, 0)
		return nOut(int64(n), err)
	})
	p.timed("pwrite(fd1, 10 bytes, 2)", func(s *side) outcome {
		n, err := unix.Pwrite(fd(s), pattern(10, 1), 2)
		return nOut(int64(n), err)
	})
	for _, size := range []int64{10000, 10000, 10} {
		p.timed(fmt.Sprintf("ftruncate(fd1, %d)", size), func(s *side) outcome {
			return nOut(0, unix.Ftruncate(fd(s), size))
		})
	}
	for _, fa := range []struct {
		mode      uint32
		off, size int64
	}{
		{0, 0, 4096},
		{unix.FALLOC_FL_KEEP_SIZE, 8192, 8192},
		{unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, 0, 4096},
	} {
		p.timed(fmt.Sprintf("fallocate(fd1, %s, %d, %d)", fallocString(fa.mode), fa.off, fa.size), func(s *side) outcome {
			return nOut(0, unix.Fallocate(fd(s), fa.mode, fa.off, fa.size))
		})
	}
	p.timed("fsync(fd1)", func(s *side) outcome { return nOut(0, unix.Fsync(fd(s))) })
	p.timed("lseek(fd1, 100, SEEK_SET)", func(s *side) outcome {
		n, err := unix.Seek(fd(s), 100, unix.SEEK_SET)
		return nOut(n, err)
	})
	openClose := func(flags int) func(s *side) outcome {
		return func(s *side) outcome {
			f, err := unix.Open(s.path, flags|unix.O_CLOEXEC, 0)
			if err != nil {
				return errOut(err)
			}
			return nOut(0, unix.Close(f))
		}
	}
	p.timed("open(PATH, O_RDWR), close", openClose(rdwr))
	p.timed("open(PATH, O_WRONLY|O_TRUNC) of a non-empty file, close", openClose(wronly|unix.O_TRUNC))
	p.timed("open(PATH, O_WRONLY|O_TRUNC) of an empty file, close", openClose(wronly|unix.O_TRUNC))
	if p.r.canChmod() {
		p.timed(fmt.Sprintf("fchmod(fd1, %#o) (unchanged)", p.r.targetMode), func(s *side) outcome {
			return nOut(0, unix.Fchmod(fd(s), p.r.targetMode))
		})
	}
}

func semFsync(p *pair) {
	h := p.open(rdwr, 0)
	p.write(h, pattern(5000, 1))
	p.fsync(h)
	p.fdatasync(h)
	r := p.open(rdonly, 0)
	p.fsync(r)
	p.fdatasync(r)
	p.do("sync_file_range(fd1, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE|WRITE|WAIT_AFTER)", func(s *side) outcome {
		return nOut(0, unix.SyncFileRange(s.fd(h), 0, 0, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER))
	})
	p.contents()
}

func semEdgeOffsets(p *pair) {
	const max = math.MaxInt64
	h := p.open(rdwr, 0)
	p.pwrite(h, []byte("abc"), 0)
	p.pread(h, 3, 0)
	p.pread(h, 10, -1)
	p.pwrite(h, []byte("x"), -1)
	p.pread(h, 10, math.MinInt64)
	p.pwrite(h, []byte("x"), math.MinInt64)
	p.pread(h, 10, max)
	p.pwrite(h, []byte("x"), max)
	p.pwrite(h, nil, max)
	p.pwrite(h, []byte("ab"), max-2)
	p.fstat(h, stSize)
	p.pread(h, 10, max-5)
	p.pwrite(h, []byte("abc"), max-2) // only two bytes fit below the limit
	p.lseek(h, 0, unix.SEEK_END)
	p.lseek(h, 0, unix.SEEK_DATA)
	p.lseek(h, 0, unix.SEEK_HOLE)
	p.lseek(h, max-10, unix.SEEK_SET)
	p.write(h, pattern(20, 1))
	p.read(h, 20)
	p.ftruncate(h, 0)
	p.pwrite(h, []byte("far"), 1<<40)
	p.pread(h, 10, 1<<40-5)
	p.pread(h, 10, 1<<40+3)
	p.contents()
}

// anon maps n bytes of anonymous memory for buffers whose length or
// protection Go's heap cannot give; pages past rw bytes are PROT_NONE.
func anon(p *pair, n, rw int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		p.failf("cannot map %d bytes of memory for a buffer: %v", n, err)
	}
	if rw < n {
		if err := unix.Mprotect(b[rw:], unix.PROT_NONE); err != nil {
			unix.Munmap(b)
			p.failf("mprotect: %v", err)
		}
	}
	return b
}

func semEdgeLengths(p *pair) {
	const pg = 4096
	h := p.open(rdwr, 0)
	p.write(h, nil)
	p.pwrite(h, nil, 5000) // writes nothing and does not extend
	p.size()
	p.read(h, 0)
	p.pread(h, 0, 0)
	p.write(h, pattern(10000, 1))
	p.pread(h, 100, 9950) // a buffer that crosses EOF
	p.pread(h, 0, 20000)
	p.lseek(h, 9990, unix.SEEK_SET)
	p.read(h, 100)

	huge := anon(p, 1<<30, 1<<30)
	defer unix.Munmap(huge)
	p.do("pread(fd1, 1 GiB buffer, 0)", func(s *side) outcome {
		n, err := unix.Pread(s.fd(h), huge, 0)
		return dataOut(append([]byte{}, huge[:max(n, 0)]...), n, err)
	})
	p.lseek(h, 0, unix.SEEK_SET)
	p.do("read(fd1, 1 GiB buffer)", func(s *side) outcome {
		n, err := unix.Read(s.fd(h), huge)
		return dataOut(append([]byte{}, huge[:max(n, 0)]...), n, err)
	})
	big := pattern(16<<20, 2)
	p.pwrite(h, big, 1000)
	p.contents()
	p.ftruncate(h, 3*pg)

	// Buffers that end in unmapped memory: the kernel copies what it can.
	half := anon(p, 2*pg, pg)
	defer unix.Munmap(half)
	none := anon(p, pg, 0)
	defer unix.Munmap(none)
	copy(half, pattern(pg, 3))
	p.do("pread(fd1, 8192-byte buffer whose second page is PROT_NONE, 0)", func(s *side) outcome {
		n, err := unix.Pread(s.fd(h), half, 0)
		return dataOut(append([]byte{}, half[:max(min(n, pg), 0)]...), n, err)
	})
	p.do("pread(fd1, PROT_NONE buffer, 0)", func(s *side) outcome {
		n, err := unix.Pread(s.fd(h), none, 0)
		return nOut(int64(n), err)
	})
	p.do("pwrite(fd1, 8192-byte buffer whose second page is PROT_NONE, 100)", func(s *side) outcome {
		n, err := unix.Pwrite(s.fd(h), half, 100)
		return nOut(int64(n), err)
	})
	p.do("pwrite(fd1, PROT_NONE buffer, 0)", func(s *side) outcome {
		n, err := unix.Pwrite(s.fd(h), none, 0)
		return nOut(int64(n), err)
	})
	p.contents()
}

func semODirect(p *pair) {
	h := p.open(rdwr|unix.O_DIRECT, 0)
	if o := p.pos(h); o[0].err != 0 {
		return // both refuse O_DIRECT alike
	}
	p.write(h, pattern(5000, 1))
	p.pwrite(h, []byte("xyz"), 4095)
	p.pread(h, 100, 4050)
	al := anon(p, 8192, 8192)
	defer unix.Munmap(al)
	p.do("pread(fd1, page-aligned 8192-byte buffer, 0)", func(s *side) outcome {
		n, err := unix.Pread(s.fd(h), al, 0)
		return dataOut(append([]byte{}, al[:max(n, 0)]...), n, err)
	})
	b := p.open(rdwr, 0)
	p.pwrite(b, []byte("buffered"), 100)
	p.pread(h, 20, 95)
	p.pwrite(h, []byte("direct"), 200)
	p.pread(b, 20, 195)
	p.pwrite(h, pattern(3, 2), 10000) // a hole, through O_DIRECT
	p.contents()
}

func semOSync(p *pair) {
	for i, fl := range []int{unix.O_SYNC, unix.O_DSYNC} {
		h := p.open(rdwr|fl, 0)
		p.write(h, pattern(3000, i))
		p.pwrite(h, pattern(100, i+2), 2950)
		p.pread(h, 200, 2900)
		p.close(h)
		p.contents()
	}
}
