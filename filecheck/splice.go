package filecheck

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The check semantics/splice-read: the calls that read a file without a
// user buffer (sendfile(2), splice(2), copy_file_range(2)) must give what
// read(2) gives. They take another path through the kernel than read(2)
// does: on Linux 6.18 sendfile and splice from a FUSE file opened with
// FOPEN_DIRECT_IO read the inode's page cache (filemap_splice_read), so a
// file whose size shows 0 gives 0 bytes to busybox cat (which uses
// sendfile) and one with a size can give bytes the page cache kept from
// before a write, while read(2) of the same descriptor is right.

// plumbing is what the splice steps read into, shared by both sides (the
// steps of a pair run one side after the other): a pipe whose read end does
// not block, so that draining it stops when it is empty, and a scratch file
// beside the oracle, on tmpfs.
type plumbing struct {
	pr, pw  int
	scratch int
}

// newPlumbing makes the pipe and the scratch file; the check fails if it
// cannot.
func (p *pair) newPlumbing() *plumbing {
	pl, err := makePlumbing(filepath.Dir(p.r.oraclePath))
	if err != nil {
		p.failf("%v", err)
	}
	return pl
}

// makePlumbing makes the pipe and a scratch file in dir.
func makePlumbing(dir string) (*plumbing, error) {
	pl := &plumbing{pr: -1, pw: -1, scratch: -1}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("cannot make a pipe for the splice steps: %v", err)
	}
	pl.pr, pl.pw = fds[0], fds[1]
	if err := unix.SetNonblock(pl.pr, true); err != nil {
		pl.close()
		return nil, fmt.Errorf("cannot make the pipe's read end non-blocking: %v", err)
	}
	fd, err := scratchFile(dir)
	if err != nil {
		pl.close()
		return nil, fmt.Errorf("cannot make a scratch file in %s for the splice steps: %v", dir, err)
	}
	pl.scratch = fd
	return pl, nil
}

// scratchFile opens a new file in dir that has no name, so that nothing is
// left behind: O_TMPFILE, or where the file system lacks it, a file
// removed as soon as it is open.
func scratchFile(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return fd, nil
	}
	f, err := os.CreateTemp(dir, "filecheck-scratch-*")
	if err != nil {
		return -1, err
	}
	defer f.Close()
	os.Remove(f.Name())
	return unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
}

func (pl *plumbing) close() {
	for _, fd := range []*int{&pl.pr, &pl.pw, &pl.scratch} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// drain reads whatever the pipe holds.
func (pl *plumbing) drain() []byte {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(pl.pr, buf)
		if n <= 0 || err != nil {
			return out
		}
		out = append(out, buf[:n]...)
	}
}

// emptyScratch truncates the scratch file and rewinds its offset.
func (pl *plumbing) emptyScratch() error {
	if err := unix.Ftruncate(pl.scratch, 0); err != nil {
		return err
	}
	_, err := unix.Seek(pl.scratch, 0, unix.SEEK_SET)
	return err
}

// offArg formats an offset argument that is a pointer, NULL for none.
func offArg(off *int64) string {
	if off == nil {
		return "NULL"
	}
	return fmt.Sprintf("&%d", *off)
}

// offInfo reports where an offset argument was left (the call updates it).
func offInfo(o outcome, off *int64) outcome {
	if off != nil && o.err == 0 {
		o.info = fmt.Sprintf("offset now %d", *off)
	}
	return o
}

// toPipe runs call, which moves bytes from a side's descriptor into the
// pipe, and returns its result with the bytes it put there.
func (pl *plumbing) toPipe(call func() (int64, error)) outcome {
	n, err := call()
	return movedOut(n, err, pl.drain(), "the pipe")
}

// movedOut is the outcome of a call that moved bytes, which are now in
// dest: the count and the bytes, or the error and whether it moved some
// bytes all the same.
func movedOut(n int64, err error, data []byte, dest string) outcome {
	if err != nil {
		o := errOut(err)
		if len(data) > 0 {
			o.info = fmt.Sprintf("yet %s holds %d bytes", dest, len(data))
		}
		return o
	}
	return outcome{n: n, data: data, hasData: true}
}

// toScratch runs call, which moves bytes from a side's descriptor into the
// emptied scratch file, and returns its result with what the scratch file
// then holds.
func (pl *plumbing) toScratch(call func() (int64, error)) outcome {
	if err := pl.emptyScratch(); err != nil {
		return outcome{n: -1, err: unix.EIO, info: "emptying the scratch file: " + err.Error()}
	}
	n, err := call()
	data, rerr := readAll(pl.scratch, maxWholeRead)
	if rerr != nil {
		return outcome{n: -1, err: unix.EIO, info: "reading the scratch file: " + rerr.Error()}
	}
	return movedOut(n, err, data, "the tmpfs file")
}

// A sink is where a step moves bytes: the pipe or the scratch file.
type sink bool

const (
	toPipe sink = false
	toFile sink = true
)

// move runs one step that moves bytes from h (from *off, which it
// advances, or from the descriptor's offset, which it moves, when off is
// nil) into the sink by fn(from, off, to), and compares the result, the
// bytes moved and where *off was left. accept is doAccepting's.
func (p *pair) move(pl *plumbing, to sink, call string, h fdh, off *int64, fn func(from int, off *int64, to int) (int, error), accept func(file, oracle outcome) bool) {
	dest, fd := pl.toPipe, pl.pw
	if to == toFile {
		dest, fd = pl.toScratch, pl.scratch
		call += ", then read the tmpfs file"
	}
	p.doAccepting(call, func(s *side) outcome {
		o := offCopy(off)
		return offInfo(dest(func() (int64, error) {
			n, err := fn(s.fd(h), o, fd)
			return int64(n), err
		}), o)
	}, accept)
}

// sendfile is sendfile(to, h, off, count). Into the scratch file the
// kernel splices through an internal pipe until count bytes or the end, so
// sizes beyond a pipe's capacity come whole.
func (p *pair) sendfile(pl *plumbing, to sink, h fdh, off *int64, count int) {
	dst := "pipe"
	if to == toFile {
		dst = "tmpfs file"
	}
	p.move(pl, to, fmt.Sprintf("sendfile(%s, %s, %s, %d)", dst, h, offArg(off), count), h, off,
		func(from int, o *int64, to int) (int, error) { return unix.Sendfile(to, from, o, count) }, nil)
}

// splice is splice(h, off, pipe, NULL, count, 0).
func (p *pair) splice(pl *plumbing, h fdh, off *int64, count int) {
	p.move(pl, toPipe, fmt.Sprintf("splice(%s, %s, pipe, NULL, %d, 0)", h, offArg(off), count), h, off,
		func(from int, o *int64, to int) (int, error) {
			n, err := unix.Splice(from, o, to, nil, count, 0)
			return int(n), err
		}, nil)
}

// at is an offset argument.
func at(off int64) *int64 { return &off }

// offCopy gives each side its own copy of an offset argument.
func offCopy(off *int64) *int64 {
	if off == nil {
		return nil
	}
	o := *off
	return &o
}

// copyRefusals are the errnos with which copy_file_range(2) says "not
// here, copy another way" (cp, glibc and Go's io.Copy fall back to read
// and write on them): EXDEV between file systems that cannot copy to each
// other (a FUSE file to tmpfs, on Linux 5.19 and later), EOPNOTSUPP and
// ENOSYS from a file system without it, EINVAL from kernels before 5.3
// and file systems that reject the arguments.
var copyRefusals = map[unix.Errno]bool{unix.EXDEV: true, unix.EOPNOTSUPP: true, unix.ENOSYS: true, unix.EINVAL: true}

// copyRefused accepts a file under test that refused copy_file_range with
// one of copyRefusals, leaving the destination untouched (no info), where
// tmpfs copied.
func copyRefused(file, oracle outcome) bool {
	return copyRefusals[file.err] && file.info == "" && file.fault == "" && oracle.err == 0
}

// copyFileRange is copy_file_range(h, off, scratch, &0, count, 0). It
// passes when both copy the same bytes, or when the file under test refuses
// as copyRefused allows.
func (p *pair) copyFileRange(pl *plumbing, h fdh, off *int64, count int) {
	p.move(pl, toFile, fmt.Sprintf("copy_file_range(%s, %s, tmpfs file, &0, %d, 0)", h, offArg(off), count), h, off,
		func(from int, o *int64, to int) (int, error) {
			var out int64
			return unix.CopyFileRange(from, o, to, &out, count, 0)
		}, copyRefused)
}

// semSpliceRead writes files of several sizes (empty, one byte, less than
// a page, a page, more than a page and not page-aligned) and reads each
// back with read(2), sendfile(2) into a pipe and into a tmpfs file (from
// the descriptor's offset and from an offset given), splice(2) into a pipe
// (the same two ways) and copy_file_range(2) into a tmpfs file, through a
// descriptor opened afresh after the writer closed, as cat does. Then it
// overwrites, extends and shrinks a file that sendfile has read, through
// another descriptor, and reads it again the same ways: what the page
// cache kept from before must not show. Last, a copy_file_range within the
// file, where the kernel falls back to splicing when the file system does
// not copy itself.
func semSpliceRead(p *pair) {
	pl := p.newPlumbing()
	defer pl.close()
	const slack = 100 // every read asks for more than there is
	sizes := []int{0, 1, 100, 4096, 5000, 12345}
	var r fdh
	for i, n := range sizes {
		w := p.open(wronly|unix.O_TRUNC, 0)
		p.write(w, pattern(n, i))
		p.close(w)
		r = p.open(rdonly, 0)
		p.pread(r, n+slack, 0)
		p.sendfile(pl, toPipe, r, nil, n+slack)
		p.pos(r)
		p.sendfile(pl, toPipe, r, nil, slack) // at the end: 0
		p.lseek(r, 1, unix.SEEK_SET)
		p.splice(pl, r, nil, n+slack)
		p.pos(r)
		for _, off := range []int64{0, 3, int64(n), int64(n) + 10} {
			p.sendfile(pl, toPipe, r, &off, n+slack)
			p.splice(pl, r, &off, n+slack)
		}
		p.pos(r) // the offsets given leave the descriptor's alone
		p.sendfile(pl, toFile, r, at(0), n+slack)
		p.copyFileRange(pl, r, at(0), n+slack)
		if i < len(sizes)-1 {
			p.close(r)
		}
	}

	// r has read the last file through the page cache, and stays open
	// while another descriptor changes the file.
	w := p.open(wronly, 0)
	size := sizes[len(sizes)-1]
	reread := func(count int) {
		p.pread(r, count, 0)
		p.sendfile(pl, toPipe, r, at(0), count)
		p.splice(pl, r, at(0), count)
		p.sendfile(pl, toFile, r, at(0), count)
	}
	p.write(w, []byte("first"))
	p.pwrite(w, []byte("OVERWRITTEN"), 4090) // across a page boundary
	reread(size + 100)
	p.lseek(r, 0, unix.SEEK_SET)
	p.sendfile(pl, toPipe, r, nil, size+100)
	p.pwrite(w, pattern(3000, 7), int64(size)) // extends it
	reread(size + 3100)
	p.ftruncate(w, 5000)
	reread(size + 3100)
	p.pwrite(w, []byte("regrown"), 9000) // a hole where the old bytes were
	reread(size + 3100)
	p.close(w)
	p.close(r)

	// More than a pipe holds, whole through a tmpfs file.
	w = p.open(wronly|unix.O_TRUNC, 0)
	p.write(w, pattern(200000, 8))
	p.close(w)
	r = p.open(rdonly, 0)
	p.sendfile(pl, toFile, r, nil, 250000)
	p.pos(r)
	p.sendfile(pl, toFile, r, at(0), 250000)
	p.copyFileRange(pl, r, at(4097), 250000)

	// Within the file: the source range copied past its end.
	h := p.open(rdwr, 0)
	res := p.doAccepting(fmt.Sprintf("copy_file_range(%s, &10, %s, &300000, 150000, 0)", h, h), func(s *side) outcome {
		in, out := int64(10), int64(300000)
		n, err := unix.CopyFileRange(s.fd(h), &in, s.fd(h), &out, 150000, 0)
		return nOut(int64(n), err)
	}, copyRefused)
	if res[fileSide].err == 0 {
		p.sendfile(pl, toFile, r, at(0), 500000)
		p.contents()
	}
}
