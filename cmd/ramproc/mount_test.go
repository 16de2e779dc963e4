package main

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/internal/testenv"
)

// startMount runs `ramproc mount ARGS` and waits for the line that says it
// is serving: the path of the RAM file.
func startMount(t *testing.T, args ...string) (*exec.Cmd, string) {
	t.Helper()
	testenv.RequireFUSE(t)
	return launchMount(t, ramprocBinary(t), nil, testenv.Output(t), args...)
}

// launchMount starts bin's mount command with the given process attributes
// (nil: as this process) and returns once it has printed its file's path.
// The mountpoint is the last argument.
func launchMount(t *testing.T, bin string, attr *syscall.SysProcAttr, stderr *os.File, args ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"mount"}, args...)...)
	cmd.SysProcAttr = attr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
			// A killed server leaves its mount behind; do not leave it to
			// the next run.
			unix.Unmount(args[len(args)-1], unix.MNT_DETACH)
		}
	})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(l)
		io.Copy(io.Discard, stdout)
	}()
	select {
	case l := <-line:
		if l == "" {
			t.Fatal("ramproc mount exited without printing the file's path")
		}
		return cmd, l
	case <-time.After(20 * time.Second):
		t.Fatal("ramproc mount did not report its file within 20s")
	}
	return nil, ""
}

// stopMount sends sig and expects a clean exit.
func stopMount(t *testing.T, cmd *exec.Cmd, sig os.Signal) {
	t.Helper()
	cmd.Process.Signal(sig)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ramproc mount after %v: %v, want exit 0", sig, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("ramproc mount did not stop within 20s of %v", sig)
	}
}

func TestMountCommand(t *testing.T) {
	tmp := t.TempDir()
	mnt := filepath.Join(tmp, "mnt") // missing: mount creates it
	// Let another user walk to the mount (t.TempDir makes 0700 folders).
	os.Chmod(tmp, 0o755)
	os.Chmod(filepath.Dir(tmp), 0o755)
	cmd, path := startMount(t, "-max-size", "1m", "-mode", "0640", "-stats", mnt)
	if path != filepath.Join(mnt, "ramfile") {
		t.Fatalf("printed %q, want %s", path, filepath.Join(mnt, "ramfile"))
	}
	out, err := exec.Command("sh", "-c", "echo abcd > "+path+" && cat "+path).CombinedOutput()
	if err != nil || string(out) != "abcd\n" {
		t.Fatalf("echo/cat: %q, %v", out, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode != unix.S_IFREG|0o640 || st.Size != 5 {
		t.Errorf("stat: mode %o size %d, %v", st.Mode, st.Size, err)
	}
	// Another local user reaches the 0640 file as "other": denied by its
	// mode, not by FUSE (which without allow_other would deny even a 0666 file).
	asNobody := func(script string) (string, error) {
		c := exec.Command("sh", "-c", script)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := c.CombinedOutput()
		return string(out), err
	}
	if out, err := asNobody("cat " + path); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("nobody reading a 0640 file: %q, %v; want Permission denied", out, err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if out, err := asNobody("echo hi >> " + path + " && cat " + path); err != nil || out != "abcd\nhi\n" {
		t.Errorf("nobody appending to a 0666 file: %q, %v", out, err)
	}
	if err := os.Truncate(path, 5); err != nil {
		t.Fatal(err)
	}
	stats, err := os.ReadFile(filepath.Join(mnt, "stats"))
	if err != nil || !strings.Contains(string(stats), "\nramproc_store_size_bytes 5\n") {
		t.Errorf("stats: %q, %v", stats, err)
	}
	// Capacity: 1 MiB, then ENOSPC.
	err = os.WriteFile(path, make([]byte, 2<<20), 0)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("writing 2 MiB into a 1 MiB file: %v, want ENOSPC", err)
	}
	// The stats file has no bind mount of its own: it goes with the rest.
	stopMount(t, cmd, syscall.SIGTERM)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after SIGTERM the file is still there: %v", err)
	}
	if got := testenv.MountsUnder(t, mnt); len(got) != 0 {
		t.Errorf("mounts left after SIGTERM: %q", got)
	}

	// SIGINT stops it too, and the mountpoint can be reused at once.
	cmd, path = startMount(t, mnt)
	if err := os.WriteFile(path, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	stopMount(t, cmd, os.Interrupt)
}

// Every `ramproc mount`, whatever its flags, stops with the tools operators
// use: a plain umount(8) or fusermount3 -u of the directory makes the server
// exit 0 and leaves no mount behind (umount(2) refuses a mount with mounts
// under it, so no flag may add a bind mount).
func TestMountStopsWithPlainUmount(t *testing.T) {
	tools := [][]string{{"umount"}, {"fusermount3", "-u"}}
	for _, flags := range [][]string{{"-stats"}, {"-stats", "-no-open"}, {"-stats", "-passthrough", "off"}} {
		for _, tool := range tools {
			t.Run(strings.Join(append(flags, tool[0]), " "), func(t *testing.T) {
				if _, err := exec.LookPath(tool[0]); err != nil {
					testenv.Missing(t, tool[0]+" is not installed (apt-get install fuse3 mount)")
				}
				mnt := filepath.Join(t.TempDir(), "mnt")
				cmd, path := startMount(t, append(flags, mnt)...)
				if _, err := os.ReadFile(filepath.Join(mnt, "stats")); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte("x"), 0); err != nil {
					t.Fatal(err)
				}
				if out, err := exec.Command(tool[0], append(tool[1:], mnt)...).CombinedOutput(); err != nil {
					t.Fatalf("%s %s: %v: %s", strings.Join(tool, " "), mnt, err, out)
				}
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("ramproc mount after %s: %v, want exit 0", tool[0], err)
					}
				case <-time.After(20 * time.Second):
					t.Fatalf("ramproc mount did not stop within 20s of %s", tool[0])
				}
				if got := testenv.MountsUnder(t, mnt); len(got) != 0 {
					t.Errorf("mounts left after %s: %q", tool[0], got)
				}
			})
		}
	}
}

// A server killed with SIGKILL leaves a dead mount; the next `ramproc
// mount` cleans it up and serves.
func TestMountRecoversFromKilledServer(t *testing.T) {
	mnt := filepath.Join(t.TempDir(), "mnt")
	cmd, _ := startMount(t, "-stats", mnt)
	cmd.Process.Kill()
	cmd.Wait()
	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("statfs of the killed server's mount: %v, want ENOTCONN", err)
	}
	cmd, path := startMount(t, mnt)
	if err := os.WriteFile(path, []byte("alive"), 0); err != nil {
		t.Fatal(err)
	}
	if got := testenv.MountsUnder(t, mnt); len(got) != 1 {
		t.Errorf("mounts at or under %s after recovery: %q, want only it", mnt, got)
	}
	stopMount(t, cmd, syscall.SIGTERM)
	if got := testenv.MountsUnder(t, mnt); len(got) != 0 {
		t.Errorf("mounts left after SIGTERM: %q", got)
	}
}

// Bad input: a one-line error that says what to do, and exit status 2.
func TestMountUsageErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	mnt := filepath.Join(dir, "mnt") // never mounted: each case is refused first
	cases := []struct {
		args []string
		want string
	}{
		{[]string{}, "give exactly one MOUNTPOINT"},
		{[]string{"-bogus", mnt}, "flag provided but not defined"},
		{[]string{"-mode", "999", mnt}, "not an octal permission"},
		{[]string{"-max-size", "lots", mnt}, "is not a size"},
		{[]string{"-max-size", "-200%", mnt}, "percentage"},
		{[]string{"-passthrough", "maybe", mnt}, "use auto, on or off"},
		{[]string{file}, "not a directory"},
	}
	for _, c := range cases {
		cmd := exec.Command(ramprocBinary(t), append([]string{"mount"}, c.args...)...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("mount %v: %v, want exit status 2", c.args, err)
		}
		msg := string(out)
		if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, c.want) {
			t.Errorf("mount %v printed %q; want one line containing %q", c.args, msg, c.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "4096": 4096, "64k": 64 << 10, "64K": 64 << 10, "2m": 2 << 20, "3G": 3 << 30, "1t": 1 << 40} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	half, err := parseSize("50%")
	if err != nil || half <= 0 {
		t.Errorf("50%%: %d, %v", half, err)
	}
	// Above 100% as tmpfs takes it: the memory is used as the file grows.
	if triple, err := parseSize("300%"); err != nil || triple < 5*half || triple > 7*half {
		t.Errorf("300%%: %d, %v; want 6 times 50%% (%d)", triple, err, half)
	}
	for _, bad := range []string{"", "-1", "1x", "k", "1.5g", "-5%", "NaN%", "Inf%", "1e300%", "99999999999999999999", "9000000000000000000t"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

// FuzzParseSize: never panics, never returns a negative size, and a size it
// prints back in bytes parses to itself.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "64k", "2G", "50%", "", "-1", "1e9", "100%", "0.5%", "9223372036854775807"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("parseSize(%q) = %d", s, n)
		}
		if !strings.HasSuffix(s, "%") {
			back, err := parseSize(strconv.FormatInt(n, 10))
			if err != nil || back != n {
				t.Fatalf("round trip of %d: %d, %v", n, back, err)
			}
		}
		_ = describeSize(n)
	})
}

// An unprivileged user mounts through fusermount3: no passthrough, every
// read and write forwarded, the capacity enforced by the store itself.
func TestMountUnprivileged(t *testing.T) {
	testenv.RequireUnprivilegedFUSE(t)
	// nobody must be able to run the binary and own the mountpoint.
	dir, err := os.MkdirTemp("", "ramproc-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "ramproc")
	src, err := os.ReadFile(ramprocBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, mnt} {
		os.Chown(p, 65534, 65534)
		os.Chmod(p, 0o755)
	}
	nobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}

	errFile, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer errFile.Close()
	cmd, path := launchMount(t, bin, nobody, errFile, "-max-size", "64k", mnt)
	if path != filepath.Join(mnt, "ramfile") {
		t.Fatalf("unprivileged mount printed %q", path)
	}
	if msg, _ := os.ReadFile(errFile.Name()); !strings.Contains(string(msg), "forwarded") {
		t.Errorf("an unprivileged mount should say it forwards I/O: %s", msg)
	}
	client := exec.Command("sh", "-c", `echo hello > "$1" && cat "$1" && head -c 100000 /dev/zero > "$1"; echo "rc=$?"; stat -c %s "$1"`, "sh", path)
	client.SysProcAttr = nobody
	out, _ := client.CombinedOutput()
	// 64 KiB capacity: the 100000-byte write stops short with ENOSPC.
	if !strings.HasPrefix(string(out), "hello\n") || !strings.Contains(string(out), "No space left on device") || !strings.HasSuffix(string(out), "rc=1\n65536\n") {
		t.Errorf("client as nobody:\n%s", out)
	}
	stopMount(t, cmd, syscall.SIGTERM)
	if fstype, _ := mountType(mnt); fstype != "" {
		t.Errorf("still mounted after SIGTERM: %s", fstype)
	}
}

// mountType returns the file system type mounted exactly at dir, if any.
func mountType(dir string) (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 8 && f[4] == dir {
			for i, x := range f {
				if x == "-" && i+1 < len(f) {
					return f[i+1], nil
				}
			}
		}
	}
	return "", nil
}

// memCgroup creates a memory cgroup of its own for the test, below the
// one this process is in (cgroup v1 memory controller, or v2), and removes
// it at the end. Shared memory is charged to the cgroup of the task that
// allocates the pages, so the cgroup's "shmem" counts exactly the pages
// written by its tasks, whatever other processes do.
func memCgroup(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var parent string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		switch {
		case f[0] != "0" && slicesContain(strings.Split(f[1], ","), "memory"):
			parent = filepath.Join("/sys/fs/cgroup/memory", f[2])
		case f[0] == "0" && parent == "":
			for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
				ctl, err := os.ReadFile(filepath.Join(root, f[2], "cgroup.controllers"))
				if err == nil && slicesContain(strings.Fields(string(ctl)), "memory") {
					parent = filepath.Join(root, f[2])
				}
			}
		}
	}
	if parent == "" {
		testenv.Missing(t, "no memory cgroup controller (v1 /sys/fs/cgroup/memory or v2 with memory enabled) to measure the RAM file's memory in")
	}
	cg := filepath.Join(parent, "ramproc-memtest-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		testenv.Missing(t, "cannot create a memory cgroup: "+err.Error())
	}
	t.Cleanup(func() {
		// Its tasks have exited; v1 may need a moment to drop the charges.
		for i := 0; i < 50; i++ {
			if os.Remove(cg) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("cannot remove the test's cgroup %s", cg)
	})
	return cg
}

func slicesContain(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// cgroupShmem is the shared memory charged to cgroup cg, in bytes.
func cgroupShmem(t *testing.T, cg string) int64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(cg, "memory.stat"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "shmem "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no shmem line in %s/memory.stat", cg)
	return 0
}

// Unload frees the memory: the bytes written to the RAM file are given
// back to the system when the server stops, as with a module's unload.
// The server and the writer run in a memory cgroup of the test's own, so
// that what is measured is the store's memory alone: the system-wide Shmem
// counter moves with every other process on the machine.
func TestMountFreesMemoryOnStop(t *testing.T) {
	const size = 128 << 20
	cg := memCgroup(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	cmd, path := startMount(t, mnt)
	// The store is still empty, so moving the server now moves no charge;
	// its own allocations (forwarded writes) are charged to cg from here.
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	// The writer joins cg before it writes: with passthrough the pages are
	// allocated, and charged, in the writer's context.
	w := exec.Command("sh", "-c", `echo $$ > "$1/cgroup.procs" && exec dd if=/dev/zero of="$2" bs=1M count="$3" conv=notrunc status=none`,
		"sh", cg, path, strconv.Itoa(size>>20))
	if out, err := w.CombinedOutput(); err != nil {
		t.Fatalf("writer: %v: %s", err, out)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 < size {
		t.Fatalf("the file holds %d bytes (st_blocks) after writing %d", st.Blocks*512, size)
	}
	held := cgroupShmem(t, cg)
	if held < size*9/10 {
		t.Fatalf("the writer's cgroup is charged %d bytes of shared memory after writing %d to the file", held, size)
	}
	stopMount(t, cmd, syscall.SIGTERM)
	// The store is freed when its last descriptor closes, with the
	// process; poll a short while for the charge to go.
	left := held
	for i := 0; i < 40 && left > size/10; i++ {
		time.Sleep(50 * time.Millisecond)
		left = cgroupShmem(t, cg)
	}
	t.Logf("shared memory charged to the test's cgroup: %d bytes while serving, %d after the stop", held, left)
	if left > size/10 {
		t.Errorf("after the server stopped, %d of the %d bytes of shared memory the file held are still in use", left, held)
	}
}
