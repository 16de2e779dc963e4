package bytestore

import (
	"errors"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/internal/testenv"
)

var kinds = []Kind{PrivateTmpfs, Memfd}

const (
	keepSize  = unix.FALLOC_FL_KEEP_SIZE
	punchHole = unix.FALLOC_FL_PUNCH_HOLE
)

// scenarios are operation sequences run on every kind and compared, result
// by result and state by state, with a tmpfs of the same capacity.
var scenarios = []struct {
	name     string
	capacity int64
	ops      []op
}{
	{"holes", 0, []op{
		W(0, 10), W(3*pg+100, 50), W(10*pg, pg), R(0, 20*pg), R(5*pg, 10),
		SeekOp(0, unix.SEEK_HOLE), SeekOp(pg, unix.SEEK_DATA), SeekOp(11*pg, unix.SEEK_DATA),
		W(2*pg-5, 10), W(7*pg, 3*pg),
	}},
	{"writes past EOF", 0, []op{
		W(100*pg, 1), R(0, 10), R(100*pg, 10), R(200*pg, 10), W(0, 1), T(0),
		W(3*pg+1, 2*pg), W(5*pg+1, 0), R(5*pg+1, 0), W(1<<40, 5),
	}},
	{"writes straddling holes", 0, []op{
		W(0, pg), W(2*pg, pg), W(4*pg, pg), W(pg-10, 4*pg+20), W(8*pg-1, 2),
	}},
	{"truncate", 0, []op{
		W(0, 3*pg), T(5 * pg), T(5 * pg), T(pg + 1), R(0, 4*pg), T(pg + 1), T(0), T(0),
		keep(10*pg, 2*pg), T(0), // same size: frees pages beyond EOF
		keep(2*pg, pg), T(10), // growing keeps them
		W(0, 5), T(3*pg + 7), T(-1), T(maxOff), T(maxOff - 1), T(7),
	}},
	{"fallocate modes", 0, []op{
		alloc(0, pg), keep(pg, 2*pg), punch(0, pg/2), punch(pg/2, 3*pg),
		F(punchHole, 0, pg),
		F(unix.FALLOC_FL_ZERO_RANGE, 0, pg), F(unix.FALLOC_FL_ZERO_RANGE|keepSize, 0, pg),
		F(unix.FALLOC_FL_COLLAPSE_RANGE, 0, pg), F(unix.FALLOC_FL_INSERT_RANGE, 0, pg),
		F(unix.FALLOC_FL_UNSHARE_RANGE, 0, pg), F(0x80, 0, pg), F(0x80000000, 0, pg),
		F(punchHole|keepSize|unix.FALLOC_FL_ZERO_RANGE, 0, pg),
		alloc(-1, 1), alloc(0, 0), alloc(0, -1), keep(-pg, pg), punch(-1, 5), punch(0, 0),
		W(0, 5*pg), punch(pg+1, 2*pg), punch(0, maxOff), W(0, 10),
		alloc(3, 5), keep(3*pg-1, 2),
	}},
	{"offsets near max int64", 0, []op{
		W(maxOff, 0), W(maxOff, 1), W(maxOff-1, 1), W(maxOff-10, 10), W(maxOff-10, 11),
		W(maxOff-3*pg, 5*pg), W(-1, 1), W(-1, 0), W(-10, 5),
		R(maxOff-5, 10), R(maxOff, 0), R(maxOff, 1), R(maxOff-1, 1), R(-1, 1), R(-1, 0),
		SeekOp(maxOff-1, unix.SEEK_DATA), SeekOp(maxOff-1, unix.SEEK_HOLE),
		SeekOp(maxOff, unix.SEEK_DATA), SeekOp(maxOff-pg, unix.SEEK_HOLE),
		SeekOp(-1, unix.SEEK_DATA), SeekOp(-1, unix.SEEK_HOLE), SeekOp(0, unix.SEEK_DATA),
		alloc(maxOff-pg, pg), alloc(maxOff-pg, pg+1), keep(maxOff, 1), alloc(maxOff-1, 1),
		punch(maxOff-2*pg, 2*pg), punch(maxOff, 1), punch(0, maxOff),
		T(maxOff), T(maxOff - pg), T(0),
	}},
	{"capacity: exact fill", 64 << 10, []op{
		W(0, 64<<10), W(64<<10, 1), R(0, 100),
		W(0, 100),      // overwrite at full capacity
		W(100, 64<<10), // overwrite, then a short write at the end of the last page
		W(10*pg, 3*pg), T(64 << 10), W(64<<10-1, 2), W(64<<10, 1),
	}},
	{"capacity: short write", 64 << 10, []op{
		W(100, 70000), W(70000, 10), W(65536, 1), W(65535, 1),
		T(10 * pg), W(12*pg, 20*pg), W(12*pg, 1),
	}},
	{"capacity: straddling holes at full", 16 * 4096, []op{
		W(0, pg), W(2*pg, pg), W(4*pg, pg), W(6*pg, 10*pg), // 13 pages
		W(pg-10, 8*pg), // holes at 1 and 3 are paid, 5 is not: short
		W(0, 17*pg), punch(2*pg, 3*pg+1), W(20*pg+5, 10*pg),
	}},
	{"capacity: punch frees", 64 << 10, []op{
		W(0, 64<<10), punch(4*pg, 2*pg), W(70000, 10000), W(70000, 1),
		alloc(0, 64<<10), alloc(0, 65<<10), punch(0, pg/2), punch(0, 64<<10),
		W(0, 64<<10),
	}},
	{"capacity: fallocate ENOSPC changes nothing", 64 << 10, []op{
		W(0, 10), keep(0, 20*pg), alloc(0, 17*pg), alloc(pg, 15*pg), punch(3*pg, 2*pg),
		alloc(0, 16*pg), punch(3*pg, 3*pg), W(0, 1),
		keep(0, 16*pg+3*pg), keep(16*pg, 3*pg), alloc(14*pg, 5*pg),
		alloc(0, 16*pg), keep(0, 16*pg), // all present: no cost, even at full
		punch(0, 16*pg), alloc(8*pg, 17*pg), keep(pg, 16*pg),
	}},
	{"capacity: fallocated pages beyond EOF", 64 << 10, []op{
		keep(8*pg, 8*pg), W(0, 8*pg), W(8*pg, 8*pg), W(16*pg, 1), T(16 * pg),
		keep(20*pg, pg), T(0), keep(4*pg, 4*pg), T(0), W(0, 16*pg), T(0),
		keep(pg, 15*pg), W(0, 1), W(pg, 2*pg), W(15*pg+5, 4*pg), T(3*pg + 1), W(10*pg, 10),
	}},
	{"capacity: freed fallocated pages cost again", 64 << 10, []op{
		keep(20*pg, 2*pg), T(0), W(0, 16*pg), W(20*pg, 1), // truncate freed them
		T(0), keep(0, 4*pg), punch(0, 4*pg), W(4*pg, 16*pg), W(0, 1), // punch freed them
		T(0), keep(0, 4*pg), punch(1, 4*pg-2), W(4*pg, 14*pg), // partial pages stay
		W(0, 1), W(3*pg, 1), W(pg, 1), W(2*pg, 1),
	}},
	{"capacity: failed fallocate initialises the fallocated pages it passed", 64 << 10, []op{
		alloc(0, 36950), alloc(24960, 45152), SeekOp(0, unix.SEEK_DATA), // found by the fuzzer
		T(0), keep(0, 10*pg), keep(6*pg, 12*pg), T(10 * pg), SeekOp(0, unix.SEEK_DATA), // beyond EOF
		T(0), keep(0, 10*pg), keep(6*pg, 12*pg), W(12*pg, 1), // a write moves EOF past them
		T(0), keep(0, 10*pg), keep(6*pg, 12*pg), alloc(8*pg, 3*pg+1), // so does fallocate
		T(0), keep(0, 10*pg), keep(6*pg, 12*pg), T(7*pg + 1), T(0), T(10 * pg), // truncate frees them
		T(0), keep(0, 10*pg), keep(6*pg, 12*pg), punch(7*pg, pg), T(10 * pg), W(0, 1),
	}},
	{"capacity: fallocated pages below EOF", 64 << 10, []op{
		alloc(0, 16*pg), SeekOp(0, unix.SEEK_DATA), W(0, 16*pg), W(16*pg, 1),
		punch(pg, 14*pg), alloc(pg, 7*pg), W(5*pg, 20*pg), alloc(0, 16*pg),
	}},
	{"capacity: rounds up to pages", 10000, []op{
		W(0, 20000), W(0, 20000), W(3*pg, 1), punch(0, pg), W(5*pg, 2), W(6*pg, 2),
	}},
	{"capacity: one page", 1, []op{W(5, 5), W(pg, 1), W(0, pg), alloc(0, pg+1), alloc(0, pg)}},
	{"capacity: offsets near max int64", 8192, []op{
		W(maxOff-1, 1), W(0, pg), W(maxOff-2, 1), W(maxOff-pg-1, 1), W(maxOff-5, 5),
		W(maxOff, 1), W(maxOff-10, 11), W(-1, 1), alloc(maxOff-pg, pg), keep(maxOff, 1),
		punch(maxOff-pg+1, pg-1), W(maxOff-pg-1, 1), keep(maxOff-3*pg, 2*pg),
		T(maxOff), T(maxOff - 2), W(maxOff-pg, 1),
	}},
	{"capacity: setuid and setgid", 8192, []op{
		ChmodOp(0o6755), W(0, 2*pg), W(2*pg, 1), ChmodOp(0o2745), W(2*pg, 1), W(0, 1),
		ChmodOp(0o4700), punch(0, pg), W(0, 1),
	}},
}

func TestDifferential(t *testing.T) {
	for _, kind := range kinds {
		for _, sc := range scenarios {
			t.Run(kind.String()+"/"+sc.name, func(t *testing.T) {
				differential(t, kind, sc.capacity, sc.ops)
			})
		}
	}
}

// TestDropPrivsWithoutCapFsetid checks that an ENOSPC write strips setuid and
// setgid as tmpfs does for a writer without CAP_FSETID. Capabilities are per
// thread, so the test drops CAP_FSETID from its own locked thread, which
// the runtime discards when the test ends.
func TestDropPrivsWithoutCapFsetid(t *testing.T) {
	dir := testenv.Tmpfs(t, "size=8192")
	runtime.LockOSThread() // never unlocked: the thread dies with the test
	oracle := newOracleIn(t, dir)
	t.Cleanup(func() { unix.Close(oracle.fd) })
	s := openStore(t, Memfd, 8192)
	// A group we are not in, so that setgid without group-execute is
	// dropped too.
	for _, fd := range []int{s.Fd(), oracle.fd} {
		if err := unix.Fchown(fd, -1, 4242); err != nil {
			t.Fatal(err)
		}
	}
	d := newDiffer(t, s, oracle)
	d.apply(W(0, 2*pg))
	// Set each mode with CAP_FSETID (chmod itself would drop setgid
	// for a group we are not in), then write without it.
	for _, mode := range []uint32{0o6755, 0o6745, 0o2745, 0o2755, 0o4700, 0o755} {
		d.apply(ChmodOp(mode))
		setCapFsetid(t, false)
		d.apply(W(2*pg, 1)) // ENOSPC
		d.apply(W(0, 1))    // a write that succeeds, for comparison
		setCapFsetid(t, true)
	}
}

// setCapFsetid raises or drops CAP_FSETID in the calling thread's effective
// set; the permitted set keeps it, so it can be raised again.
func setCapFsetid(t *testing.T, on bool) {
	t.Helper()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	if on {
		data[0].Effective |= 1 << unix.CAP_FSETID
	} else {
		data[0].Effective &^= 1 << unix.CAP_FSETID
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	if hasCapFsetid() != on {
		t.Fatalf("CAP_FSETID effective = %v, want %v", !on, on)
	}
}

func TestKinds(t *testing.T) {
	testenv.Tmpfs(t, "") // the private tmpfs needs root, as the oracle does
	for _, tc := range []struct {
		kind     Kind
		capacity int64
		want     Kind
		enforced bool
	}{
		{Auto, 0, PrivateTmpfs, true},
		{Auto, 1 << 20, PrivateTmpfs, true},
		{PrivateTmpfs, 1 << 20, PrivateTmpfs, true},
		{Memfd, 0, Memfd, true},
		{Memfd, 1 << 20, Memfd, false},
	} {
		s := openStore(t, tc.kind, tc.capacity)
		if s.Kind() != tc.want || s.KernelEnforced() != tc.enforced {
			t.Errorf("New(%v, %d): kind %v enforced %v, want %v %v", tc.kind, tc.capacity, s.Kind(), s.KernelEnforced(), tc.want, tc.enforced)
		}
		st, err := s.Stat()
		if err != nil || st.Mode != unix.S_IFREG|0o600 || st.Size != 0 || st.Blocks != 0 {
			t.Errorf("%v: new store stat = mode %#o size %d blocks %d, %v", tc.kind, st.Mode, st.Size, st.Blocks, err)
		}
		if fl, err := unix.FcntlInt(uintptr(s.Fd()), unix.F_GETFL, 0); err != nil || fl&unix.O_ACCMODE != unix.O_RDWR {
			t.Errorf("%v: fd flags %#x, %v; want O_RDWR", tc.kind, fl, err)
		}
		if fl, err := unix.FcntlInt(uintptr(s.Fd()), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC == 0 {
			t.Errorf("%v: fd not close-on-exec", tc.kind)
		}
	}
	if _, err := New(Options{Capacity: -1}); err == nil {
		t.Error("New with negative capacity succeeded")
	}
	if _, err := New(Options{Kind: 7}); err == nil {
		t.Error("New with unknown kind succeeded")
	}
}

// TestPrivateTmpfsInvisible checks that the private tmpfs is attached
// nowhere: the mount table does not grow.
func TestPrivateTmpfsInvisible(t *testing.T) {
	testenv.Tmpfs(t, "")
	before := countMounts(t)
	s := openStore(t, PrivateTmpfs, 1<<20)
	if after := countMounts(t); after != before {
		t.Errorf("mount table grew from %d to %d entries", before, after)
	}
	var sf unix.Statfs_t
	if err := unix.Fstatfs(s.Fd(), &sf); err != nil || sf.Type != unix.TMPFS_MAGIC {
		t.Errorf("fstatfs: type %#x, %v; want tmpfs", sf.Type, err)
	}
	if sf.Blocks != uint64((1<<20)/pg) {
		t.Errorf("tmpfs has %d blocks, want %d", sf.Blocks, (1<<20)/pg)
	}
	st, _ := s.Stat()
	if st.Nlink != 0 {
		t.Errorf("nlink %d, want 0 (unlinked)", st.Nlink)
	}
}

func countMounts(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}

func TestSeekWhence(t *testing.T) {
	for _, kind := range []Kind{Auto, Memfd} {
		s := openStore(t, kind, 0)
		for _, wh := range []int{unix.SEEK_SET, unix.SEEK_CUR, unix.SEEK_END, 5, -1} {
			if _, err := s.Seek(0, wh); err != unix.EINVAL {
				t.Errorf("%v: Seek(0, %d) = %v, want EINVAL", kind, wh, err)
			}
		}
		if _, err := s.Seek(0, unix.SEEK_DATA); err != unix.ENXIO {
			t.Errorf("%v: SEEK_DATA on empty file = %v, want ENXIO", kind, err)
		}
	}
}

func TestTimesAndChmod(t *testing.T) {
	for _, kind := range []Kind{Auto, Memfd} {
		s := openStore(t, kind, 1<<20)
		at := time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC)
		mt := time.Date(1960, 1, 1, 0, 0, 0, 999999999, time.UTC) // before the epoch
		if err := s.SetTimes(&at, &mt); err != nil {
			t.Fatal(err)
		}
		st, _ := s.Stat()
		if got := time.Unix(st.Atim.Unix()); !got.Equal(at) {
			t.Errorf("%v: atime %v, want %v", kind, got, at)
		}
		if got := time.Unix(st.Mtim.Unix()); !got.Equal(mt) {
			t.Errorf("%v: mtime %v, want %v", kind, got, mt)
		}
		at2 := at.Add(time.Hour)
		if err := s.SetTimes(&at2, nil); err != nil {
			t.Fatal(err)
		}
		st, _ = s.Stat()
		if got := time.Unix(st.Mtim.Unix()); !got.Equal(mt) {
			t.Errorf("%v: nil mtime changed it to %v", kind, got)
		}
		if got := time.Unix(st.Atim.Unix()); !got.Equal(at2) {
			t.Errorf("%v: atime %v, want %v", kind, got, at2)
		}
		if err := s.SetTimes(nil, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.Chmod(0o4751); err != nil {
			t.Fatal(err)
		}
		if st, _ = s.Stat(); st.Mode&0o7777 != 0o4751 {
			t.Errorf("%v: mode %#o after Chmod(04751)", kind, st.Mode&0o7777)
		}
	}
}

func TestClose(t *testing.T) {
	for _, kind := range []Kind{Auto, Memfd} {
		s, err := New(Options{Kind: kind, Capacity: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.WriteAt([]byte("x"), 0); err != nil {
			t.Fatal(err)
		}
		fd := s.Fd()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Errorf("%v: descriptor still open after Close: %v", kind, err)
		}
		buf := make([]byte, 1)
		checks := map[string]error{}
		_, checks["ReadAt"] = s.ReadAt(buf, 0)
		_, checks["WriteAt"] = s.WriteAt(buf, 0)
		checks["Truncate"] = s.Truncate(0)
		checks["Fallocate"] = s.Fallocate(0, 0, 1)
		_, checks["Seek"] = s.Seek(0, unix.SEEK_DATA)
		_, checks["Stat"] = s.Stat()
		checks["Chmod"] = s.Chmod(0)
		checks["SetTimes"] = s.SetTimes(nil, nil)
		for name, err := range checks {
			if !errors.Is(err, unix.EBADF) {
				t.Errorf("%v: %s after Close = %v, want EBADF", kind, name, err)
			}
		}
	}
}

// TestCloseWhileBusy closes a store while goroutines use it: every call
// either completes normally or fails with EBADF, and the descriptor is
// closed once they are done.
func TestCloseWhileBusy(t *testing.T) {
	for _, kind := range []Kind{Auto, Memfd} {
		s, err := New(Options{Kind: kind, Capacity: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		fd := s.Fd()
		var wg sync.WaitGroup
		start := make(chan struct{})
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 512)
				<-start
				for i := 0; ; i++ {
					_, err := s.WriteAt(buf, int64(g*4096))
					if err == nil {
						_, err = s.ReadAt(buf, int64(g*4096))
					}
					if err != nil {
						if err != unix.EBADF {
							t.Errorf("%v: %v", kind, err)
						}
						return
					}
				}
			}()
		}
		close(start)
		time.Sleep(10 * time.Millisecond)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Errorf("%v: descriptor still open after Close and the calls ended: %v", kind, err)
		}
	}
}

// TestFailedFallocateKeepsAtime checks that reproducing a failed fallocate's
// effect on the pages (see passFallocated) does not touch atime, as the
// failed fallocate on tmpfs does not.
func TestFailedFallocateKeepsAtime(t *testing.T) {
	dir := testenv.Tmpfs(t, "size=65536")
	oracle := newOracleIn(t, dir)
	t.Cleanup(func() { unix.Close(oracle.fd) })
	s := openStore(t, Memfd, 65536)
	old := [2]unix.Timespec{{Sec: 1000}, {Nsec: unix.UTIME_OMIT}}
	for name, f := range map[string]file{"store": s, "tmpfs": oracle} {
		fd := s.Fd()
		if f == file(oracle) {
			fd = oracle.fd
		}
		if err := f.Fallocate(0, 0, 10*pg); err != nil {
			t.Fatal(err)
		}
		// An atime older than mtime: relatime would update it on any
		// access.
		if err := futimens(fd, &old); err != nil {
			t.Fatal(err)
		}
		if err := f.Fallocate(0, 6*pg, 12*pg); err != unix.ENOSPC {
			t.Fatalf("%s: fallocate = %v, want ENOSPC", name, err)
		}
		st, _ := f.Stat()
		if st.Atim.Sec != 1000 {
			t.Errorf("%s: atime moved to %d", name, st.Atim.Sec)
		}
		if d, _ := f.Seek(0, unix.SEEK_DATA); d != 6*pg {
			t.Errorf("%s: SEEK_DATA = %d, want %d", name, d, 6*pg)
		}
	}
}

// TestFileSizeLimit checks that RLIMIT_FSIZE wins over the capacity where
// tmpfs checks it first (EFBIG rather than ENOSPC). The limit is process-wide,
// so it is restored at once.
func TestFileSizeLimit(t *testing.T) {
	dir := testenv.Tmpfs(t, "size=8192")
	oracle := newOracleIn(t, dir)
	t.Cleanup(func() { unix.Close(oracle.fd) })
	s := openStore(t, Memfd, 8192)
	d := newDiffer(t, s, oracle)
	d.apply(W(0, 2*pg))
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = uint64(3 * pg)
	if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_FSIZE, &old)
	for _, o := range []op{
		W(3*pg, 1), W(3*pg-1, 5), W(2*pg, 2*pg), alloc(2*pg, 2*pg), keep(2*pg, pg), keep(0, 5*pg),
		alloc(5*pg, 5*pg), punch(0, pg), W(0, 1), W(4*pg, 1), alloc(2*pg, pg+1),
	} {
		d.apply(o)
	}
}
