package cgroupfs

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
	"github.com/ramproc/ramproc/internal/cgroupfstest"
	"github.com/ramproc/ramproc/internal/testenv"
)

// The container recipes of docs/cgroupfs.md, run by a real container
// runtime: podman (daemonless, the docker CLI's syntax) with runc, the
// runtime under Docker and most Kubernetes nodes. The container images are
// root file systems the tests make from busybox-static (podman --rootfs): no
// registry is reached.

// podman is a podman whose whole state lives in one test's temporary
// directory: its storage, its locks and events (containers.conf's tmp_dir;
// lock_type "file", because the default shared-memory locks are one
// segment for every podman on the machine, and a fresh state directory
// makes podman free every lock in it as after a reboot), runc's state
// (--runtime-flag root=), and the cgroups of its containers (all under
// one parent made for the test and removed at its end, in every
// hierarchy).
type podman struct {
	dir    string
	parent string // the containers' --cgroup-parent, a name of its own
	env    []string
}

// newPodman stops the test unless podman, runc and a static busybox are
// installed (and the test runs as root), and returns a podman of its own.
// Every container it ran is removed when the test ends, then its cgroups.
func newPodman(t *testing.T) *podman {
	t.Helper()
	testenv.RequireRoot(t, "running containers with podman")
	testenv.RequireCommand(t, "podman", "apt-get install --no-install-recommends podman runc")
	testenv.RequireCommand(t, "runc", "apt-get install runc")
	if bb, err := exec.LookPath("busybox"); err != nil || !static(bb) {
		testenv.Missing(t, "a static busybox is not installed, to make the containers' root file systems (apt-get install busybox-static)")
	}
	dir := t.TempDir()
	p := &podman{dir: dir, parent: "podman-" + livecg.Name()}
	t.Cleanup(func() { p.removeCgroups(t) })
	// No limits above the caller's: the default rlimits (nofile 1048576)
	// need CAP_SYS_RESOURCE, which sandboxes that run this suite may lack
	// ("error setting rlimits" from runc).
	conf := fmt.Sprintf(`[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
runtime = "runc"
tmp_dir = %q
`, filepath.Join(dir, "tmp"))
	storage := fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "run"))
	for name, text := range map[string]string{"containers.conf": conf, "storage.conf": storage} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p.env = append(os.Environ(),
		"CONTAINERS_CONF="+filepath.Join(dir, "containers.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(dir, "storage.conf"))
	t.Cleanup(func() {
		if out, err := p.command("rm", "--all", "--force", "--time", "0").CombinedOutput(); err != nil {
			t.Errorf("podman rm --all: %v\n%s", err, out)
		}
	})
	return p
}

// command is podman with args.
func (p *podman) command(args ...string) *exec.Cmd {
	cmd := exec.Command("podman", append([]string{"--runtime-flag", "root=" + filepath.Join(p.dir, "runc")}, args...)...)
	cmd.Env = p.env
	return cmd
}

// run runs podman with args and returns its output; the test fails if it
// fails.
func (p *podman) run(t *testing.T, args ...string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := p.command(args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("podman %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

// runArgs begins a podman run of a container of this test (removed, if it
// is still there, when the test ends): no network (nothing to set up), its
// cgroups under the test's parent.
func (p *podman) runArgs(more ...string) []string {
	return append([]string{"run", "--network", "none", "--cgroup-parent", "/" + p.parent}, more...)
}

// removeCgroups removes the containers' parent cgroup, and what podman left
// in it (conmon's cgroup), in every hierarchy, deepest first; retried for a
// bounded time: a process that has just ended leaves its cgroup a moment
// after.
func (p *podman) removeCgroups(t *testing.T) {
	parents, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", p.parent))
	if top := filepath.Join("/sys/fs/cgroup", p.parent); exists(top) {
		parents = append(parents, top) // cgroup v2 alone
	}
	for _, parent := range parents {
		var dirs []string
		filepath.WalkDir(parent, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		slices.Reverse(dirs)
		for _, dir := range dirs {
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				err := syscall.Rmdir(dir)
				if err == nil || errors.Is(err, syscall.ENOENT) {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("remove cgroup %s: %v", dir, err)
					break
				}
			}
		}
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// static reports whether the executable at path needs no dynamic loader.
func static(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// rootfs makes a container's root file system: busybox and its applets
// (the shell, cat, dd, grep...), the directories a runtime mounts on, and
// files copied from the host (host path: path in the image).
func rootfs(t *testing.T, files map[string]string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"bin", "proc", "sys", "dev", "etc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, _ := exec.LookPath("busybox")
	files[bb] = "/bin/busybox"
	for src, dst := range files {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		dst = filepath.Join(root, dst)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, applet := range []string{"sh", "cat", "dd", "grep", "head", "printf"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// withLibraries adds to files (host path: path in the image) the dynamic
// executable bin, at the same path, and the libraries it loads (ldd(1)).
func withLibraries(t *testing.T, files map[string]string, bin string) {
	t.Helper()
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", bin, err)
	}
	files[bin] = bin
	for _, lib := range regexp.MustCompile(`/\S+`).FindAllString(string(out), -1) {
		// A library's path as the loader finds it (the image has no
		// ld.so.cache): the name ldd printed, its target copied there.
		files[lib] = lib
	}
}

// docBlock returns the lines of docs/cgroupfs.md's fenced blocks that
// begin with prefix, each with its continuation lines (a trailing \)
// joined: the recipes the tests run as written.
func docBlock(t *testing.T, prefix string) []string {
	t.Helper()
	data, err := os.ReadFile("../docs/cgroupfs.md")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		for strings.HasSuffix(line, `\`) && sc.Scan() {
			line = strings.TrimSuffix(line, `\`) + " " + strings.TrimSpace(sc.Text())
		}
		found = append(found, line)
	}
	if len(found) == 0 {
		t.Fatalf("docs/cgroupfs.md has no line beginning %q: the test runs that recipe", prefix)
	}
	return found
}

// dockerRecipe returns the options of docs/cgroupfs.md's `docker run` line
// with the server's mount point mnt for /var/lib/cgroupfs (the image and
// its command cut, and -it: no terminal here), and the files it binds
// (their paths in the container).
func dockerRecipe(t *testing.T, mnt string) (opts, binds []string) {
	t.Helper()
	f := strings.Fields(docBlock(t, "docker run ")[0])
	image := slices.Index(f, "debian")
	if image < 0 {
		t.Fatalf("docs/cgroupfs.md's docker run line has no image debian: %q", f)
	}
	for i := 2; i < image; i++ {
		if f[i] == "-it" {
			continue
		}
		if f[i] == "-v" && i+1 < image {
			parts := strings.Split(f[i+1], ":")
			binds = append(binds, parts[1])
			f[i+1] = strings.Replace(f[i+1], "/var/lib/cgroupfs/", mnt+"/", 1)
		}
		opts = append(opts, f[i])
	}
	return opts, binds
}

// recipeScript reads each file it is given twice, with busybox cat (which
// copies with sendfile(2)) and with dd (read(2)), each copy after a line
// "@@ TOOL PATH" that begins with a newline of its own.
const recipeScript = `echo "pid $$"
for f in "$@"; do
	printf '\n@@ cat %s\n' "$f"; cat "$f"
	printf '\n@@ dd %s\n' "$f"; dd if="$f" bs=1M 2>/dev/null
done
`

// runRecipe runs the Docker recipe on the server at mnt in a busybox
// container of p, and checks what it read there.
func runRecipe(t *testing.T, p *podman, mnt string) {
	t.Helper()
	opts, binds := dockerRecipe(t, mnt)
	args := p.runArgs("--rm")
	args = append(args, opts...)
	args = append(args, "--rootfs", rootfs(t, map[string]string{}), "/bin/sh", "-c", recipeScript, "sh")
	out := p.run(t, append(args, binds...)...)
	checkRecipe(t, out, binds)
}

// checkRecipe checks what recipeScript printed: every file read the same
// way by both tools, and what the container sees in them its own limits
// (256 MiB, CPU 0), its own uptime, and the files' formats.
func checkRecipe(t *testing.T, out string, binds []string) {
	t.Helper()
	sections := strings.Split(out, "\n@@ ")
	if strings.TrimSpace(sections[0]) != "pid 1" {
		t.Errorf("%q: want pid 1 (the container's own pid namespace)", sections[0])
	}
	read := map[string]map[string]string{"cat": {}, "dd": {}}
	for _, s := range sections[1:] {
		head, content, _ := strings.Cut(s, "\n")
		tool, path, _ := strings.Cut(head, " ")
		read[tool][path] = content
	}
	// A number with the blanks that align it.
	number := regexp.MustCompile(`[ \t]*[0-9]+(\.[0-9]+)?`)
	for _, path := range binds {
		c, d := read["cat"][path], read["dd"][path]
		if c == "" || d == "" {
			t.Errorf("%s in the container: %d bytes with cat (sendfile), %d with dd (read): want its content from both", path, len(c), len(d))
			continue
		}
		// Two opens, two snapshots: the numbers may move between them
		// (uptime, free memory, ticks), the text may not.
		if number.ReplaceAllString(c, " N") != number.ReplaceAllString(d, " N") {
			t.Errorf("%s: cat (sendfile) and dd (read) disagree:\n%s\n--- and ---\n%s", path, c, d)
		}
	}
	host := hostUptime(t).Seconds()
	for tool, files := range read {
		check := func(path, got, want string) {
			t.Helper()
			if got != want {
				t.Errorf("%s %s: %q, want %q\n%s", tool, path, got, want, files[path])
			}
		}
		var memTotal string
		for _, l := range strings.Split(files["/proc/meminfo"], "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "MemTotal:" {
				memTotal = f[1]
			}
		}
		check("/proc/meminfo", memTotal, "262144") // -m 256m
		check("/proc/cpuinfo", strconv.Itoa(strings.Count("\n"+files["/proc/cpuinfo"], "\nprocessor")), "1")
		check("/sys/devices/system/cpu/online", files["/sys/devices/system/cpu/online"], "0\n")
		var cpus []string
		for _, l := range strings.Split(files["/proc/stat"], "\n") {
			if strings.HasPrefix(l, "cpu") {
				cpus = append(cpus, strings.Fields(l)[0])
			}
		}
		check("/proc/stat", strings.Join(cpus, " "), "cpu cpu0")
		// The container was made a moment ago; the host has been up longer.
		if up, err := strconv.ParseFloat(strings.Fields(files["/proc/uptime"] + " x")[0], 64); err != nil || up < 0 || up >= host {
			t.Errorf("%s /proc/uptime %q, the host's %.2f: want the container's age, less than the host's", tool, files["/proc/uptime"], host)
		}
		if f := strings.Fields(files["/proc/loadavg"]); len(f) != 5 {
			t.Errorf("%s /proc/loadavg %q: want five fields", tool, files["/proc/loadavg"])
		}
		if !strings.HasPrefix(files["/proc/swaps"], "Filename") {
			t.Errorf("%s /proc/swaps %q: want its header line first", tool, files["/proc/swaps"])
		}
		for _, l := range strings.Split(strings.TrimSuffix(files["/proc/diskstats"], "\n"), "\n") {
			if l != "" && len(strings.Fields(l)) < 14 {
				t.Errorf("%s /proc/diskstats line %q: want 14 fields or more", tool, l)
			}
		}
	}
}

// TestPodmanRecipe runs docs/cgroupfs.md's Docker recipe as written (but
// for the image: a busybox root file system) with podman and runc on a
// cgroupfs command: a container with -m 256m --cpuset-cpus 0 and the
// served files bound over /proc's and /sys's reads them with cat, which
// copies with sendfile(2), and with dd, which reads with read(2), and must
// get the same files from both and its own limits from them. No bind may
// leak into the host's mount namespace.
func TestPodmanRecipe(t *testing.T) {
	p := newPodman(t)
	srv := cgroupfstest.Start(t, len(Paths(Options{})))
	runRecipe(t, p, srv.Mnt)
	for _, m := range testenv.MountsUnder(t, "/proc") {
		if m == "/proc/meminfo" {
			t.Errorf("a container's bind leaked into the host's mount namespace: %s", m)
		}
	}
}

// TestPodmanDaemonSet runs docs/cgroupfs.md's Kubernetes DaemonSet with
// podman as kubelet would: the server in a privileged container with the
// host's pid namespace and its mount point a volume with bidirectional
// propagation (the host's directory bound on itself and made shared, as
// kubelet makes it; bound rshared into the container), started by the
// DaemonSet's command; a second container binds the files from the host's
// path as in the Docker recipe and must see its limits. When the server's
// container is stopped, its mount is gone from the host.
func TestPodmanDaemonSet(t *testing.T) {
	p := newPodman(t)
	testenv.RequireCommand(t, "nsenter", "apt-get install util-linux")
	testenv.RequireCommand(t, "ldd", "apt-get install libc-bin")
	// The DaemonSet's command, on a directory of the test's.
	line := docBlock(t, "command: [nsenter")[0]
	line = strings.TrimSuffix(strings.TrimPrefix(line, "command: ["), "]")
	command := strings.Split(line, ", ")
	dir := filepath.Join(t.TempDir(), "var/lib/cgroupfs")
	for i, arg := range command {
		switch arg {
		case "/var/lib/cgroupfs":
			command[i] = dir
		case "--target=1":
			// The host's init, for its cgroup namespace. Here pid 1 is
			// the sandbox's init, whose namespaces are closed even to
			// root (EACCES); this test process is in the same cgroup
			// namespace.
			command[i] = "--target=" + strconv.Itoa(os.Getpid())
		}
	}
	if command[0] != "nsenter" || !slices.Contains(command, dir) {
		t.Fatalf("docs/cgroupfs.md's DaemonSet command %q: want nsenter ... cgroupfs /var/lib/cgroupfs", line)
	}
	// The image: the static cgroupfs at the DaemonSet's path, and
	// util-linux's nsenter (busybox's has no --cgroup).
	nsenter, _ := exec.LookPath("nsenter")
	files := map[string]string{cgroupfstest.StaticBinary(t): "/usr/local/bin/cgroupfs"}
	withLibraries(t, files, nsenter)
	command[0] = nsenter
	image := rootfs(t, files)
	if !static(filepath.Join(image, "usr/local/bin/cgroupfs")) {
		t.Fatal("cgroupfstest.StaticBinary built a dynamic executable: the image has no C library")
	}

	// kubelet's hostPath volume with mountPropagation: Bidirectional.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	if err := syscall.Mount("", dir, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
		t.Fatal(err)
	}
	name := "cgroupfs-" + p.parent
	args := p.runArgs("--detach", "--name", name, "--privileged", "--pid", "host",
		"-v", dir+":"+dir+":rshared", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro", "--rootfs", image)
	p.run(t, append(args, command...)...)
	t.Cleanup(func() {
		// A server still running at the end: stopped, and the mount
		// detached if it stayed.
		p.command("stop", "--time", "20", name).Run()
		if len(testenv.MountsUnder(t, dir)) > 1 {
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	// The server mounts on its volume, and the mount propagates to the
	// host's directory (bounded: 20 s).
	for deadline := time.Now().Add(20 * time.Second); !exists(filepath.Join(dir, "proc/meminfo")); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			logs, _ := p.command("logs", name).CombinedOutput()
			state, _ := p.command("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).CombinedOutput()
			t.Fatalf("no %s/proc/meminfo on the host 20 s after the server's container started (%s):\n%s", dir, bytes.TrimSpace(state), logs)
		}
	}

	runRecipe(t, p, dir)

	p.run(t, "stop", "--time", "20", name)
	if state := strings.TrimSpace(p.run(t, "inspect", "--format", "{{.State.ExitCode}}", name)); state != "0" {
		logs, _ := p.command("logs", name).CombinedOutput()
		t.Errorf("the server's container exited with %s after podman stop (SIGTERM), want 0:\n%s", state, logs)
	}
	if mounts := testenv.MountsUnder(t, dir); len(mounts) != 1 {
		t.Errorf("mounts on the host at %s after the server's container stopped: %q, want only the volume's own bind", dir, mounts)
	}
}
