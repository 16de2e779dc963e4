package ramfile_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/testenv"
	"github.com/ramproc/ramproc/ramfile"
)

// childEnv turns the test binary into a client process. Clients that mmap
// the mount or hammer it run in a child: a Go process that serves a FUSE
// mount can deadlock when it page-faults on its own mount.
const childEnv = "RAMFILE_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode, os.Args[len(os.Args)-2:]))
	}
	testenv.ExamplesNeedFUSE() // the examples mount, as a user's program does
	os.Exit(m.Run())
}

// mode is one way of serving the RAM file.
type mode struct {
	name   string
	pt     fusebridge.Passthrough
	kind   bytestore.Kind
	noOpen bool
}

// modes are the I/O paths a user can get: the kernel's passthrough (root),
// forwarding through the server (unprivileged), and forwarding onto a memfd
// whose capacity the store enforces itself.
var modes = []mode{
	{"passthrough", fusebridge.PassthroughRequired, bytestore.PrivateTmpfs, false},
	{"forwarded", fusebridge.PassthroughOff, bytestore.PrivateTmpfs, false},
	{"forwarded-memfd", fusebridge.PassthroughOff, bytestore.Memfd, false},
	{"no-open", fusebridge.PassthroughOff, bytestore.PrivateTmpfs, true},
}

// served is a RAM file mounted for one test.
type served struct {
	path  string
	srv   *fusebridge.Server
	store *bytestore.Store
}

func serve(t *testing.T, m mode, capacity int64) *served {
	t.Helper()
	testenv.RequireFUSE(t)
	return serveAt(t, filepath.Join(t.TempDir(), "mnt"), m, capacity)
}

func serveAt(t *testing.T, mnt string, m mode, capacity int64) *served {
	t.Helper()
	store, err := bytestore.New(bytestore.Options{Capacity: capacity, Kind: m.kind})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := fusebridge.Mount(mnt, fusebridge.Options{Passthrough: m.pt, NoOpen: m.noOpen, UnmountGrace: 200 * time.Millisecond,
		// Other users reach the file, as with ramproc mount as root: the
		// setuid/setgid cases act as the user nobody.
		AllowOther: os.Geteuid() == 0})
	if err != nil {
		store.Close()
		t.Fatal(err)
	}
	if _, err := srv.Create("ramfile", 0o666, ramfile.New(store)); err != nil {
		t.Fatal(err)
	}
	s := &served{path: filepath.Join(srv.Mountpoint(), "ramfile"), srv: srv, store: store}
	t.Cleanup(s.stop)
	return s
}

func (s *served) stop() {
	s.srv.Unmount()
	s.store.Close()
}

// oracle returns a fresh empty file on a tmpfs mounted for the test.
func oracle(t *testing.T, tmpfsOpts string) string {
	t.Helper()
	p := filepath.Join(testenv.Tmpfs(t, tmpfsOpts), "file")
	if err := os.WriteFile(p, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	// The RAM file is published with mode 0666; match it despite the umask.
	if err := os.Chmod(p, 0o666); err != nil {
		t.Fatal(err)
	}
	return p
}

// trace records what each step of a scenario returned, so the same
// scenario on tmpfs and on the RAM file can be compared line by line.
type trace struct {
	lines []string
}

func (tr *trace) add(step string, vals ...any) {
	tr.lines = append(tr.lines, step+" = "+fmt.Sprint(vals...))
}

// res formats a syscall's result the way the trace compares them.
func res(n any, err error) string {
	if err != nil {
		var e syscall.Errno
		if errors.As(err, &e) {
			return "errno " + unix.ErrnoName(e)
		}
		return "error " + err.Error()
	}
	return fmt.Sprint(n)
}

// differential runs scenario on a tmpfs file and on the RAM file in every
// mode, and fails on the first step where they disagree.
func differential(t *testing.T, scenario func(t *testing.T, path string, tr *trace)) {
	t.Helper()
	var want trace
	scenario(t, oracle(t, ""), &want)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			s := serve(t, m, 0)
			var got trace
			scenario(t, s.path, &got)
			compare(t, want.lines, got.lines)
		})
	}
}

func compare(t *testing.T, want, got []string) {
	t.Helper()
	for i := range max(len(want), len(got)) {
		var w, g string
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		if w != g {
			t.Fatalf("step %d differs from tmpfs:\n tmpfs:   %s\n ramfile: %s", i, w, g)
		}
	}
}

func open(t *testing.T, path string, flags int) int {
	t.Helper()
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0o666)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func readAll(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func fstatLine(fd int) string {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return res(nil, err)
	}
	return fmt.Sprintf("size %d blocks %d mode %o nlink %d", st.Size, st.Blocks, st.Mode, st.Nlink)
}

// The seed's check 1: open options.
func TestSeedOpenOptions(t *testing.T) {
	differential(t, func(t *testing.T, path string, tr *trace) {
		fd := open(t, path, unix.O_RDWR)
		tr.add("write hello world", res(unix.Write(fd, []byte("hello world"))))
		tr.add("fstat", fstatLine(fd))

		tfd := open(t, path, unix.O_WRONLY|unix.O_TRUNC)
		tr.add("after O_TRUNC", fstatLine(tfd))
		tr.add("write abc", res(unix.Write(tfd, []byte("abc"))))

		afd := open(t, path, unix.O_WRONLY|unix.O_APPEND)
		tr.add("O_APPEND write", res(unix.Write(afd, []byte("def"))))
		tr.add("O_APPEND offset", res(unix.Seek(afd, 0, unix.SEEK_CUR)))
		tr.add("pwrite at 0 on O_APPEND appends", res(unix.Pwrite(afd, []byte("ghi"), 0)))
		tr.add("content", readAll(t, path))

		_, err := unix.Open(path, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR, 0o666)
		tr.add("O_CREAT|O_EXCL on the existing name", res(0, err))
		cfd, err := unix.Open(path, unix.O_CREAT|unix.O_RDWR, 0o600)
		tr.add("O_CREAT on the existing name", res(0, err))
		if err == nil {
			unix.Close(cfd)
		}
		rfd := open(t, path, unix.O_RDONLY)
		tr.add("write on O_RDONLY", res(unix.Write(rfd, []byte("x"))))
		wfd := open(t, path, unix.O_WRONLY)
		tr.add("read on O_WRONLY", res(unix.Read(wfd, make([]byte, 4))))
		_, err = unix.Open(path, unix.O_RDWR|unix.O_DIRECTORY, 0)
		tr.add("O_DIRECTORY", res(0, err))
		tr.add("content", readAll(t, path))
	})
}

// The seed's check 2: reading and writing.
func TestSeedReadWrite(t *testing.T) {
	differential(t, func(t *testing.T, path string, tr *trace) {
		fd := open(t, path, unix.O_RDWR)
		tr.add("read empty", res(unix.Read(fd, make([]byte, 10))))
		tr.add("write abcd", res(unix.Write(fd, []byte("abcd"))))
		buf := make([]byte, 10)
		n, err := unix.Pread(fd, buf, 0)
		tr.add("pread 10 at 0", res(n, err), " ", string(buf[:max(n, 0)]))
		big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB, several FUSE requests
		tr.add("pwrite 1 MiB at 4", res(unix.Pwrite(fd, big, 4)))
		back := make([]byte, len(big)+100)
		n, err = unix.Pread(fd, back, 4)
		tr.add("pread it back", res(n, err), " equal ", bytes.Equal(back[:max(n, 0)], big))
		tr.add("fstat", fstatLine(fd))
		tr.add("read at EOF", res(unix.Read(fd, buf)))
		tr.add("zero-length write", res(unix.Write(fd, nil)))
		tr.add("zero-length read", res(unix.Read(fd, nil)))
	})
}

// The seed's check 3: writing, seeking, reading.
func TestSeedWriteSeekRead(t *testing.T) {
	differential(t, func(t *testing.T, path string, tr *trace) {
		fd := open(t, path, unix.O_RDWR)
		tr.add("write", res(unix.Write(fd, []byte("0123456789ABCDEFGHIJ"))))
		for _, s := range []struct {
			off    int64
			whence int
		}{{5, unix.SEEK_SET}, {3, unix.SEEK_CUR}, {-4, unix.SEEK_END}, {100, unix.SEEK_SET}, {10, unix.SEEK_END}, {-1, unix.SEEK_SET}, {-100, unix.SEEK_END}, {0, 5}, {0, -1}} {
			pos, err := unix.Seek(fd, s.off, s.whence)
			buf := make([]byte, 6)
			n, rerr := unix.Read(fd, buf)
			tr.add(fmt.Sprintf("lseek(%d, %d) then read 6", s.off, s.whence), res(pos, err), " ", res(n, rerr), " ", string(buf[:max(n, 0)]))
		}
	})
}

// The seed's check 4: writing, seeking, overwriting. The seed module cut
// the tail off here; a regular file keeps it.
func TestSeedWriteSeekOverwrite(t *testing.T) {
	differential(t, func(t *testing.T, path string, tr *trace) {
		fd := open(t, path, unix.O_RDWR)
		tr.add("write", res(unix.Write(fd, []byte("0123456789ABCDEFGHIJ"))))
		tr.add("seek 5", res(unix.Seek(fd, 5, unix.SEEK_SET)))
		tr.add("overwrite", res(unix.Write(fd, []byte("xyz"))))
		tr.add("seek 0 and overwrite", res(unix.Seek(fd, 0, unix.SEEK_SET)))
		tr.add("overwrite at 0", res(unix.Write(fd, []byte("!"))))
		tr.add("seek past EOF", res(unix.Seek(fd, 30, unix.SEEK_SET)))
		tr.add("write past EOF", res(unix.Write(fd, []byte("END"))))
		tr.add("fstat", fstatLine(fd))
		tr.add("content", fmt.Sprintf("%q", readAll(t, path)))
	})
}

// The rest of the semantics list, compared with tmpfs step by step.
func TestSemantics(t *testing.T) {
	differential(t, func(t *testing.T, path string, tr *trace) {
		fd := open(t, path, unix.O_RDWR)
		const mib = 1 << 20
		tr.add("pwrite at 4 MiB", res(unix.Pwrite(fd, []byte("tail"), 4*mib)))
		tr.add("fstat", fstatLine(fd))
		hole := make([]byte, 8192)
		n, err := unix.Pread(fd, hole, mib)
		tr.add("hole reads zeros", res(n, err), " ", bytes.Count(hole, []byte{0}))
		tr.add("pwrite at 1 MiB-2 straddling", res(unix.Pwrite(fd, []byte("mid!"), mib-2)))
		for _, off := range []int64{0, mib - 4096, mib - 2, mib, mib + 2, mib + 4096, 4*mib - 1, 4 * mib, 4*mib + 3, 4*mib + 4, 4*mib + 5, -1} {
			tr.add(fmt.Sprintf("SEEK_DATA %d", off), res(unix.Seek(fd, off, unix.SEEK_DATA)))
			tr.add(fmt.Sprintf("SEEK_HOLE %d", off), res(unix.Seek(fd, off, unix.SEEK_HOLE)))
		}
		tr.add("ftruncate shrink to 1 MiB", res(0, unix.Ftruncate(fd, mib)))
		tr.add("fstat", fstatLine(fd))
		tr.add("SEEK_END", res(unix.Seek(fd, 0, unix.SEEK_END)))
		tr.add("ftruncate same size", res(0, unix.Ftruncate(fd, mib)))
		tr.add("ftruncate grow to 3 MiB", res(0, unix.Ftruncate(fd, 3*mib)))
		tr.add("fstat", fstatLine(fd))
		tr.add("ftruncate negative", res(0, unix.Ftruncate(fd, -1)))
		tr.add("truncate by path", res(0, unix.Truncate(path, 2*mib)))
		tr.add("fallocate 0 grows", res(0, unix.Fallocate(fd, 0, 3*mib, 8192)))
		tr.add("fstat", fstatLine(fd))
		tr.add("fallocate KEEP_SIZE", res(0, unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, 4*mib, 8192)))
		tr.add("fstat", fstatLine(fd))
		tr.add("punch hole", res(0, unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, mib-4096, 8192)))
		tr.add("fstat", fstatLine(fd))
		tr.add("SEEK_HOLE 0 after punch", res(unix.Seek(fd, 0, unix.SEEK_HOLE)))
		tr.add("punch without KEEP_SIZE", res(0, unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE, 0, 4096)))
		tr.add("collapse range", res(0, unix.Fallocate(fd, unix.FALLOC_FL_COLLAPSE_RANGE, 0, 4096)))
		tr.add("fallocate negative", res(0, unix.Fallocate(fd, 0, -1, 10)))
		tr.add("fsync", res(0, unix.Fsync(fd)))
		tr.add("fdatasync", res(0, unix.Fdatasync(fd)))
		tr.add("pwrite at max offset", res(unix.Pwrite(fd, []byte("x"), 1<<63-1)))
		tr.add("pwrite negative", res(unix.Pwrite(fd, []byte("x"), -1)))
		tr.add("pread negative", res(unix.Pread(fd, make([]byte, 1), -1)))
		tr.add("pread at max", res(unix.Pread(fd, make([]byte, 1), 1<<63-1)))
		tr.add("fchmod 0640", res(0, unix.Fchmod(fd, 0o640)))
		tr.add("fstat", fstatLine(fd))
		tr.add("fchmod 0666", res(0, unix.Fchmod(fd, 0o666)))
	})
}

// Times change exactly when tmpfs changes them.
func TestTimes(t *testing.T) {
	differential(t, func(t *testing.T, path string, tr *trace) {
		fd := open(t, path, unix.O_RDWR)
		var prev unix.Stat_t
		unix.Fstat(fd, &prev)
		step := func(name string, do func() error) {
			time.Sleep(15 * time.Millisecond) // beyond the clock's granularity
			err := do()
			var st unix.Stat_t
			unix.Fstat(fd, &st)
			tr.add(name, res(0, err), fmt.Sprintf(" mtime changed %t ctime changed %t",
				st.Mtim != prev.Mtim, st.Ctim != prev.Ctim))
			prev = st
		}
		step("write", func() error { _, err := unix.Write(fd, []byte("abc")); return err })
		step("read", func() error { _, err := unix.Pread(fd, make([]byte, 3), 0); return err })
		step("truncate grow", func() error { return unix.Ftruncate(fd, 100) })
		step("truncate same", func() error { return unix.Ftruncate(fd, 100) })
		step("chmod", func() error { return unix.Fchmod(fd, 0o644) })
		step("fallocate", func() error { return unix.Fallocate(fd, 0, 0, 8192) })
		step("utimes", func() error {
			return unix.UtimesNano(path, []unix.Timespec{{Sec: 1000, Nsec: 5}, {Sec: 2000, Nsec: 7}})
		})
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		tr.add("times set", st.Atim, st.Mtim)
		step("O_TRUNC of a non-empty file", func() error {
			fd2, err := unix.Open(path, unix.O_WRONLY|unix.O_TRUNC, 0)
			if err == nil {
				unix.Close(fd2)
			}
			return err
		})
		step("O_TRUNC of an empty file", func() error {
			fd2, err := unix.Open(path, unix.O_WRONLY|unix.O_TRUNC, 0)
			if err == nil {
				unix.Close(fd2)
			}
			return err
		})
	})
}

// The seed's manual session, through a real shell.
func TestSeedShellSession(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			s := serve(t, m, 0)
			script := `f=$1
printf '[%s]' "$(cat $f)"
echo abcd > $f; printf '[%s]' "$(cat $f)"
echo defg > $f; printf '[%s]' "$(cat $f)"
echo abcd >> $f; printf '[%s]' "$(cat $f)"`
			out, err := exec.Command("sh", "-c", script, "sh", s.path).CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if want := "[][abcd][defg][defg\nabcd]"; string(out) != want {
				t.Errorf("got %q, want %q", out, want)
			}
		})
	}
}

// A capacity behaves exactly like a tmpfs mounted with size=: a short
// write at the limit, then ENOSPC, and nothing lost or torn.
func TestCapacity(t *testing.T) {
	const capacity = 64 << 10
	scenario := func(t *testing.T, path string, tr *trace) {
		fd := open(t, path, unix.O_RDWR)
		chunk := bytes.Repeat([]byte{'x'}, 10000)
		for i := 0; i < 9; i++ {
			tr.add(fmt.Sprintf("write %d", i), res(unix.Write(fd, chunk)))
		}
		tr.add("fstat", fstatLine(fd))
		tr.add("overwrite inside", res(unix.Pwrite(fd, []byte("yy"), 100)))
		tr.add("fallocate beyond", res(0, unix.Fallocate(fd, 0, 0, 1<<20)))
		tr.add("punch 8k", res(0, unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 8192)))
		tr.add("write after punch", res(unix.Write(fd, chunk)))
		tr.add("fstat", fstatLine(fd))
		b, _ := os.ReadFile(path)
		tr.add("content", len(b), " ", bytes.Count(b, []byte{'x'}), " ", bytes.Count(b, []byte{'y'}))
	}
	var want trace
	scenario(t, oracle(t, "size=64k"), &want)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			s := serve(t, m, capacity)
			var got trace
			scenario(t, s.path, &got)
			compare(t, want.lines, got.lines)
		})
	}
}

// runClient runs the test binary as a client process in the given mode and
// returns its output.
func runClient(t *testing.T, mode string, args ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^$"}, args...)...)
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client %s %v: %v\n%s", mode, args, err, out)
	}
	return string(out)
}

func runChild(mode string, args []string) int {
	path := args[1]
	var err error
	switch mode {
	case "mmap":
		err = childMmap(path)
	case "records":
		id, _ := strconv.Atoi(args[0])
		err = childRecords(path, id)
	case "reload":
		id, _ := strconv.Atoi(args[0])
		err = childReload(path, id)
	case "mmapcap":
		err = childMmapBeyondCapacity(path, args[0])
	case "keeppriv":
		err = childKeepPriv()
	default:
		err = fmt.Errorf("unknown child mode %q", mode)
	}
	if err != nil {
		fmt.Println("FAIL:", err)
		return 1
	}
	return 0
}

// childMmap checks that MAP_SHARED pages and read(2)/write(2) see each
// other's changes at once.
func childMmap(path string) error {
	fd, err := unix.Open(path, unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 8192); err != nil {
		return err
	}
	m, err := unix.Mmap(fd, 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	defer unix.Munmap(m)
	copy(m[100:], "via mmap")
	buf := make([]byte, 8)
	if _, err := unix.Pread(fd, buf, 100); err != nil || string(buf) != "via mmap" {
		return fmt.Errorf("read(2) after a store through the mapping: %q, %v", buf, err)
	}
	if _, err := unix.Pwrite(fd, []byte("via write"), 5000); err != nil {
		return err
	}
	if got := string(m[5000:5009]); got != "via write" {
		return fmt.Errorf("mapping after write(2): %q", got)
	}
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		return fmt.Errorf("msync: %w", err)
	}
	// A second, independent mapping sees the same pages.
	fd2, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd2)
	m2, err := unix.Mmap(fd2, 0, 8192, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	defer unix.Munmap(m2)
	if string(m2[100:108]) != "via mmap" || string(m2[5000:5009]) != "via write" {
		return fmt.Errorf("second mapping: %q %q", m2[100:108], m2[5000:5009])
	}
	return nil
}

func TestMmapCoherent(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			s := serve(t, m, 0)
			runClient(t, "mmap", "0", s.path)
			b := readAll(t, s.path)
			if len(b) != 8192 || b[100:108] != "via mmap" || b[5000:5009] != "via write" {
				t.Errorf("after the client: len %d, %q %q", len(b), b[100:108], b[5000:5009])
			}
		})
	}
}

// Records: each client process writes recordsPerClient records of
// recordSize bytes, half with pwrite into its own region of a preallocated
// prefix and half with O_APPEND after it, so that afterwards every byte can
// be accounted for.
const (
	recordSize       = 512
	recordsPerClient = 200
	clients          = 4
	regionSize       = recordsPerClient / 2 * recordSize
	prefixSize       = clients * regionSize
)

func record(id, seq int) []byte {
	r := make([]byte, recordSize)
	binary.BigEndian.PutUint32(r, uint32(id))
	binary.BigEndian.PutUint32(r[4:], uint32(seq))
	for i := 8; i < recordSize-1; i++ {
		r[i] = byte('a' + (id*7+seq+i)%26)
	}
	r[recordSize-1] = '\n'
	return r
}

func childRecords(path string, id int) error {
	afd, err := unix.Open(path, unix.O_WRONLY|unix.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer unix.Close(afd)
	pfd, err := unix.Open(path, unix.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	for seq := 0; seq < recordsPerClient; seq++ {
		r := record(id, seq)
		if seq%2 == 0 {
			if n, err := unix.Pwrite(pfd, r, int64(id*regionSize+seq/2*recordSize)); n != recordSize || err != nil {
				return fmt.Errorf("pwrite %d: %d, %v", seq, n, err)
			}
		} else if n, err := unix.Write(afd, r); n != recordSize || err != nil {
			return fmt.Errorf("append %d: %d, %v", seq, n, err)
		}
	}
	return nil
}

// The seed's check 5: concurrent writers, then read; every record is
// present exactly once and intact.
func TestSeedConcurrentWrites(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			s := serve(t, m, 0)
			if err := os.Truncate(s.path, prefixSize); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for id := 0; id < clients; id++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					runClient(t, "records", strconv.Itoa(id), s.path)
				}()
			}
			wg.Wait()
			data := []byte(readAll(t, s.path))
			if want := prefixSize + clients*recordsPerClient/2*recordSize; len(data) != want {
				t.Fatalf("file is %d bytes, want %d", len(data), want)
			}
			seen := map[[2]int]int{}
			for off := 0; off < len(data); off += recordSize {
				r := data[off : off+recordSize]
				id, seq := int(binary.BigEndian.Uint32(r)), int(binary.BigEndian.Uint32(r[4:]))
				if id >= clients || seq >= recordsPerClient || !bytes.Equal(r, record(id, seq)) {
					t.Fatalf("torn or foreign record at %d", off)
				}
				seen[[2]int{id, seq}]++
			}
			for id := 0; id < clients; id++ {
				for seq := 0; seq < recordsPerClient; seq++ {
					if c := seen[[2]int{id, seq}]; c != 1 {
						t.Errorf("record %d/%d seen %d times", id, seq, c)
					}
				}
			}
		})
	}
}

// childReload writes records for two seconds through fresh opens while the
// test unloads and reloads the server, and reports the errnos it saw. Any
// errno other than the clean ones of an unloaded file system is a failure.
func childReload(path string, id int) error {
	clean := map[syscall.Errno]bool{unix.ENOTCONN: true, unix.ENOENT: true, unix.EIO: true}
	seen := map[string]int{}
	deadline := time.Now().Add(2 * time.Second)
	for seq := 0; time.Now().Before(deadline); seq++ {
		fd, err := unix.Open(path, unix.O_WRONLY|unix.O_APPEND, 0)
		if err != nil {
			if e, ok := err.(syscall.Errno); !ok || !clean[e] {
				return fmt.Errorf("open: unclean error %v", err)
			}
			seen[unix.ErrnoName(err.(syscall.Errno))]++
			time.Sleep(time.Millisecond)
			continue
		}
		for k := 0; k < 10; k++ {
			if _, err := unix.Write(fd, record(id, seq)); err != nil {
				if e, ok := err.(syscall.Errno); !ok || !clean[e] {
					unix.Close(fd)
					return fmt.Errorf("write: unclean error %v", err)
				}
				seen[unix.ErrnoName(err.(syscall.Errno))]++
				break
			}
			seen["ok"]++
		}
		unix.Close(fd)
	}
	fmt.Println(seen)
	return nil
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// The seed's check 6: concurrent writes while the server is unloaded and
// loaded again. Writers see only clean errors, nothing hangs, nothing leaks,
// and the file works after the reload.
func TestSeedConcurrentWritesWhileReloading(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			testenv.RequireFUSE(t)
			mnt := filepath.Join(t.TempDir(), "mnt")
			runtime.GC()
			goroutines, fds := runtime.NumGoroutine(), openFDs(t)
			s := serveAt(t, mnt, m, 0)

			var wg sync.WaitGroup
			outs := make([]string, clients)
			for id := 0; id < clients; id++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					outs[id] = runClient(t, "reload", strconv.Itoa(id), s.path)
				}()
			}
			for i := 0; i < 3; i++ {
				time.Sleep(300 * time.Millisecond)
				done := make(chan struct{})
				go func() { s.stop(); close(done) }()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					t.Fatal("unload hangs while writers are active")
				}
				time.Sleep(50 * time.Millisecond)
				s = serveAt(t, mnt, m, 0)
			}
			wg.Wait()
			t.Logf("writers saw: %v", strings.Join(outs, " "))
			for id, out := range outs {
				// A writer that never got a write through proves nothing.
				if !strings.Contains(out, " ok:") && !strings.Contains(out, "[ok:") {
					t.Errorf("writer %d never wrote successfully: %s", id, out)
				}
			}

			// The file works after the reload.
			if err := os.WriteFile(s.path, []byte("after"), 0); err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, s.path); got != "after" {
				t.Errorf("after reload: %q", got)
			}
			s.stop()
			time.Sleep(100 * time.Millisecond)
			runtime.GC()
			if g := runtime.NumGoroutine(); g > goroutines+2 {
				buf := make([]byte, 1<<16)
				t.Errorf("goroutines: %d before, %d after\n%s", goroutines, g, buf[:runtime.Stack(buf, true)])
			}
			if f := openFDs(t); f > fds {
				t.Errorf("open fds: %d before, %d after", fds, f)
			}
		})
	}
}
