package bytestore

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/internal/testenv"
)

// maxOff is the largest file offset, where tmpfs's EFBIG/EINVAL edges are.
const maxOff = math.MaxInt64

var pg = int64(os.Getpagesize())

// file is what both a Store and the tmpfs oracle offer, so that one
// operation sequence can run on both.
type file interface {
	WriteAt(p []byte, off int64) (int, error)
	ReadAt(p []byte, off int64) (int, error)
	Truncate(size int64) error
	Fallocate(mode uint32, off, length int64) error
	Seek(off int64, whence int) (int64, error)
	Stat() (unix.Stat_t, error)
	Chmod(mode uint32) error
}

// tmpfsFile is the oracle: a plain file on a real tmpfs, driven with the
// same system calls a program would use.
type tmpfsFile struct{ fd int }

func (f *tmpfsFile) WriteAt(p []byte, off int64) (int, error) {
	return count(unix.Pwrite(f.fd, p, off))
}
func (f *tmpfsFile) ReadAt(p []byte, off int64) (int, error) { return count(unix.Pread(f.fd, p, off)) }
func (f *tmpfsFile) Truncate(size int64) error               { return errnoOf(unix.Ftruncate(f.fd, size)) }
func (f *tmpfsFile) Fallocate(mode uint32, off, length int64) error {
	return errnoOf(unix.Fallocate(f.fd, mode, off, length))
}
func (f *tmpfsFile) Seek(off int64, whence int) (int64, error) {
	r, err := unix.Seek(f.fd, off, whence)
	if err != nil {
		return 0, errnoOf(err)
	}
	return r, nil
}
func (f *tmpfsFile) Stat() (unix.Stat_t, error) {
	var st unix.Stat_t
	return st, errnoOf(unix.Fstat(f.fd, &st))
}
func (f *tmpfsFile) Chmod(mode uint32) error { return errnoOf(unix.Fchmod(f.fd, mode)) }

// tmpfsOptions is the mount option string of a tmpfs with the capacity.
func tmpfsOptions(capacity int64) string {
	if capacity == 0 {
		return ""
	}
	return fmt.Sprintf("size=%d", capacity)
}

// newOracleIn creates the oracle file, mode 0600 like a new Store, in dir.
func newOracleIn(t testing.TB, dir string) *tmpfsFile {
	t.Helper()
	fd, err := unix.Open(filepath.Join(dir, "f"), unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatalf("create oracle file: %v", err)
	}
	if err := unix.Fchmod(fd, 0o600); err != nil {
		t.Fatal(err)
	}
	return &tmpfsFile{fd: fd}
}

// closeOracle closes and unlinks the oracle so that its tmpfs is empty again.
func closeOracle(t testing.TB, dir string, f *tmpfsFile) {
	unix.Close(f.fd)
	if err := os.Remove(filepath.Join(dir, "f")); err != nil {
		t.Fatal(err)
	}
}

func openStore(t testing.TB, kind Kind, capacity int64) *Store {
	t.Helper()
	s, err := New(Options{Capacity: capacity, Kind: kind})
	if err != nil {
		t.Fatalf("New(%v, capacity %d): %v", kind, capacity, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type opKind int

const (
	opWrite opKind = iota
	opRead
	opTruncate
	opFallocate
	opSeek
	opChmod
)

// op is one operation of a sequence. Writes store a pattern derived from
// seed, so that different writes leave different bytes.
type op struct {
	kind   opKind
	off, n int64
	mode   uint32
	whence int
	seed   byte
}

func W(off, n int64) op               { return op{kind: opWrite, off: off, n: n, seed: byte(off ^ n)} }
func R(off, n int64) op               { return op{kind: opRead, off: off, n: n} }
func T(size int64) op                 { return op{kind: opTruncate, off: size} }
func F(mode uint32, off, n int64) op  { return op{kind: opFallocate, mode: mode, off: off, n: n} }
func SeekOp(off int64, whence int) op { return op{kind: opSeek, off: off, whence: whence} }
func ChmodOp(mode uint32) op          { return op{kind: opChmod, mode: mode} }
func punch(off, n int64) op           { return F(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n) }
func keep(off, n int64) op            { return F(unix.FALLOC_FL_KEEP_SIZE, off, n) }
func alloc(off, n int64) op           { return F(0, off, n) }
func (o op) String() string {
	switch o.kind {
	case opWrite:
		return fmt.Sprintf("pwrite(off=%d, n=%d)", o.off, o.n)
	case opRead:
		return fmt.Sprintf("pread(off=%d, n=%d)", o.off, o.n)
	case opTruncate:
		return fmt.Sprintf("ftruncate(%d)", o.off)
	case opFallocate:
		return fmt.Sprintf("fallocate(mode=%#x, off=%d, len=%d)", o.mode, o.off, o.n)
	case opSeek:
		return fmt.Sprintf("lseek(%d, whence=%d)", o.off, o.whence)
	case opChmod:
		return fmt.Sprintf("fchmod(%#o)", o.mode)
	}
	return "?"
}

// maxBuf bounds the buffers of reads and writes in the tests.
const maxBuf = 1 << 20

func pattern(seed byte, n int64) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>12)
	}
	return b
}

// result is everything an operation returns.
type result struct {
	val   int64
	errno syscall.Errno
	data  []byte
}

func (r result) String() string {
	if r.errno != 0 {
		return fmt.Sprintf("%d, %v (%d)", r.val, r.errno, int(r.errno))
	}
	return fmt.Sprintf("%d, ok", r.val)
}

func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	panic(fmt.Sprintf("not an errno: %v (%T)", err, err))
}

func run(f file, o op) result {
	switch o.kind {
	case opWrite:
		n, err := f.WriteAt(pattern(o.seed, min(max(o.n, 0), maxBuf)), o.off)
		return result{val: int64(n), errno: errno(err)}
	case opRead:
		buf := make([]byte, min(max(o.n, 0), maxBuf))
		n, err := f.ReadAt(buf, o.off)
		return result{val: int64(n), errno: errno(err), data: buf[:n]}
	case opTruncate:
		return result{errno: errno(f.Truncate(o.off))}
	case opFallocate:
		return result{errno: errno(f.Fallocate(o.mode, o.off, o.n))}
	case opSeek:
		r, err := f.Seek(o.off, o.whence)
		return result{val: r, errno: errno(err)}
	case opChmod:
		return result{errno: errno(f.Chmod(o.mode))}
	}
	panic("bad op")
}

// differ applies operations to a store and to the oracle and fails the test
// at the first difference in a result or in the files' state.
type differ struct {
	t           testing.TB
	store       file
	oracle      file
	interesting map[int64]bool
	prevS       unix.Stat_t
	prevO       unix.Stat_t
	history     []string
	// full makes check compare the whole content and seek map after
	// every operation (the fuzzer does it only at the end, for speed).
	full bool
}

func newDiffer(t testing.TB, store, oracle file) *differ {
	d := &differ{t: t, store: store, oracle: oracle, interesting: map[int64]bool{}, full: true}
	d.prevS, _ = store.Stat()
	d.prevO, _ = oracle.Stat()
	return d
}

func (d *differ) fail(format string, args ...any) {
	d.t.Helper()
	d.t.Fatalf("after:\n  %s\n%s", joinLines(d.history), fmt.Sprintf(format, args...))
}

func joinLines(l []string) string {
	var b bytes.Buffer
	for i, s := range l {
		if i > 0 {
			b.WriteString("\n  ")
		}
		b.WriteString(s)
	}
	return b.String()
}

func (d *differ) note(offs ...int64) {
	for _, o := range offs {
		for _, x := range []int64{o - 1, o, o + 1, o / pg * pg, o/pg*pg - 1, o/pg*pg + pg, o/pg*pg + pg - 1} {
			if x >= -1 && x <= maxOff && x >= o-2*pg { // x >= o-2pg rejects overflowed values
				d.interesting[x] = true
			}
		}
	}
}

// apply runs o on both files and compares the results and the state.
func (d *differ) apply(o op) {
	d.t.Helper()
	rs := run(d.store, o)
	ro := run(d.oracle, o)
	d.history = append(d.history, fmt.Sprintf("%v = %v", o, ro))
	if rs.val != ro.val || rs.errno != ro.errno {
		d.fail("%v: store returned %v, tmpfs %v", o, rs, ro)
	}
	if !bytes.Equal(rs.data, ro.data) {
		d.fail("%v: store read other bytes than tmpfs", o)
	}
	if o.n > 0 && o.off <= maxOff-o.n {
		d.note(o.off, o.off+o.n)
	} else {
		d.note(o.off)
	}
	d.check()
}

// check compares the state of the two files: size, blocks, mode, whether
// mtime and ctime moved, SEEK_DATA/SEEK_HOLE at every boundary seen so far,
// the data/hole map and the bytes.
func (d *differ) check() {
	d.t.Helper()
	ss, err1 := d.store.Stat()
	so, err2 := d.oracle.Stat()
	if err1 != nil || err2 != nil {
		d.fail("stat: %v, %v", err1, err2)
	}
	if ss.Size != so.Size || ss.Blocks != so.Blocks || ss.Mode&0o7777 != so.Mode&0o7777 {
		d.fail("stat differs: store size=%d blocks=%d mode=%#o, tmpfs size=%d blocks=%d mode=%#o",
			ss.Size, ss.Blocks, ss.Mode&0o7777, so.Size, so.Blocks, so.Mode&0o7777)
	}
	// Both are shmem files with multigrain timestamps: a change after a
	// stat is always visible, so "did it move" is deterministic.
	ms, mo := ss.Mtim != d.prevS.Mtim, so.Mtim != d.prevO.Mtim
	cs, co := ss.Ctim != d.prevS.Ctim, so.Ctim != d.prevO.Ctim
	if ms != mo || cs != co {
		d.fail("times differ: store mtime moved=%v ctime moved=%v, tmpfs mtime moved=%v ctime moved=%v", ms, cs, mo, co)
	}
	d.prevS, d.prevO = ss, so
	if d.full {
		d.checkContent(so.Size)
	}
}

func (d *differ) checkContent(size int64) {
	d.t.Helper()
	d.note(0, size)
	offs := make([]int64, 0, len(d.interesting))
	for o := range d.interesting {
		offs = append(offs, o)
	}
	slices.Sort(offs)
	for _, o := range offs {
		for _, wh := range []int{unix.SEEK_DATA, unix.SEEK_HOLE} {
			a, e1 := d.store.Seek(o, wh)
			b, e2 := d.oracle.Seek(o, wh)
			if a != b || errno(e1) != errno(e2) {
				d.fail("lseek(%d, %d): store %d %v, tmpfs %d %v", o, wh, a, e1, b, e2)
			}
		}
	}
	if ms, mo := seekMap(d.store), seekMap(d.oracle); !slices.Equal(ms, mo) {
		d.fail("data/hole map: store %v, tmpfs %v", ms, mo)
	}
	if size <= 4<<20 {
		a, b := readAll(d.store, size), readAll(d.oracle, size)
		if !bytes.Equal(a, b) {
			d.fail("content differs (size %d)", size)
		}
		return
	}
	for _, o := range offs {
		o = max(o/pg*pg-pg, 0)
		n := min(3*pg, maxOff-o)
		a, b := make([]byte, n), make([]byte, n)
		n1, e1 := d.store.ReadAt(a, o)
		n2, e2 := d.oracle.ReadAt(b, o)
		if n1 != n2 || errno(e1) != errno(e2) || !bytes.Equal(a[:n1], b[:n2]) {
			d.fail("content at %d differs: store %d %v, tmpfs %d %v", o, n1, e1, n2, e2)
		}
	}
}

// seekMap lists the data/hole boundaries from 0 onwards, as a program that
// copies a sparse file would discover them.
func seekMap(f file) []int64 {
	var m []int64
	pos := int64(0)
	for i := 0; i < 64; i++ {
		d, err := f.Seek(pos, unix.SEEK_DATA)
		if err != nil {
			return append(m, -int64(errno(err)))
		}
		h, err := f.Seek(d, unix.SEEK_HOLE)
		if err != nil {
			return append(m, d, -int64(errno(err)))
		}
		m = append(m, d, h)
		if h <= d {
			return m
		}
		pos = h
	}
	return m
}

func readAll(f file, size int64) []byte {
	buf := make([]byte, size)
	n, _ := f.ReadAt(buf, 0)
	return buf[:n]
}

// differential runs ops on a store of the kind and on a file in a fresh
// tmpfs with the same capacity.
func differential(t *testing.T, kind Kind, capacity int64, ops []op) {
	t.Helper()
	dir := testenv.Tmpfs(t, tmpfsOptions(capacity))
	oracle := newOracleIn(t, dir)
	t.Cleanup(func() { unix.Close(oracle.fd) })
	s := openStore(t, kind, capacity)
	d := newDiffer(t, s, oracle)
	for _, o := range ops {
		d.apply(o)
	}
}
