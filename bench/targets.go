package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The targets, in the order of the table's columns.
const (
	TargetTmpfs       = "tmpfs"        // a private tmpfs: the reference
	TargetRamproc     = "ramproc"      // ramproc mount -passthrough on (auto if on fails)
	TargetRamprocNoPT = "ramproc-nopt" // ramproc mount -passthrough off
	TargetMemfile     = "memfile"      // the go-fuse fs.MemRegularFile baseline
	// TargetRamprocNoOpen is ramproc mount -no-open: no OPEN or RELEASE
	// requests, every file cached by the kernel.
	TargetRamprocNoOpen = "ramproc-noopen"
)

// AllTargets lists every target, reference first.
var AllTargets = []string{TargetTmpfs, TargetRamproc, TargetRamprocNoPT, TargetRamprocNoOpen, TargetMemfile}

// mountTimeout bounds the wait for a server's "mounted" line.
const mountTimeout = 20 * time.Second

// target is one mounted file system under test.
type target struct {
	name string
	desc string
	dir  string // mountpoint
	data string // the data file (the RAM file)
	gen  string // the generated file ("stats"), or a 100-byte tmpfs file

	// For a FUSE server run as a child; nil cmd for tmpfs.
	cmd    *exec.Cmd
	pid    int
	stderr *tailBuffer
	exited chan struct{}
	werr   error // cmd.Wait's result, set before exited is closed
}

// setupTmpfs mounts a private tmpfs on a new temporary directory and
// creates its data file and a 100-byte file standing for the generated
// file.
func setupTmpfs() (*target, error) {
	dir, err := os.MkdirTemp("", "ramproc-bench-tmpfs-")
	if err != nil {
		return nil, err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	t := &target{
		name: TargetTmpfs,
		desc: "private tmpfs mounted by the bench (the reference)",
		dir:  dir,
		data: filepath.Join(dir, "ramfile"),
		gen:  filepath.Join(dir, "stats"),
	}
	small := make([]byte, 100)
	for i := range small {
		small[i] = 'a' + byte(i%26)
	}
	small[99] = '\n'
	if err := os.WriteFile(t.gen, small, 0o444); err != nil {
		t.close()
		return nil, err
	}
	if err := os.WriteFile(t.data, nil, 0o666); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

// startServer runs cmd, a FUSE server that mounts on dir and prints the
// data file's path as its first stdout line once mounted (the protocol of
// ramproc mount and of ServeBaseline), and waits for that line.
func startServer(ctx context.Context, name, desc string, cmd *exec.Cmd, dir string) (*target, error) {
	return startServerWithin(ctx, name, desc, cmd, dir, mountTimeout)
}

// startServerWithin is startServer with its own bound on the wait.
func startServerWithin(ctx context.Context, name, desc string, cmd *exec.Cmd, dir string, within time.Duration) (*target, error) {
	t := &target{
		name:   name,
		desc:   desc,
		dir:    dir,
		cmd:    cmd,
		stderr: &tailBuffer{max: 16 << 10},
		exited: make(chan struct{}),
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = pw
	cmd.Stderr = t.stderr
	// Should the bench die, the kernel tells the server to unmount.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	pw.Close()
	t.pid = cmd.Process.Pid
	go func() {
		t.werr = cmd.Wait()
		close(t.exited)
	}()
	lines := make(chan string, 1)
	go func() {
		defer pr.Close()
		r := bufio.NewReader(pr)
		line, err := r.ReadString('\n')
		if err != nil {
			close(lines)
			return
		}
		lines <- strings.TrimSpace(line)
		io.Copy(io.Discard, r) // anything else it prints
	}()
	fail := func(why string) (*target, error) {
		t.close()
		return nil, fmt.Errorf("%s: %s%s", strings.Join(cmd.Args, " "), why, t.stderrTail())
	}
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case line, ok := <-lines:
		if !ok {
			<-t.exited
			return fail(fmt.Sprintf("exited (%v) without printing the file's path", t.werr))
		}
		t.data = line
	case <-t.exited:
		return fail(fmt.Sprintf("exited (%v) before mounting", t.werr))
	case <-timer.C:
		return fail(fmt.Sprintf("no path printed within %v", within))
	case <-ctx.Done():
		return fail(ctx.Err().Error())
	}
	if !filepath.IsAbs(t.data) {
		return fail(fmt.Sprintf("printed %q, not an absolute path", t.data))
	}
	if st, err := os.Stat(t.data); err != nil {
		return fail(fmt.Sprintf("printed %q but: %v", t.data, err))
	} else if !st.Mode().IsRegular() {
		return fail(fmt.Sprintf("printed %q, which is not a regular file (%v)", t.data, st.Mode()))
	}
	if g := filepath.Join(dir, "stats"); fileExists(g) {
		t.gen = g
	}
	return t, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// startRamproc mounts ramproc on a new temporary directory with the given
// -passthrough mode and -stats.
func startRamproc(ctx context.Context, name, exe, passthrough string, maxSize int64, extra ...string) (*target, error) {
	dir, err := os.MkdirTemp("", "ramproc-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	args := append([]string{"mount", "-stats", "-passthrough", passthrough, "-max-size", strconv.FormatInt(maxSize, 10)}, extra...)
	args = append(args, dir)
	desc := "ramproc " + strings.Join(args[:len(args)-1], " ")
	t, err := startServer(ctx, name, desc, exec.Command(exe, args...), dir)
	if err != nil {
		os.Remove(dir)
		return nil, err
	}
	// Say which I/O path the server reports it got, when its stats tell.
	if t.gen != "" {
		if b, err := os.ReadFile(t.gen); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "passthrough "); ok {
					t.desc += " [stats: passthrough " + strings.TrimSpace(v) + "]"
				}
			}
		}
	}
	return t, nil
}

// startBaseline mounts the fs.MemRegularFile baseline with cmd(dir).
func startBaseline(ctx context.Context, command func(mountpoint string) *exec.Cmd) (*target, error) {
	dir, err := os.MkdirTemp("", "ramproc-bench-memfile-")
	if err != nil {
		return nil, err
	}
	t, err := startServer(ctx, TargetMemfile, "go-fuse fs.MemRegularFile server (baseline; raw go-fuse node for stats)", command(dir), dir)
	if err != nil {
		os.Remove(dir)
		return nil, err
	}
	return t, nil
}

// alive reports an error if the target's server has exited.
func (t *target) alive() error {
	if t.cmd == nil {
		return nil
	}
	select {
	case <-t.exited:
		return fmt.Errorf("server exited (%v)%s", t.werr, t.stderrTail())
	default:
		return nil
	}
}

// cpu returns the server's CPU time so far; ok is false for tmpfs.
func (t *target) cpu() (sec float64, ok bool) {
	if t.pid == 0 {
		return 0, false
	}
	s, err := processCPU(t.pid)
	if err != nil {
		return 0, false
	}
	return s, true
}

func (t *target) stderrTail() string {
	if t.stderr == nil {
		return ""
	}
	s := strings.TrimSpace(t.stderr.String())
	if s == "" {
		return ""
	}
	if i := strings.Index(s, "panic: "); i >= 0 {
		// A Go panic: its first line says what, the rest is the stack.
		line, _, _ := strings.Cut(s[i:], "\n")
		return "; it panicked: " + line
	}
	return "; its stderr ends: " + lastLines(s, 5)
}

// close stops the server (SIGTERM, then SIGKILL after 5 s), makes sure
// nothing stays mounted on the directory, and removes it. It returns an
// error if the server did not exit cleanly.
func (t *target) close() error {
	var errs []error
	if t.cmd != nil && t.cmd.Process != nil {
		select {
		case <-t.exited:
		default:
			t.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-t.exited:
				if t.werr != nil {
					errs = append(errs, fmt.Errorf("%s server: exit after SIGTERM: %v%s", t.name, t.werr, t.stderrTail()))
				}
			case <-time.After(5 * time.Second):
				t.cmd.Process.Kill()
				<-t.exited
				errs = append(errs, fmt.Errorf("%s server: still running 5 s after SIGTERM; killed", t.name))
			}
		}
	}
	if err := unix.Unmount(t.dir, unix.MNT_DETACH); err == nil {
		if t.cmd != nil {
			errs = append(errs, fmt.Errorf("%s server: left %s mounted; unmounted it", t.name, t.dir))
		}
	} else if err != unix.EINVAL && err != unix.ENOENT {
		errs = append(errs, fmt.Errorf("unmount %s: %v", t.dir, err))
	}
	if err := os.Remove(t.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (w *tailBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	if len(w.b) > w.max {
		w.b = append(w.b[:0], w.b[len(w.b)-w.max:]...)
	}
	return len(p), nil
}

func (w *tailBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.b)
}
