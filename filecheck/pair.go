package filecheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// runner holds the state of one Run.
type runner struct {
	cfg    Config
	ctx    context.Context
	report *Report

	oraclePath  string
	oracleMount string // private tmpfs mounted by Run, if any
	scratchDir  string // the read-only checks' scratch files go here

	targetMode uint32 // permission bits of the file under test
	targetUID  uint32
	restore    []byte // its contents before the checks
	restoreSet bool

	wmu     sync.Mutex
	workers []*worker
}

// check is one named check.
type check struct {
	name string
	// fn runs the check's steps on a fresh pair of empty files.
	fn func(p *pair)
	// run, if set, replaces fn for checks that manage their own files.
	run func(r *runner, c *check) Result
	// skip, if set, returns why the check cannot run ("" if it can).
	skip func(r *runner) string
}

// The two sides of a pair: the file under test and the oracle.
const (
	fileSide   = 0
	oracleSide = 1
)

var sideNames = [2]string{"file", "oracle"}

// side is one of the two files a check runs on.
type side struct {
	idx  int
	path string
	fds  []int // by handle; -1 when the open failed or the fd is closed
	maps []int // mapping ids in worker 0, by map handle; -1 when none
	vfd  int   // O_RDONLY descriptor used to compare contents
}

// pair runs every step of a check on both files and compares the results.
type pair struct {
	r    *runner
	name string
	s    [2]*side
	step int
}

// fdh is a descriptor handle: the same index names the corresponding
// descriptor on both sides.
type fdh int

func (h fdh) String() string { return "fd" + strconv.Itoa(int(h)+1) }

// maph is a mapping handle, like fdh.
type maph int

func (m maph) String() string { return "map" + strconv.Itoa(int(m)+1) }

// outcome is the result of one step on one side.
type outcome struct {
	n       int64
	hideN   bool // n carries no information (e.g. fstat)
	err     unix.Errno
	data    []byte
	hasData bool
	info    string // further results, compared too
	fault   string // a memory fault in a mapping
}

func (o outcome) equal(b outcome) bool {
	return o.n == b.n && o.err == b.err && o.hasData == b.hasData &&
		bytes.Equal(o.data, b.data) && o.info == b.info && o.fault == b.fault
}

func (o outcome) String() string {
	var parts []string
	switch {
	case o.fault != "":
		parts = append(parts, o.fault)
	case o.err != 0:
		parts = append(parts, "-1 "+errnoName(o.err))
	case o.hasData:
		parts = append(parts, fmt.Sprintf("%d, %d bytes %s", o.n, len(o.data), summarize(o.data, 60)))
	case !o.hideN:
		parts = append(parts, strconv.FormatInt(o.n, 10))
	}
	if o.info != "" {
		parts = append(parts, o.info)
	}
	return strings.Join(parts, " ")
}

// describe formats two differing outcomes, pointing at the first byte
// where their data differ.
func describe(a, b outcome) (string, string) {
	if a.hasData && b.hasData && a.err == 0 && b.err == 0 && a.fault == "" && b.fault == "" && !bytes.Equal(a.data, b.data) {
		k := 0
		for k < len(a.data) && k < len(b.data) && a.data[k] == b.data[k] {
			k++
		}
		f := func(o outcome) string {
			s := fmt.Sprintf("%d, %d bytes, from byte %d: %s", o.n, len(o.data), k, summarize(o.data[min(k, len(o.data)):], 60))
			if o.info != "" {
				s += " " + o.info
			}
			return s
		}
		return f(a), f(b)
	}
	return a.String(), b.String()
}

func errnoName(e unix.Errno) string {
	if name := unix.ErrnoName(e); name != "" {
		return name
	}
	return "errno " + strconv.Itoa(int(e))
}

// errOut turns an error from a system call into an outcome.
func errOut(err error) outcome {
	var e unix.Errno
	if errors.As(err, &e) {
		return outcome{n: -1, err: e}
	}
	return outcome{n: -1, err: unix.EIO, info: err.Error()}
}

// nOut is the outcome of a call that returns a count or an offset.
func nOut(n int64, err error) outcome {
	if err != nil {
		return errOut(err)
	}
	return outcome{n: n}
}

// summarize shows bytes compactly: runs of one repeated byte as N×'c',
// other stretches quoted, at most max characters.
func summarize(b []byte, max int) string {
	if len(b) == 0 {
		return `""`
	}
	var out strings.Builder
	for i := 0; i < len(b) && out.Len() < max; {
		j := i + 1
		for j < len(b) && b[j] == b[i] {
			j++
		}
		if j-i >= 8 {
			if out.Len() > 0 {
				out.WriteString(" ")
			}
			fmt.Fprintf(&out, "%d×%s", j-i, strconv.QuoteRune(rune(b[i])))
			i = j
			continue
		}
		// A quoted stretch up to the next long run.
		k := i
		for k < len(b) && k-i < 24 {
			r := k + 1
			for r < len(b) && b[r] == b[k] {
				r++
			}
			if r-k >= 8 {
				break
			}
			k = r
		}
		if k == i {
			k = i + 1
		}
		if out.Len() > 0 {
			out.WriteString(" ")
		}
		out.WriteString(strconv.Quote(string(b[i:k])))
		i = k
	}
	return out.String()
}

// dataArg formats a buffer argument of a call.
func dataArg(b []byte) string {
	return fmt.Sprintf("%d bytes %s", len(b), summarize(b, 30))
}

// The failures a check's steps raise with panic; pair.exec recovers them.
type stepFailure struct{ diff Diff }
type checkFailure struct {
	reason  string
	details []string
}
type checkSkip struct{ reason string }

// failf fails the check with a reason that is not a difference.
func (p *pair) failf(format string, args ...any) {
	panic(&checkFailure{reason: fmt.Sprintf(format, args...)})
}

// skipf skips the rest of the check.
func (p *pair) skipf(format string, args ...any) {
	panic(&checkSkip{reason: fmt.Sprintf(format, args...)})
}

// do runs one step on both sides and fails the check if the outcomes
// differ.
func (p *pair) do(call string, f func(s *side) outcome) [2]outcome {
	return p.doAccepting(call, f, nil)
}

// doAccepting is do for a step where the file under test may also answer
// differently in ways accept approves (nil: none).
func (p *pair) doAccepting(call string, f func(s *side) outcome, accept func(file, oracle outcome) bool) [2]outcome {
	if err := p.r.ctx.Err(); err != nil {
		p.skipf("interrupted at step %d: %v", p.step+1, err)
	}
	p.step++
	var res [2]outcome
	for i, s := range p.s {
		res[i] = f(s)
	}
	if !res[0].equal(res[1]) && (accept == nil || !accept(res[0], res[1])) {
		fa, fb := describe(res[0], res[1])
		panic(&stepFailure{Diff{Step: p.step, Call: call, File: fa, Oracle: fb}})
	}
	return res
}

// exec runs fn and turns what it raised into a Result.
func (p *pair) exec(fn func(p *pair)) Result {
	return execSteps(p.name, func() { fn(p) })
}

// execSteps runs the steps of the check name and turns the failure or skip
// they raised with panic into a Result.
func execSteps(name string, steps func()) (res Result) {
	res.Name = name
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		switch x := v.(type) {
		case *stepFailure:
			d := x.diff
			res.Status, res.FirstDiff, res.Reason = Fail, &d, d.String()
		case *checkFailure:
			res.Status, res.Reason, res.Details = Fail, x.reason, x.details
		case *checkSkip:
			res.Status, res.Reason = Skip, x.reason
		default:
			res.Status = Fail
			res.Reason = fmt.Sprintf("internal error in the checker: %v", v)
			res.Details = strings.Split(strings.TrimSpace(string(debug.Stack())), "\n")
		}
	}()
	steps()
	res.Status = Pass
	return res
}

// runCheck runs one check.
func (r *runner) runCheck(c *check) (res Result) {
	start := time.Now()
	defer func() { res.Name = c.name; res.Duration = time.Since(start) }()
	if c.skip != nil {
		if why := c.skip(r); why != "" {
			return Result{Status: Skip, Reason: why}
		}
	}
	if c.run != nil {
		return c.run(r, c)
	}
	p, err := r.newPair(c.name)
	if err != nil {
		return Result{Status: Fail, Reason: err.Error()}
	}
	defer p.release()
	return p.exec(c.fn)
}

// newPair empties both files and opens their checking descriptors.
func (r *runner) newPair(name string) (*pair, error) {
	return r.newPairPaths(name, r.oraclePath)
}

// newPairPaths is newPair with another oracle file.
func (r *runner) newPairPaths(name, oracle string) (*pair, error) {
	p := &pair{r: r, name: name}
	paths := [2]string{r.cfg.Path, oracle}
	for i := range p.s {
		p.s[i] = &side{idx: i, path: paths[i], vfd: -1}
	}
	for i, s := range p.s {
		if err := r.empty(s.path); err != nil {
			p.release()
			return nil, fmt.Errorf("cannot start from an empty %s: %v", sideNames[i], err)
		}
		fd, err := unix.Open(s.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			p.release()
			return nil, fmt.Errorf("cannot open the %s for reading: %v", sideNames[i], err)
		}
		s.vfd = fd
	}
	return p, nil
}

// empty truncates path to size 0 and restores its permission bits, and
// checks that it is empty.
func (r *runner) empty(path string) error {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open(O_RDWR): %v", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat: %v", err)
	}
	if st.Mode&0o7777 != r.targetMode {
		if err := unix.Fchmod(fd, r.targetMode); err != nil {
			return fmt.Errorf("fchmod(%#o): %v", r.targetMode, err)
		}
	}
	isEmpty := func() (string, bool) {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return "fstat: " + err.Error(), false
		}
		var one [1]byte
		n, err := unix.Pread(fd, one[:], 0)
		if st.Size != 0 || n != 0 || err != nil {
			return fmt.Sprintf("fstat says size %d and pread(1, 0) returns %d, %v", st.Size, n, err), false
		}
		return "", true
	}
	terr := unix.Ftruncate(fd, 0)
	if _, ok := isEmpty(); ok && terr == nil {
		return nil
	}
	// Some files (e.g. in /proc) only honour O_TRUNC.
	fd2, err := unix.Open(path, unix.O_RDWR|unix.O_TRUNC|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("ftruncate(0): %v; open(O_TRUNC): %v", terr, err)
	}
	unix.Close(fd2)
	if why, ok := isEmpty(); !ok {
		return fmt.Errorf("after ftruncate(0) (%v) and open(O_TRUNC) %s", errOrOK(terr), why)
	}
	return nil
}

func errOrOK(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// release closes every descriptor and mapping of the pair.
func (p *pair) release() {
	for _, s := range p.s {
		if s == nil {
			continue
		}
		for i, fd := range s.fds {
			if fd >= 0 {
				unix.Close(fd)
				s.fds[i] = -1
			}
		}
		for i, id := range s.maps {
			if id >= 0 {
				p.r.unmapQuiet(id)
				s.maps[i] = -1
			}
		}
		if s.vfd >= 0 {
			unix.Close(s.vfd)
			s.vfd = -1
		}
	}
}

func (s *side) fd(h fdh) int {
	if int(h) < 0 || int(h) >= len(s.fds) {
		return -1
	}
	return s.fds[h]
}

// open opens both files with the same flags. When the open fails on both
// sides alike the handle is still returned and names an invalid descriptor.
func (p *pair) open(flags int, perm uint32) fdh {
	h := fdh(len(p.s[0].fds))
	call := fmt.Sprintf("open(PATH, %s", flagString(flags))
	if flags&unix.O_CREAT != 0 {
		call += fmt.Sprintf(", %#o", perm)
	}
	call += ") = " + h.String()
	p.do(call, func(s *side) outcome {
		fd, err := unix.Open(s.path, flags|unix.O_CLOEXEC, perm)
		if err != nil {
			s.fds = append(s.fds, -1)
			return errOut(err)
		}
		s.fds = append(s.fds, fd)
		return outcome{hideN: true, info: "ok"}
	})
	return h
}

// close closes a handle on both sides.
func (p *pair) close(h fdh) {
	p.do(fmt.Sprintf("close(%s)", h), func(s *side) outcome {
		fd := s.fd(h)
		if fd >= 0 {
			s.fds[h] = -1
		}
		return nOut(0, unix.Close(fd))
	})
}

func (p *pair) read(h fdh, n int) [2]outcome {
	return p.do(fmt.Sprintf("read(%s, %d)", h, n), func(s *side) outcome {
		buf := make([]byte, n)
		m, err := unix.Read(s.fd(h), buf)
		return dataOut(buf, m, err)
	})
}

func dataOut(buf []byte, n int, err error) outcome {
	if err != nil {
		return errOut(err)
	}
	return outcome{n: int64(n), data: buf[:n], hasData: true}
}

func (p *pair) write(h fdh, data []byte) [2]outcome {
	return p.do(fmt.Sprintf("write(%s, %s)", h, dataArg(data)), func(s *side) outcome {
		n, err := unix.Write(s.fd(h), data)
		return nOut(int64(n), err)
	})
}

func (p *pair) pread(h fdh, n int, off int64) [2]outcome {
	return p.do(fmt.Sprintf("pread(%s, %d, %d)", h, n, off), func(s *side) outcome {
		buf := make([]byte, n)
		m, err := unix.Pread(s.fd(h), buf, off)
		return dataOut(buf, m, err)
	})
}

func (p *pair) pwrite(h fdh, data []byte, off int64) [2]outcome {
	return p.do(fmt.Sprintf("pwrite(%s, %s, %d)", h, dataArg(data), off), func(s *side) outcome {
		n, err := unix.Pwrite(s.fd(h), data, off)
		return nOut(int64(n), err)
	})
}

func (p *pair) lseek(h fdh, off int64, whence int) [2]outcome {
	return p.do(fmt.Sprintf("lseek(%s, %d, %s)", h, off, whenceString(whence)), func(s *side) outcome {
		n, err := unix.Seek(s.fd(h), off, whence)
		return nOut(n, err)
	})
}

// pos compares the file offsets of a handle.
func (p *pair) pos(h fdh) [2]outcome { return p.lseek(h, 0, unix.SEEK_CUR) }

func (p *pair) ftruncate(h fdh, size int64) [2]outcome {
	return p.do(fmt.Sprintf("ftruncate(%s, %d)", h, size), func(s *side) outcome {
		return nOut(0, unix.Ftruncate(s.fd(h), size))
	})
}

func (p *pair) fallocate(h fdh, mode uint32, off, length int64) [2]outcome {
	return p.do(fmt.Sprintf("fallocate(%s, %s, %d, %d)", h, fallocString(mode), off, length), func(s *side) outcome {
		return nOut(0, unix.Fallocate(s.fd(h), mode, off, length))
	})
}

func (p *pair) fsync(h fdh) [2]outcome {
	return p.do(fmt.Sprintf("fsync(%s)", h), func(s *side) outcome {
		return nOut(0, unix.Fsync(s.fd(h)))
	})
}

func (p *pair) fdatasync(h fdh) [2]outcome {
	return p.do(fmt.Sprintf("fdatasync(%s)", h), func(s *side) outcome {
		return nOut(0, unix.Fdatasync(s.fd(h)))
	})
}

func (p *pair) fchmod(h fdh, mode uint32) [2]outcome {
	return p.do(fmt.Sprintf("fchmod(%s, %#o)", h, mode), func(s *side) outcome {
		return nOut(0, unix.Fchmod(s.fd(h), mode))
	})
}

// Fields of fstat to compare.
const (
	stSize = 1 << iota
	stBlocks
	stMode
)

func statInfo(st *unix.Stat_t, fields int) string {
	var parts []string
	if fields&stSize != 0 {
		parts = append(parts, fmt.Sprintf("size=%d", st.Size))
	}
	if fields&stBlocks != 0 {
		parts = append(parts, fmt.Sprintf("blocks=%d", st.Blocks))
	}
	if fields&stMode != 0 {
		parts = append(parts, fmt.Sprintf("mode=%#o", st.Mode))
	}
	return strings.Join(parts, " ")
}

func fieldNames(fields int) string {
	var parts []string
	for _, f := range []struct {
		bit  int
		name string
	}{{stSize, "size"}, {stBlocks, "blocks"}, {stMode, "mode"}} {
		if fields&f.bit != 0 {
			parts = append(parts, f.name)
		}
	}
	return strings.Join(parts, ",")
}

// fstat compares the chosen fields of fstat on a handle.
func (p *pair) fstat(h fdh, fields int) [2]outcome {
	return p.do(fmt.Sprintf("fstat(%s) [%s]", h, fieldNames(fields)), func(s *side) outcome {
		var st unix.Stat_t
		if err := unix.Fstat(s.fd(h), &st); err != nil {
			return errOut(err)
		}
		return outcome{hideN: true, info: statInfo(&st, fields)}
	})
}

// size compares the file sizes (fstat on the checking descriptor) and
// returns it.
func (p *pair) size() int64 {
	var size int64
	p.do("fstat(check fd) [size]", func(s *side) outcome {
		var st unix.Stat_t
		if err := unix.Fstat(s.vfd, &st); err != nil {
			return errOut(err)
		}
		size = st.Size
		return outcome{hideN: true, info: fmt.Sprintf("size=%d", st.Size)}
	})
	return size
}

// maxWholeRead is the largest file contents compares by reading it whole.
const maxWholeRead = 64 << 20

// contents compares the sizes and the whole contents of the two files
// (sparsely for very large sparse files), reading through the checking
// descriptor.
func (p *pair) contents() {
	size := p.size()
	if size <= maxWholeRead {
		p.do("pread(check fd) whole file", func(s *side) outcome {
			data, err := readAll(s.vfd, maxWholeRead+1)
			if err != nil {
				return errOut(err)
			}
			return outcome{n: int64(len(data)), data: data, hasData: true}
		})
		return
	}
	// Too large to read whole: compare the oracle's data extents and the
	// start of each hole, which the oracle (tmpfs) reports exactly.
	o := p.s[oracleSide].vfd
	off := int64(0)
	for i := 0; i < 64 && off < size; i++ {
		d, err := unix.Seek(o, off, unix.SEEK_DATA)
		if err != nil {
			d = size
		}
		if d > off {
			p.preadCheck(int(min(d-off, 4096)), off) // the start of a hole
		}
		if d >= size {
			break
		}
		e, err := unix.Seek(o, d, unix.SEEK_HOLE)
		if err != nil || e > size {
			e = size
		}
		n := min(e-d, 1<<20)
		p.preadCheck(int(n), d)
		off = e
	}
	p.preadCheck(4096, size-min(size, 4096))
}

// preadCheck compares a pread through the checking descriptors.
func (p *pair) preadCheck(n int, off int64) {
	p.do(fmt.Sprintf("pread(check fd, %d, %d)", n, off), func(s *side) outcome {
		buf := make([]byte, n)
		m, err := unix.Pread(s.vfd, buf, off)
		return dataOut(buf, m, err)
	})
}

// readAll reads fd from offset 0 to its end, at most limit bytes.
func readAll(fd int, limit int) ([]byte, error) {
	hint := 4096
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil && st.Size >= 0 && st.Size < int64(limit) {
		hint = int(st.Size) + 4096
	}
	out := make([]byte, 0, hint)
	for len(out) < limit {
		if cap(out)-len(out) < 4096 {
			out = append(out, make([]byte, min(cap(out), 1<<20))...)[:len(out)]
		}
		n, err := unix.Pread(fd, out[len(out):cap(out)], int64(len(out)))
		if err != nil {
			return out, err
		}
		if n <= 0 {
			break
		}
		out = out[:len(out)+n]
	}
	return out, nil
}

// timed runs op on each side between two fstat calls (on the checking
// descriptor) and compares, besides op's outcome, whether mtime and ctime
// moved. It sleeps first so that a coarse clock ticks in between.
func (p *pair) timed(call string, op func(s *side) outcome) [2]outcome {
	return p.do(call+" [mtime, ctime changed?]", func(s *side) outcome {
		var before, after unix.Stat_t
		if err := unix.Fstat(s.vfd, &before); err != nil {
			return errOut(err)
		}
		time.Sleep(15 * time.Millisecond)
		o := op(s)
		if err := unix.Fstat(s.vfd, &after); err != nil {
			return errOut(err)
		}
		changed := func(a, b unix.Timespec) string {
			if a == b {
				return "unchanged"
			}
			return "changed"
		}
		t := fmt.Sprintf("mtime %s, ctime %s", changed(before.Mtim, after.Mtim), changed(before.Ctim, after.Ctim))
		if o.info != "" {
			o.info += "; " + t
		} else {
			o.info = t
		}
		return o
	})
}

// flagString formats open(2) flags.
func flagString(flags int) string {
	var parts []string
	switch flags & unix.O_ACCMODE {
	case unix.O_RDONLY:
		parts = append(parts, "O_RDONLY")
	case unix.O_WRONLY:
		parts = append(parts, "O_WRONLY")
	case unix.O_RDWR:
		parts = append(parts, "O_RDWR")
	default:
		parts = append(parts, "O_ACCMODE")
	}
	rest := flags &^ unix.O_ACCMODE
	for _, f := range []struct {
		bit  int
		name string
	}{
		{unix.O_CREAT, "O_CREAT"}, {unix.O_EXCL, "O_EXCL"}, {unix.O_TRUNC, "O_TRUNC"},
		{unix.O_APPEND, "O_APPEND"}, {unix.O_DIRECT, "O_DIRECT"}, {unix.O_SYNC, "O_SYNC"},
		{unix.O_DSYNC, "O_DSYNC"}, {unix.O_PATH, "O_PATH"}, {unix.O_NOATIME, "O_NOATIME"},
		{unix.O_NONBLOCK, "O_NONBLOCK"},
	} {
		if rest&f.bit == f.bit {
			parts = append(parts, f.name)
			rest &^= f.bit
		}
	}
	if rest != 0 {
		parts = append(parts, fmt.Sprintf("%#x", rest))
	}
	return strings.Join(parts, "|")
}

func whenceString(w int) string {
	switch w {
	case unix.SEEK_SET:
		return "SEEK_SET"
	case unix.SEEK_CUR:
		return "SEEK_CUR"
	case unix.SEEK_END:
		return "SEEK_END"
	case unix.SEEK_DATA:
		return "SEEK_DATA"
	case unix.SEEK_HOLE:
		return "SEEK_HOLE"
	}
	return strconv.Itoa(w)
}

func fallocString(mode uint32) string {
	if mode == 0 {
		return "0"
	}
	var parts []string
	for _, f := range []struct {
		bit  uint32
		name string
	}{
		{unix.FALLOC_FL_KEEP_SIZE, "KEEP_SIZE"}, {unix.FALLOC_FL_PUNCH_HOLE, "PUNCH_HOLE"},
		{unix.FALLOC_FL_COLLAPSE_RANGE, "COLLAPSE_RANGE"}, {unix.FALLOC_FL_ZERO_RANGE, "ZERO_RANGE"},
		{unix.FALLOC_FL_INSERT_RANGE, "INSERT_RANGE"}, {unix.FALLOC_FL_UNSHARE_RANGE, "UNSHARE_RANGE"},
	} {
		if mode&f.bit != 0 {
			parts = append(parts, f.name)
			mode &^= f.bit
		}
	}
	if mode != 0 {
		parts = append(parts, fmt.Sprintf("%#x", mode))
	}
	return strings.Join(parts, "|")
}
