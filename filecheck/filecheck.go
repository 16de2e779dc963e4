// Package filecheck checks whether a file behaves like a regular file on
// tmpfs, and reports every deviation in one run.
//
// It is a differential tester: every step of every check runs twice, once on
// the file under test and once on a scratch file on tmpfs (the oracle), and
// the two results (return values, errnos, file offsets, bytes read, sizes,
// st_blocks, whether timestamps moved) must agree. A check fails at the first
// step where they differ, and the Result names that step, its arguments and
// both results. Because the kernel's tmpfs is the oracle, a tmpfs file passes
// every check by construction; the checks encode no opinion of their own
// about what a file should do.
//
// The checks come in six groups that write, selected by Config.Run (see
// Names), and a seventh, read-only/..., that runs instead of them with
// Config.ReadOnly (below):
//
//   - seed/...: the six checks of the Rust proc-file module's own tester
//     (open options, read/write, write-seek-read, write-seek-overwrite,
//     concurrent writes, and writes while the file's server is unloaded and
//     loaded again);
//   - semantics/...: one check per regular-file rule (O_TRUNC, O_APPEND,
//     holes, lseek including SEEK_DATA/SEEK_HOLE, ftruncate, fallocate,
//     fstat, timestamps, fsync, mmap, and reading through sendfile, splice
//     and copy_file_range as through read) plus edge inputs (offsets 0,
//     maximal and negative, lengths 0 and huge, invalid whence, O_DIRECT,
//     O_SYNC, buffers that cross EOF or end in unmapped memory). The one
//     difference allowed anywhere is there: copy_file_range may be refused
//     with EXDEV, EOPNOTSUPP, ENOSYS or EINVAL, the destination untouched,
//     where tmpfs copied, because callers fall back to read and write on
//     those (and a FUSE file gives EXDEV towards tmpfs);
//   - random: a seeded fsx-style sequence of operations, contents compared
//     after every step, the failing sequence shrunk;
//   - concurrency/...: several processes appending with O_APPEND and
//     pwriting disjoint ranges at the same time;
//   - permissions/setid-clearing: permission checks and the clearing of
//     setuid and setgid by a write, truncate, O_TRUNC, fallocate or chown,
//     as the user nobody, the file's owner and root (run as root: a child
//     drops to nobody; skipped otherwise);
//   - capacity/mmap-beyond: writes, fallocate and stores through a shared
//     mapping beyond the file's capacity, against a private tmpfs mounted
//     with size=Config.OracleSize (skipped without it). write(2) and
//     fallocate(2) must give what tmpfs gives. For the stores, a SIGBUS at
//     the fault and an ENOSPC from msync both count as telling the writer;
//     then the file must hold no more than its capacity, no page bytes
//     never stored there, and every page written and fsync'd before the
//     stores. Which stored pages are kept may differ from tmpfs (whose
//     lowest pages win): without passthrough it depends on the order of
//     the kernel's writeback.
//
// With an unload and a load command, seed/reload also requires the file to
// be gone between the two; with a restart command (Config.RestartCmd) it
// requires the opposite: writers keep their descriptors across it with no
// error, and every write they were told succeeded is in the file. Only
// regular files are checked.
//
// The checks write to the file. Run refuses a file that is not empty unless
// Config.Destructive is set, and leaves an empty file empty again.
//
// # Read-only checks
//
// With Config.ReadOnly, the checks read-only/... run instead, which never
// write: they take any readable regular file, the kernel's /proc and /sys
// files and generated files included. Their oracle is the file's own
// read(2): each step reads the file one way (read(2) into buffers of
// several sizes, readv, pread, lseek and read, sendfile and splice into a
// pipe, copy_file_range into a tmpfs file, a MAP_PRIVATE mapping in a child
// process) and must get what a reference read(2) to EOF gave just before or
// just after it, exactly or once numbers are normalized (content that
// moves between opens); a step is retried while the content moves under it.
// sendfile, splice and copy_file_range may refuse with an errno on which
// callers fall back to read(2), and mmap may be refused or fault at once:
// those pass with a Result.Note. Bytes lost silently fail (0 bytes from
// sendfile while read(2) gives content). read-only/size only notes the
// sizes fstat and lseek(SEEK_END) show. See docs/check.md.
//
// # Child processes
//
// mmap and the multi-process checks run in child processes: filecheck
// re-executes os.Executable() with the environment variable FILECHECK_CHILD
// set. A Go process that serves a FUSE file and also touches it through a
// memory mapping can deadlock on its own page faults, so doing that work in a
// child is what makes it safe to call Run in the same process (for instance a
// test) that serves the file under test. The package's init function calls
// MaybeRunChild, so any program that imports filecheck, including test
// binaries, answers as a child without further work; a main or TestMain may
// also call MaybeRunChild first thing to make the dependency explicit.
package filecheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultOps is the number of operations of the randomized check when
// Config.Ops is zero.
const DefaultOps = 2000

// Config says what Run checks and how.
type Config struct {
	// Path is the file under test. It must exist; it is never created,
	// removed or renamed.
	Path string

	// OracleDir is the directory for the oracle's scratch file. Empty means
	// /dev/shm if it is a tmpfs, else a private tmpfs that Run mounts (as
	// root) and unmounts again.
	OracleDir string

	// OracleSize is the capacity of the file under test, in bytes (e.g. the
	// -max-size of ramproc mount). When set, the check capacity/mmap-beyond
	// compares writes and mapped stores beyond it with a private tmpfs
	// mounted with size=OracleSize (root only); zero skips that check.
	OracleSize int64

	// Run selects the checks whose names it matches (see Names); nil runs
	// them all.
	Run *regexp.Regexp

	// ReadOnly runs the read-only checks (read-only/...) instead of the
	// others: they never write to the file, so they take any readable
	// regular file, /proc and /sys files included, and compare each way of
	// reading it with its own read(2). OracleDir then only holds a scratch
	// file for copy_file_range (default /dev/shm, else os.TempDir()).
	// Destructive, OracleSize and the reload commands do not apply.
	ReadOnly bool

	// Destructive allows Run to overwrite a file that is not empty. Its
	// contents are read first and written back at the end, but that is
	// best effort: a failing file may not take them back.
	Destructive bool

	// Ops is the length of the randomized sequence (DefaultOps if zero).
	Ops int

	// Seed seeds the randomized sequence; zero picks one from the clock.
	// The seed used is in Report.Seed.
	Seed int64

	// ReloadCmd, or UnloadCmd followed by LoadCmd, are shell commands (run
	// with sh -c) that stop the file's server and start it again, for the
	// check seed/reload. Without them that check is skipped.
	ReloadCmd string
	UnloadCmd string
	LoadCmd   string

	// RestartCmd, instead of those, restarts the file's server without
	// unmounting it (ramproc restart): seed/reload then requires that
	// writers keep their descriptors open across it with no error at all,
	// and that every write they were told succeeded is in the file.
	RestartCmd string

	// CommandTimeout bounds each of those commands and each wait for a
	// child process (60s if zero).
	CommandTimeout time.Duration

	// ShrinkTimeout bounds the time the randomized check spends shrinking a
	// failing sequence (30s if zero).
	ShrinkTimeout time.Duration

	// Progress, if not nil, receives progress lines for long checks (meant
	// for a terminal: lines are redrawn with a carriage return).
	Progress io.Writer
}

// Status is the outcome of one check.
type Status string

// The three outcomes of a check.
const (
	Pass Status = "PASS"
	Fail Status = "FAIL"
	Skip Status = "SKIP"
)

// Diff is the first step at which the file and the oracle disagreed.
type Diff struct {
	// Step counts the steps of the check from 1 (for the randomized check,
	// the operation number).
	Step int `json:"step"`
	// Call is the system call and its arguments, e.g.
	// "pwrite(fd1, 5 bytes \"hello\", 10)".
	Call string `json:"call"`
	// File and Oracle are the results on the file under test and on the
	// oracle.
	File   string `json:"file"`
	Oracle string `json:"oracle"`
}

// String formats the difference on one line.
func (d *Diff) String() string {
	return fmt.Sprintf("step %d: %s: file: %s; oracle: %s", d.Step, d.Call, d.File, d.Oracle)
}

// Result is the outcome of one check.
type Result struct {
	// Name is the check's name, e.g. "semantics/seek-hole".
	Name string `json:"name"`
	// Status is PASS, FAIL or SKIP.
	Status Status `json:"status"`
	// Reason says briefly why the check failed or was skipped.
	Reason string `json:"reason,omitempty"`
	// FirstDiff is the first step where the file and the oracle differ, if
	// the check failed that way (some checks fail on a property instead,
	// e.g. a lost record).
	FirstDiff *Diff `json:"first_diff,omitempty"`
	// Note is a remark on a check that passed or failed all the same: a
	// read-only check notes a call refused with an errno on which callers
	// fall back to read(2), and the sizes the file shows.
	Note string `json:"note,omitempty"`
	// Details holds further lines worth reading (e.g. the shrunk operation
	// sequence of the randomized check).
	Details []string `json:"details,omitempty"`
	// Duration is how long the check took.
	Duration time.Duration `json:"duration_ns"`
}

// Report is the outcome of a Run.
type Report struct {
	// Path is the file under test; Oracle is the oracle's scratch file
	// (empty with Config.ReadOnly: the oracle is the file's read(2)).
	Path   string `json:"path"`
	Oracle string `json:"oracle"`
	// Seed and Ops are those of the randomized check (0 with
	// Config.ReadOnly).
	Seed int64 `json:"seed"`
	Ops  int   `json:"ops"`
	// Results has one entry per selected check, in the order they ran.
	Results []Result `json:"results"`
	// Passed, Failed and Skipped count Results by status.
	Passed  int `json:"passed"`
	Failed  int `json:"failed"`
	Skipped int `json:"skipped"`
	// Notes are remarks about the run as a whole (e.g. the file's contents
	// could not be restored).
	Notes []string `json:"notes,omitempty"`
}

// Summary is the closing line "N passed, N failed, N skipped".
func (r *Report) Summary() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped", r.Passed, r.Failed, r.Skipped)
}

// OK reports whether no check failed.
func (r *Report) OK() bool { return r.Failed == 0 }

// Result returns the result of the named check, or nil if it did not run.
func (r *Report) Result(name string) *Result {
	for i := range r.Results {
		if r.Results[i].Name == name {
			return &r.Results[i]
		}
	}
	return nil
}

// WriteText writes one line per check (status, name, the reason if any
// and the note in parentheses), any detail lines indented below it, the notes, and the
// summary line.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, res := range r.Results {
		fmt.Fprintf(&b, "%s %s", res.Status, res.Name)
		if res.Reason != "" {
			fmt.Fprintf(&b, ": %s", res.Reason)
		}
		if res.Note != "" {
			fmt.Fprintf(&b, " (note: %s)", res.Note)
		}
		b.WriteByte('\n')
		for _, d := range res.Details {
			fmt.Fprintf(&b, "    %s\n", d)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	b.WriteString(r.Summary())
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

// UsageError is an error in how Run was called (a missing file, a file
// that is not empty without Config.Destructive, no usable oracle
// directory, ...). Its message says what to do.
type UsageError struct {
	Msg string
	Err error // the underlying error, if any (e.g. ErrNotEmpty)
}

func (e *UsageError) Error() string { return e.Msg }

// Unwrap returns the underlying error.
func (e *UsageError) Unwrap() error { return e.Err }

// ErrNotEmpty is wrapped by the UsageError Run returns for a file that is
// not empty when Config.Destructive is false.
var ErrNotEmpty = errors.New("file is not empty")

func usagef(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// Names lists the names of all checks in the order Run runs them: those
// that write, then the read-only ones (Config.ReadOnly).
func Names() []string {
	var names []string
	for _, c := range append(allChecks(), readOnlyChecks()...) {
		names = append(names, c.name)
	}
	return names
}

// Run runs the checks that cfg selects against cfg.Path and reports every
// result. It returns an error only when it cannot run at all: a
// *UsageError for a mistake of the caller's (which a command line should
// report with exit status 2), another error for a failure of the machine.
// Check failures are in the Report, not the error. Cancelling ctx stops Run
// between steps; the remaining checks are reported as skipped.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Path == "" {
		return nil, usagef("no file to check: give the path of an existing file")
	}
	if cfg.ReloadCmd != "" && (cfg.UnloadCmd != "" || cfg.LoadCmd != "") {
		return nil, usagef("give either a reload command or an unload and a load command, not both")
	}
	if cfg.RestartCmd != "" && (cfg.ReloadCmd != "" || cfg.UnloadCmd != "") {
		return nil, usagef("a restart command replaces the reload or unload and load commands: give only one kind")
	}
	if (cfg.UnloadCmd == "") != (cfg.LoadCmd == "") {
		return nil, usagef("an unload command needs a load command and vice versa: give both")
	}
	if cfg.Ops < 0 {
		return nil, usagef("the number of random operations must not be negative")
	}
	if cfg.Ops == 0 {
		cfg.Ops = DefaultOps
	}
	if cfg.Seed == 0 {
		cfg.Seed = time.Now().UnixNano()
		if cfg.Seed == 0 {
			cfg.Seed = 1
		}
	}
	if cfg.CommandTimeout <= 0 {
		cfg.CommandTimeout = 60 * time.Second
	}
	if cfg.ShrinkTimeout <= 0 {
		cfg.ShrinkTimeout = 30 * time.Second
	}

	group := allChecks()
	if cfg.ReadOnly {
		if cfg.Destructive || cfg.OracleSize != 0 || cfg.ReloadCmd != "" || cfg.UnloadCmd != "" || cfg.RestartCmd != "" {
			return nil, usagef("the read-only checks never write to the file nor restart its server: drop --destructive, --oracle-size and the reload and restart commands, or --read-only")
		}
		group = readOnlyChecks()
	}
	var selected []*check
	for _, c := range group {
		if cfg.Run == nil || cfg.Run.MatchString(c.name) {
			selected = append(selected, c)
		}
	}
	if len(selected) == 0 {
		hint := "list the checks with --list (filecheck.Names)"
		if !cfg.ReadOnly && cfg.Run.MatchString("read-only/") {
			hint = "the read-only/ checks run with --read-only (Config.ReadOnly)"
		}
		return nil, usagef("no check matches %q: %s", cfg.Run, hint)
	}

	rep := &Report{Path: cfg.Path, Seed: cfg.Seed, Ops: cfg.Ops}
	r := &runner{cfg: cfg, ctx: ctx, report: rep}
	defer r.closeWorkers()
	if cfg.ReadOnly {
		if err := r.openReadOnly(); err != nil {
			return nil, err
		}
		rep.Seed, rep.Ops = 0, 0
	} else {
		if err := r.openTarget(); err != nil {
			return nil, err
		}
		defer r.restoreTarget()
		// Every check starts from an empty file: one that cannot be emptied
		// (a /proc or /sys attribute) would fail them all for the same
		// reason, so it is said once, and nothing runs.
		if err := r.empty(cfg.Path); err != nil {
			return nil, usagef("cannot start from an empty file: %v; the checks need a file they can truncate, a regular file of the file system under test; for a /proc or /sys file pass --read-only (checks that only read)", err)
		}
		if err := r.setupOracle(); err != nil {
			return nil, err
		}
		defer r.cleanupOracle()
		rep.Oracle = r.oraclePath
	}
	for _, c := range selected {
		var res Result
		if err := ctx.Err(); err != nil {
			res = Result{Name: c.name, Status: Skip, Reason: "not run: " + err.Error()}
		} else {
			r.progressf("%s ...", c.name)
			res = r.runCheck(c)
			r.progressDone()
		}
		switch res.Status {
		case Pass:
			rep.Passed++
		case Fail:
			rep.Failed++
		case Skip:
			rep.Skipped++
		}
		rep.Results = append(rep.Results, res)
	}
	return rep, nil
}

// progressf redraws the progress line.
func (r *runner) progressf(format string, args ...any) {
	if r.cfg.Progress == nil {
		return
	}
	fmt.Fprintf(r.cfg.Progress, "\r\033[K"+format, args...)
}

// progressDone clears the progress line.
func (r *runner) progressDone() {
	if r.cfg.Progress == nil {
		return
	}
	fmt.Fprint(r.cfg.Progress, "\r\033[K")
}

// isTmpfs reports whether dir is on a tmpfs.
func isTmpfs(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return st.Type == unix.TMPFS_MAGIC
}

// setupOracle creates the oracle's scratch file.
func (r *runner) setupOracle() error {
	dir := r.cfg.OracleDir
	if dir == "" {
		switch {
		case isTmpfs("/dev/shm"):
			dir = "/dev/shm"
		case os.Geteuid() == 0:
			d, err := os.MkdirTemp("", "filecheck-oracle-")
			if err != nil {
				return fmt.Errorf("oracle: %w", err)
			}
			if err := unix.Mount("tmpfs", d, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
				os.Remove(d)
				return usagef("/dev/shm is not a tmpfs and mounting a private tmpfs on %s failed (%v): pass --oracle DIR with DIR on a tmpfs", d, err)
			}
			r.oracleMount = d
			dir = d
		default:
			return usagef("/dev/shm is not a tmpfs and only root can mount one: pass --oracle DIR with DIR on a tmpfs (e.g. mount -t tmpfs tmpfs DIR)")
		}
	} else {
		st, err := os.Stat(dir)
		if err != nil || !st.IsDir() {
			return usagef("oracle directory %s is not a directory: pass --oracle DIR with an existing directory on a tmpfs", dir)
		}
		if !isTmpfs(dir) {
			r.notef("oracle directory %s is not on a tmpfs: the checks compare against its file system instead", dir)
		}
	}
	f, err := os.CreateTemp(dir, "filecheck-oracle-*")
	if err != nil {
		r.cleanupOracle()
		return usagef("cannot create the oracle's scratch file in %s (%v): pass --oracle DIR with a writable directory on a tmpfs", dir, err)
	}
	r.oraclePath = f.Name()
	// The oracle carries the file's permission bits, so that st_mode can
	// be compared whole.
	if err := unix.Fchmod(int(f.Fd()), r.targetMode&0o7777); err != nil {
		f.Close()
		return fmt.Errorf("oracle: %w", err)
	}
	return f.Close()
}

func (r *runner) cleanupOracle() {
	if r.oraclePath != "" {
		os.Remove(r.oraclePath)
		r.oraclePath = ""
	}
	if r.oracleMount != "" {
		unix.Unmount(r.oracleMount, unix.MNT_DETACH)
		os.Remove(r.oracleMount)
		r.oracleMount = ""
	}
}

// maxRestore is the most Run reads of a non-empty file to write back later.
const maxRestore = 256 << 20

// openTarget checks that the file exists and may be written, and remembers
// what to restore.
func (r *runner) openTarget() error {
	path := r.cfg.Path
	st, err := os.Stat(path)
	if err != nil {
		return usagef("cannot check %s: %v (give the path of an existing file)", path, err)
	}
	if st.IsDir() {
		return usagef("cannot check %s: it is a directory (give the path of a file)", path)
	}
	if !st.Mode().IsRegular() {
		return usagef("cannot check %s: it is a %s, not a regular file (give the path of a regular file, e.g. an empty one made with ': > /dev/shm/empty-file')", path, fileKind(st.Mode()))
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return usagef("cannot open %s for reading and writing: %v (the checks need both; --read-only runs the checks that only read)", path, err)
	}
	defer unix.Close(fd)
	var sst unix.Stat_t
	if err := unix.Fstat(fd, &sst); err != nil {
		return fmt.Errorf("fstat %s: %w", path, err)
	}
	r.targetMode = sst.Mode & 0o7777
	r.targetUID = sst.Uid
	// A /proc file reports size 0 whatever it holds: read to be sure.
	var one [1]byte
	n, _ := unix.Pread(fd, one[:], 0)
	if sst.Size == 0 && n <= 0 {
		return nil
	}
	if !r.cfg.Destructive {
		return &UsageError{Err: ErrNotEmpty, Msg: fmt.Sprintf(
			"%s is not empty and the checks overwrite it: pass --destructive to allow that (its contents are written back at the end, best effort), or --read-only for the checks that only read", path)}
	}
	var buf []byte
	chunk := make([]byte, 1<<20)
	for off := int64(0); ; {
		n, err := unix.Pread(fd, chunk, off)
		if err != nil {
			r.notef("could not read %s to restore it later (%v): its contents are lost", path, err)
			return nil
		}
		if n <= 0 {
			break
		}
		buf = append(buf, chunk[:n]...)
		off += int64(n)
		if len(buf) > maxRestore {
			r.notef("%s holds more than %d bytes: its contents are not restored", path, maxRestore)
			return nil
		}
	}
	r.restore = buf
	r.restoreSet = true
	return nil
}

// restoreTarget empties the file, writes back what it held, and restores
// its permission bits.
func (r *runner) restoreTarget() {
	fd, err := openTimeout(r.cfg.Path, unix.O_RDWR|unix.O_CLOEXEC, min(5*time.Second, r.cfg.CommandTimeout))
	if err != nil {
		r.notef("could not reopen %s to restore it: %v", r.cfg.Path, err)
		return
	}
	defer unix.Close(fd)
	unix.Fchmod(fd, r.targetMode)
	if err := unix.Ftruncate(fd, 0); err != nil {
		r.notef("could not empty %s at the end: %v", r.cfg.Path, err)
	}
	if !r.restoreSet || len(r.restore) == 0 {
		return
	}
	for off := 0; off < len(r.restore); {
		n, err := unix.Pwrite(fd, r.restore[off:], int64(off))
		if err != nil || n <= 0 {
			r.notef("could not write back the %d bytes %s held: %v", len(r.restore), r.cfg.Path, err)
			return
		}
		off += n
	}
	r.notef("wrote back the %d bytes %s held before the checks", len(r.restore), r.cfg.Path)
}

// fileKind names the type of a file that is not regular.
func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	}
	return "special file"
}

// openTimeout opens path but gives up waiting after d (the open itself
// may stay blocked in a goroutine if the file's server hangs).
func openTimeout(path string, flags int, d time.Duration) (int, error) {
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		fd, err := unix.Open(path, flags, 0)
		ch <- res{fd, err}
	}()
	select {
	case x := <-ch:
		return x.fd, x.err
	case <-time.After(d):
		go func() {
			if x := <-ch; x.err == nil {
				unix.Close(x.fd)
			}
		}()
		return -1, fmt.Errorf("open did not return within %v", d)
	}
}

func (r *runner) notef(format string, args ...any) {
	r.report.Notes = append(r.report.Notes, fmt.Sprintf(format, args...))
}
