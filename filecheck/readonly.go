package filecheck

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
)

// The read-only checks (Config.ReadOnly) never write to the file, so they
// take any readable regular file: the kernel's /proc and /sys files, and
// generated files that refuse writes or ignore truncation. There is no
// tmpfs twin to compare with; the oracle is the file's own read(2). Every
// step reads the file one way to its end and compares what it got with a
// reference read(2) to EOF through a descriptor of its own, taken just
// before the step and just after it: content may change between two opens
// (uptime, free memory). The step passes when it got either reference
// exactly, or either one after numbers and the blanks that align them are
// normalized (content that moves: digits change, a column widens); when it
// matches neither and the two references differ, the content moved while
// it ran, and the step is tried again, up to roTries times.

// roTries is how often a step is tried while the content keeps moving
// under it.
const roTries = 5

// roSlack is how many bytes a segment read from an offset of content that
// moved may be longer or shorter than the reference's tail from there.
const roSlack = 8

// pipeChunk is what one sendfile or splice asks for: half a default pipe,
// which the drained pipe always has room for.
const pipeChunk = 32 << 10

// readOnlyChecks lists the read-only checks in the order Run runs them.
func readOnlyChecks() []*check {
	return []*check{
		{name: "read-only/size", run: roRun(roSize)},
		{name: "read-only/read", run: roRun(roRead)},
		{name: "read-only/readv", run: roRun(roReadv)},
		{name: "read-only/pread", run: roRun(roPread)},
		{name: "read-only/seek-read", run: roRun(roSeekRead)},
		{name: "read-only/sendfile", run: roRun(roSendfile)},
		{name: "read-only/splice", run: roRun(roSplice)},
		{name: "read-only/copy-file-range", run: roRun(roCopyFileRange)},
		{name: "read-only/mmap-private", run: roRun(roMmap)},
	}
}

// roCheck runs the steps of one read-only check.
type roCheck struct {
	r     *runner
	path  string
	step  int
	notes []string
}

func roRun(fn func(c *roCheck)) func(r *runner, ch *check) Result {
	return func(r *runner, ch *check) Result {
		c := &roCheck{r: r, path: r.cfg.Path}
		res := execSteps(ch.name, func() { fn(c) })
		res.Note = strings.Join(c.notes, "; ")
		return res
	}
}

// notef adds a note to the check's line, once.
func (c *roCheck) notef(format string, args ...any) {
	n := fmt.Sprintf(format, args...)
	for _, have := range c.notes {
		if have == n {
			return
		}
	}
	c.notes = append(c.notes, n)
}

func (c *roCheck) failf(format string, args ...any) {
	panic(&checkFailure{reason: fmt.Sprintf(format, args...)})
}

// open opens the file for reading; the caller closes the descriptor.
func (c *roCheck) open() int {
	fd, err := unix.Open(c.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		c.failf("open(PATH, O_RDONLY): %v", err)
	}
	return fd
}

// reference reads the file with read(2) to its end through a descriptor of
// its own.
func (c *roCheck) reference() []byte {
	fd := c.open()
	defer unix.Close(fd)
	data, err := readBuffered(fd, 64<<10, readLimit)
	if err != nil {
		c.failf("the reference read(2) to EOF failed after %d bytes: %v", len(data), err)
	}
	return data
}

// readLimit bounds what one step reads: a little more than maxWholeRead.
const readLimit = maxWholeRead + 1

// pump calls next until it gives no bytes or an error, or until it has
// given limit bytes or more, and returns all it gave. EINTR is retried.
func pump(limit int, next func() ([]byte, error)) ([]byte, error) {
	var out []byte
	for len(out) < limit {
		b, err := next()
		if errors.Is(err, unix.EINTR) {
			continue
		}
		out = append(out, b...)
		if err != nil || len(b) == 0 {
			return out, err
		}
	}
	return out, nil
}

// readBuffered reads fd with read(2) into a buffer of size bytes to EOF,
// or until it has limit bytes or more.
func readBuffered(fd, size, limit int) ([]byte, error) {
	buf := make([]byte, size)
	return pump(limit, func() ([]byte, error) {
		n, err := unix.Read(fd, buf)
		return buf[:max(n, 0)], err
	})
}

// A shape says which part of a reference a step's bytes must be.
type shape struct {
	// from: the bytes from this offset to EOF (0: the whole content).
	from int
	// mapped: the bytes of a mapping, whole pages up to the first fault:
	// the content followed by zeros, or the start of it when a fault came
	// before its end.
	mapped bool
}

// number is a number with the blanks before it that align it in a column:
// what changes in content that moves (counters, free memory, uptime).
var number = regexp.MustCompile(`[ \t]*[0-9]+(\.[0-9]+)?`)

func normalize(b []byte) []byte { return number.ReplaceAll(b, []byte(" N")) }

const digits = "0123456789."

// same reports whether a and b are the same content, exactly or after
// normalizing numbers.
func same(a, b []byte) bool {
	return bytes.Equal(a, b) || bytes.Equal(normalize(a), normalize(b))
}

// expect is the part of ref that got should be.
func (s shape) expect(got, ref []byte) []byte {
	switch {
	case s.mapped && len(got) < len(ref):
		return ref[:len(got)]
	case s.mapped:
		return ref
	}
	return ref[min(s.from, len(ref)):]
}

// match reports whether got is the part of ref the shape says.
func (s shape) match(got, ref []byte) bool {
	want := s.expect(got, ref)
	if bytes.Equal(got, want) {
		return true
	}
	switch {
	case s.mapped && len(got) < len(ref):
		// Cut by a fault: a number at the cut may be cut too.
		return bytes.HasPrefix(normalize(ref), normalize(bytes.TrimRight(got, digits)))
	case s.mapped:
		// The tail of the last page reads zeros.
		return same(bytes.TrimRight(got, "\x00"), bytes.TrimRight(ref, "\x00"))
	case s.from == 0:
		return same(got, ref)
	}
	// A segment: where the offset fell, a number may be cut; and if the
	// content moved before the offset, the segment starts a little earlier
	// or later in it.
	if len(got) == 0 {
		return len(want) == 0
	}
	g := normalize(bytes.TrimLeft(got, digits))
	return bytes.Equal(g, normalize(bytes.TrimLeft(want, digits))) ||
		(bytes.HasSuffix(normalize(ref), g) && abs(len(got)-len(want)) <= roSlack)
}

func abs(n int) int { return max(n, -n) }

// A refusal says whether err from a step is one on which callers fall back
// to read(2), and if so the note for the check's line ("" if not).
type refusal func(err error) string

// fallsBack accepts the errnos given: the step passes with a note.
func fallsBack(what string, errnos ...unix.Errno) refusal {
	return func(err error) string {
		var e unix.Errno
		if !errors.As(err, &e) {
			return ""
		}
		for _, x := range errnos {
			if e == x {
				return fmt.Sprintf("%s refused with %s, on which callers fall back to read(2)", what, errnoName(e))
			}
		}
		return ""
	}
}

// do runs one step: fn reads the file one way (ref is the reference taken
// just before it), and its bytes must be the part of a reference that sh
// says. An error fails the step unless it came before any byte and refused
// accepts it.
func (c *roCheck) do(call string, sh shape, refused refusal, fn func(ref []byte) ([]byte, error)) {
	c.step++
	for try := 1; ; try++ {
		if err := c.r.ctx.Err(); err != nil {
			panic(&checkSkip{reason: fmt.Sprintf("interrupted at step %d: %v", c.step, err)})
		}
		before := c.reference()
		got, err := fn(before)
		after := c.reference()
		if err != nil {
			if len(got) == 0 && refused != nil {
				if note := refused(err); note != "" {
					c.notef("%s", note)
					return
				}
			}
			ref := "read(2) gives " + bytesOut(before).String()
			if !bytes.Equal(before, after) {
				ref += fmt.Sprintf(", then %d bytes", len(after))
			}
			c.fail(call, fmt.Sprintf("%s after %d bytes", errDesc(err), len(got)), ref)
		}
		if sh.match(got, before) || sh.match(got, after) {
			return
		}
		if bytes.Equal(before, after) || try == roTries {
			file, ref := describe(bytesOut(got), bytesOut(sh.expect(got, before)))
			ref = "read(2) gives " + ref
			if !bytes.Equal(before, after) {
				ref += fmt.Sprintf(" (after the step: %d bytes; tried %d times, the content moving)", len(after), try)
			}
			c.fail(call, file, ref)
		}
	}
}

// fail fails the step with what the file gave and what read(2) gave.
func (c *roCheck) fail(call, file, oracle string) {
	panic(&stepFailure{Diff{Step: c.step, Call: call, File: file, Oracle: oracle}})
}

func bytesOut(b []byte) outcome { return outcome{n: int64(len(b)), data: b, hasData: true} }

func errDesc(err error) string {
	var e unix.Errno
	if errors.As(err, &e) {
		return "-1 " + errnoName(e)
	}
	return err.Error()
}

// ---- The checks.

// roSize notes the size fstat(2) and lseek(SEEK_END) give next to the
// length read(2) gives: procfs shows 0, sysfs and this project's
// direct-I/O files one page. Information only: it never fails.
func roSize(c *roCheck) {
	ref := c.reference()
	fd := c.open()
	defer unix.Close(fd)
	var st unix.Stat_t
	stat := "fstat: "
	if err := unix.Fstat(fd, &st); err != nil {
		stat += errnoName(errnoOfErr(err))
	} else {
		stat += fmt.Sprintf("size %d", st.Size)
	}
	end := "lseek(SEEK_END): "
	if off, err := unix.Seek(fd, 0, unix.SEEK_END); err != nil {
		end += errnoName(errnoOfErr(err))
	} else {
		end += fmt.Sprint(off)
	}
	c.notef("%s, %s, read(2): %d bytes", stat, end, len(ref))
}

func errnoOfErr(err error) unix.Errno { return unix.Errno(errnoOf(err)) }

// smallReads is how far read(2) into a small buffer goes (across two page
// boundaries) before the rest is read into 64 KiB: a byte at a time, a big
// file served over FUSE would take minutes.
const smallReads = 8 << 10

// roRead reads the file through fresh descriptors with read(2) into
// buffers of 1, 7, 4096 and 65536 bytes (the small ones for the first
// smallReads bytes).
func roRead(c *roCheck) {
	for _, size := range []int{1, 7, 4096, 64 << 10} {
		call := fmt.Sprintf("open(PATH, O_RDONLY), read(fd, %d) to EOF", size)
		if size < 4096 {
			call = fmt.Sprintf("open(PATH, O_RDONLY), read(fd, %d) to byte %d, then read(fd, 65536) to EOF", size, smallReads)
		}
		c.do(call, shape{}, nil, func([]byte) ([]byte, error) {
			fd := c.open()
			defer unix.Close(fd)
			var head []byte
			if size < 4096 {
				var err error
				if head, err = readBuffered(fd, size, smallReads); err != nil || len(head) < smallReads {
					return head, err
				}
			}
			rest, err := readBuffered(fd, 64<<10, readLimit)
			return append(head, rest...), err
		})
	}
}

// roReadv reads the file through a fresh descriptor with readv(2) into
// buffers of 1, 7, 100, 4096 and 65536 bytes, over and over to EOF.
func roReadv(c *roCheck) {
	sizes := []int{1, 7, 100, 4096, 64 << 10}
	c.do(fmt.Sprintf("open(PATH, O_RDONLY), readv(fd, iov of %v bytes) to EOF", sizes), shape{}, nil, func([]byte) ([]byte, error) {
		fd := c.open()
		defer unix.Close(fd)
		iov := make([][]byte, len(sizes))
		for i, n := range sizes {
			iov[i] = make([]byte, n)
		}
		return pump(readLimit, func() ([]byte, error) {
			n, err := unix.Readv(fd, iov)
			var b []byte
			for _, v := range iov {
				b = append(b, v[:min(max(n-len(b), 0), len(v))]...)
			}
			return b, err
		})
	})
}

// preadFrom reads fd with pread(2) from off to EOF in 64 KiB pieces.
func preadFrom(fd int, off int64) ([]byte, error) {
	buf := make([]byte, 64<<10)
	return pump(readLimit, func() ([]byte, error) {
		n, err := unix.Pread(fd, buf, off)
		off += int64(max(n, 0))
		return buf[:max(n, 0)], err
	})
}

// roPread reads the file with pread(2) from offset 0 and from the middle of
// the content, through one descriptor, whose offset must stay 0.
func roPread(c *roCheck) {
	mid := len(c.reference()) / 2
	fd := c.open()
	defer unix.Close(fd)
	c.do("pread(fd, 65536, 0, ...) to EOF", shape{}, nil, func([]byte) ([]byte, error) { return preadFrom(fd, 0) })
	c.do(fmt.Sprintf("pread(fd, 65536, %d, ...) to EOF", mid), shape{from: mid}, nil, func([]byte) ([]byte, error) { return preadFrom(fd, int64(mid)) })
	c.step++
	if off, err := unix.Seek(fd, 0, unix.SEEK_CUR); err != nil || off != 0 {
		c.fail("lseek(fd, 0, SEEK_CUR) after pread", fmt.Sprintf("%d, %v", off, err), "0 (pread leaves the offset alone)")
	}
}

// seekRead moves fd's offset to off with lseek(SEEK_SET), which must
// return it, and reads to EOF.
func seekRead(fd int, off int) ([]byte, error) {
	got, err := unix.Seek(fd, int64(off), unix.SEEK_SET)
	if err != nil {
		return nil, fmt.Errorf("lseek: %w", err)
	}
	if got != int64(off) {
		return nil, fmt.Errorf("lseek returned %d", got)
	}
	return readBuffered(fd, 64<<10, readLimit)
}

// roSeekRead reads one descriptor to EOF, again from offset 0 after
// lseek(SEEK_SET), and from the middle; then a fresh descriptor from the
// middle before it read anything.
func roSeekRead(c *roCheck) {
	mid := len(c.reference()) / 2
	fd := c.open()
	defer unix.Close(fd)
	c.do("read(fd, 65536) to EOF", shape{}, nil, func([]byte) ([]byte, error) { return readBuffered(fd, 64<<10, readLimit) })
	c.do("lseek(fd, 0, SEEK_SET), read to EOF", shape{}, nil, func([]byte) ([]byte, error) { return seekRead(fd, 0) })
	c.do(fmt.Sprintf("lseek(fd, %d, SEEK_SET), read to EOF", mid), shape{from: mid}, nil, func([]byte) ([]byte, error) { return seekRead(fd, mid) })
	c.do(fmt.Sprintf("open(PATH, O_RDONLY), lseek(fd, %d, SEEK_SET), read to EOF", mid), shape{from: mid}, nil, func([]byte) ([]byte, error) {
		fd := c.open()
		defer unix.Close(fd)
		return seekRead(fd, mid)
	})
}

// spliceSteps reads the file into a pipe with move (sendfile or splice)
// through fresh descriptors: from the descriptor's offset, from offset 0
// given, and from the middle given. Failing with EINVAL or ENOSYS passes
// with a note (callers fall back to read(2)); 0 bytes or a short copy while
// read(2) gives the content fails: a silent loss.
func spliceSteps(c *roCheck, name string, move func(pw, fd int, off *int64, n int) (int, error)) {
	mid := len(c.reference()) / 2
	pl, err := makePlumbing(c.r.scratchDir)
	if err != nil {
		c.failf("%v", err)
	}
	defer pl.close()
	refused := fallsBack(name, unix.EINVAL, unix.ENOSYS)
	for _, start := range []int{-1, 0, mid} {
		call := fmt.Sprintf("open(PATH, O_RDONLY), %s(pipe, fd, NULL, %d) to EOF", name, pipeChunk)
		sh := shape{}
		if start >= 0 {
			call = fmt.Sprintf("open(PATH, O_RDONLY), %s(pipe, fd, &%d, %d) to EOF", name, start, pipeChunk)
			sh.from = start
		}
		c.do(call, sh, refused, func([]byte) ([]byte, error) {
			fd := c.open()
			defer unix.Close(fd)
			var off *int64
			if start >= 0 {
				off = at(int64(start))
			}
			return pump(readLimit, func() ([]byte, error) {
				_, err := move(pl.pw, fd, off, pipeChunk)
				return pl.drain(), err
			})
		})
	}
}

// roSendfile is sendfile(2) into a pipe, as busybox cat copies.
func roSendfile(c *roCheck) {
	spliceSteps(c, "sendfile", func(pw, fd int, off *int64, n int) (int, error) { return unix.Sendfile(pw, fd, off, n) })
}

// roSplice is splice(2) into a pipe.
func roSplice(c *roCheck) {
	spliceSteps(c, "splice", func(pw, fd int, off *int64, n int) (int, error) {
		k, err := unix.Splice(fd, off, pw, nil, n, 0)
		return int(k), err
	})
}

// roCopyFileRange is copy_file_range(2) into a scratch file (on tmpfs,
// unless Config.OracleDir says otherwise). Besides EINVAL and ENOSYS it may
// be refused with EXDEV (which the kernel gives between most file systems)
// and EOPNOTSUPP: copyRefusals.
func roCopyFileRange(c *roCheck) {
	pl, err := makePlumbing(c.r.scratchDir)
	if err != nil {
		c.failf("%v", err)
	}
	defer pl.close()
	var errnos []unix.Errno
	for e := range copyRefusals {
		errnos = append(errnos, e)
	}
	c.do(fmt.Sprintf("open(PATH, O_RDONLY), copy_file_range(fd, NULL, scratch, NULL, %d, 0) to EOF, read the scratch file", pipeChunk), shape{},
		fallsBack("copy_file_range", errnos...), func([]byte) ([]byte, error) {
			fd := c.open()
			defer unix.Close(fd)
			if err := pl.emptyScratch(); err != nil {
				c.failf("emptying the scratch file: %v", err)
			}
			var moved int
			var err error
			for moved < readLimit {
				var n int
				n, err = unix.CopyFileRange(fd, nil, pl.scratch, nil, pipeChunk, 0)
				if errors.Is(err, unix.EINTR) {
					continue
				}
				if err != nil || n <= 0 {
					break
				}
				moved += n
			}
			data, rerr := readAll(pl.scratch, maxWholeRead+1)
			if rerr != nil {
				c.failf("reading the scratch file: %v", rerr)
			}
			if err != nil && moved == 0 && len(data) > 0 {
				err = fmt.Errorf("%w, yet the scratch file holds %d bytes", err, len(data))
			}
			return data, err
		})
}

// errFirstFault is the outcome of a mapping whose first page faults.
var errFirstFault = errors.New("SIGBUS at the first access")

// roMmap maps the file MAP_PRIVATE in a child process (the process
// checking may be the file's server, which must not fault on its own
// mount) and loads it page by page up to the first fault. A refusal of
// mmap(2) (procfs: ENODEV) and a SIGBUS at the first access pass with a
// note; so do the file's own bytes; other bytes fail.
func roMmap(c *roCheck) {
	w, err := c.r.worker(0)
	if err != nil {
		c.failf("%v", err)
	}
	refused := func(err error) string {
		switch {
		case errors.Is(err, errFirstFault):
			return "mmap(2) MAP_PRIVATE: SIGBUS at the first access"
		case errors.Is(err, errMmapRefused):
			return "mmap(2) MAP_PRIVATE refused with " + strings.TrimPrefix(err.Error(), errMmapRefused.Error()+": ")
		}
		return ""
	}
	page := os.Getpagesize()
	c.do("in a child: open(PATH, O_RDONLY), mmap(NULL, LEN, PROT_READ, MAP_PRIVATE, fd, 0), load page by page", shape{mapped: true}, refused, func(ref []byte) ([]byte, error) {
		length := (max(len(ref), 1) + page - 1) / page * page
		timeout := c.r.cfg.CommandTimeout
		resp, err := w.call(request{Op: "map", Path: c.path, Flags: unix.O_RDONLY, Len: int64(length), Prot: unix.PROT_READ, MapFlags: unix.MAP_PRIVATE}, timeout)
		switch {
		case err != nil:
			c.failf("child process: %v", err)
		case resp.Errno != 0 && resp.Msg == "mmap":
			return nil, fmt.Errorf("%w: %s", errMmapRefused, errnoName(unix.Errno(resp.Errno)))
		case resp.Errno != 0 || resp.Msg != "":
			return nil, fmt.Errorf("%s in the child: %s", resp.Msg, errnoName(unix.Errno(resp.Errno)))
		}
		id := int(resp.N)
		defer c.r.unmapQuiet(id)
		var data []byte
		for off := 0; off < length; off += page {
			resp, err := w.call(request{Op: "mread", ID: id, Off: int64(off), Len: int64(page)}, timeout)
			if err != nil {
				c.failf("child process: %v", err)
			}
			if resp.Fault != "" {
				if off == 0 {
					return nil, errFirstFault
				}
				c.notef("mmap(2) MAP_PRIVATE: %d bytes of the content's %d, then SIGBUS", off, len(ref))
				break
			}
			data = append(data, resp.Data...)
		}
		return data, nil
	})
}

// errMmapRefused wraps the errno with which mmap(2) refused.
var errMmapRefused = errors.New("mmap refused")

// ---- Run's part.

// openReadOnly checks that the file is a regular file the caller can read,
// and picks the directory for the copy_file_range scratch file.
func (r *runner) openReadOnly() error {
	path := r.cfg.Path
	st, err := os.Stat(path)
	if err != nil {
		return usagef("cannot check %s: %v (give the path of an existing file)", path, err)
	}
	if !st.Mode().IsRegular() {
		return usagef("cannot check %s: it is a %s, not a regular file (give the path of a regular file)", path, fileKind(st.Mode()))
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return usagef("cannot open %s for reading: %v (the read-only checks read it)", path, err)
	}
	unix.Close(fd)
	r.scratchDir = r.cfg.OracleDir
	if r.scratchDir == "" {
		r.scratchDir = "/dev/shm"
		if !isTmpfs(r.scratchDir) {
			r.scratchDir = os.TempDir()
		}
	}
	if st, err := os.Stat(r.scratchDir); err != nil || !st.IsDir() {
		return usagef("%s is not a directory: pass --oracle DIR with a writable directory for the copy_file_range scratch file", r.scratchDir)
	}
	return nil
}
