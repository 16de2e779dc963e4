package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/internal/testenv"
)

// runCmd runs the command to completion (bounded) and returns its
// combined output and exit status.
func runCmd(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(ramprocBinary(t), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("ramproc %q did not finish within 30s: %s", args, out.String())
	}
	return out.String(), cmd.ProcessState.ExitCode()
}

func TestSplitOptions(t *testing.T) {
	got := splitOptions(`rw,,name=a\,b,max_size=1m`)
	want := []string{"rw", "name=a,b", "max_size=1m"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("splitOptions: %q, want %q", got, want)
	}
}

// Flags anywhere, "-oOPTS" in one word as libfuse takes it, "--" ends them.
func TestParseInterleaved(t *testing.T) {
	fl := flag.NewFlagSet("t", flag.ContinueOnError)
	var o optList
	fl.Var(&o, "o", "")
	name := fl.String("name", "", "")
	pos, err := parseInterleaved(fl, []string{"src", "-name", "x", "dir", "-orw,stats", "-o", "mode=0600", "--", "-rest"})
	if err != nil || fmt.Sprint(pos) != "[src dir -rest]" || *name != "x" || fmt.Sprint([]string(o)) != "[rw stats mode=0600]" {
		t.Errorf("parseInterleaved: %q, %v, name %q, -o %q", pos, err, *name, o)
	}
}

// -o maps libfuse-style names onto the flags, ignores what mount(8) and
// fstab add, and names every option it does not know.
func TestApplyOptions(t *testing.T) {
	newFlags := func() *flag.FlagSet {
		fl := flag.NewFlagSet("t", flag.ContinueOnError)
		fl.Bool("allow-other", false, "")
		fl.Bool("read-only", false, "")
		fl.Bool("no-open", false, "")
		fl.Bool("stats", false, "")
		fl.Bool("debug", false, "")
		for _, n := range []string{"max-size", "mode", "name", "passthrough", "metrics-addr", "log-format"} {
			fl.String(n, "", "")
		}
		return fl
	}
	fl := newFlags()
	opts := splitOptions("rw,allow_other,ro,max_size=64m,mode=0600,name=x,passthrough=off,noopen,stats,dev,suid,exec,auto,noauto,user,nofail,_netdev,x-systemd.automount,x-systemd.idle-timeout=60,defaults,comment=x")
	given, err := applyOptions(fl, opts)
	if err != nil {
		t.Fatal(err)
	}
	if given["max-size"] != "-o max_size" || given["read-only"] != "-o ro" || given["debug"] != "" {
		t.Errorf("given = %q; want max-size from -o max_size, read-only from -o ro, debug not given", given)
	}
	for name, want := range map[string]string{"allow-other": "true", "read-only": "true", "max-size": "64m", "mode": "0600", "name": "x", "passthrough": "off", "no-open": "true", "stats": "true"} {
		if got := fl.Lookup(name).Value.String(); got != want {
			t.Errorf("-%s = %q, want %q", name, got, want)
		}
	}
	_, err = applyOptions(newFlags(), splitOptions("rw,bogus,allow_other,worse=1"))
	if err == nil || !strings.Contains(err.Error(), `"bogus"`) || !strings.Contains(err.Error(), `"worse=1"`) {
		t.Errorf("unknown options: %v; want both named", err)
	}
	for _, bad := range []string{"max_size", "stats=1", "name"} {
		if _, err := applyOptions(newFlags(), []string{bad}); err == nil {
			t.Errorf("-o %s accepted", bad)
		}
	}
	// A -o option that contradicts a flag of the command line is refused;
	// one that agrees with it is fine, and among -o options the last wins.
	fl = newFlags()
	fl.Parse([]string{"-read-only"})
	if _, err := applyOptions(fl, []string{"rw"}); err == nil || !strings.Contains(err.Error(), "-read-only and -o rw contradict") {
		t.Errorf("-read-only -o rw: %v; want refused", err)
	}
	fl = newFlags()
	fl.Parse([]string{"-read-only"})
	if _, err := applyOptions(fl, []string{"ro"}); err != nil {
		t.Errorf("-read-only -o ro: %v", err)
	}
	fl = newFlags()
	fl.Parse([]string{"-max-size", "1m"})
	if _, err := applyOptions(fl, []string{"size=2m"}); err == nil || !strings.Contains(err.Error(), "-max-size 1m and -o size=2m contradict") {
		t.Errorf("-max-size 1m -o size=2m: %v; want refused", err)
	}
	fl = newFlags()
	if _, err := applyOptions(fl, splitOptions("ro,rw")); err != nil || fl.Lookup("read-only").Value.String() != "false" {
		t.Errorf("-o ro,rw: %v, read-only %s; want the last, rw", err, fl.Lookup("read-only").Value)
	}
}

// Refused invocations: one line, exit 2, and nothing left on disk.
func TestMountRefusedLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args    []string
		want    string
		mustNot string // a path that must not exist afterwards
	}{
		{[]string{""}, "MOUNTPOINT argument is empty", ""},
		{[]string{"-passthrough", "on", "-no-open", dir + "/new1"}, "-passthrough on cannot be combined with -no-open", dir + "/new1"},
		{[]string{"-name", "a/b", dir + "/new2/sub"}, "contains '/'", dir + "/new2"},
		{[]string{"-name", "a\nb", dir + "/new3"}, "control character", dir + "/new3"},
		{[]string{"-name", "..", dir + "/new4"}, "not a file name", dir + "/new4"},
		{[]string{"-name", "", dir + "/new4"}, "empty", dir + "/new4"},
		{[]string{"-name", strings.Repeat("x", 256), dir + "/new5"}, "at most 255 bytes", dir + "/new5"},
		{[]string{"-stats", "-name", "stats", dir + "/new6"}, "-name stats", dir + "/new6"},
		{[]string{dir + "/new7", "-o", "rw,bogus,allow_other,worse"}, `unknown mount option "bogus", "worse"`, dir + "/new7"},
		{[]string{"-log-format", "xml", dir + "/new8"}, "use text or json", dir + "/new8"},
		{[]string{dir + "/a", dir + "/b"}, "give exactly one MOUNTPOINT", dir + "/a"},
		// A value given with -o is named as given.
		{[]string{dir + "/new10", "-o", "max_size=abc"}, `-o max_size: "abc" is not a size`, dir + "/new10"},
		{[]string{dir + "/new11", "-o", "size=-5%"}, `-o size: "-5%" is not a percentage`, dir + "/new11"},
		{[]string{dir + "/new12", "-o", "mode=999"}, `-o mode "999" is not an octal permission`, dir + "/new12"},
		{[]string{"-read-only", dir + "/new13", "-o", "rw"}, "-read-only and -o rw contradict each other", dir + "/new13"},
		// Mountpoints that cannot serve: one line with advice, no log line.
		{[]string{regular}, "is a regular file, not a directory; give a directory", ""},
		{[]string{"/proc/ramproc-test-nonexistent"}, "is in /proc or /sys", "/proc/ramproc-test-nonexistent"},
	}
	for _, c := range cases {
		out, code := runCmd(t, append([]string{"mount"}, c.args...)...)
		if code != exitUsage || strings.Count(out, "\n") != 1 || !strings.Contains(out, c.want) || !strings.HasPrefix(out, "ramproc mount: ") {
			t.Errorf("mount %q: exit %d, %q; want exit 2 and one line containing %q", c.args, code, out, c.want)
		}
		if c.mustNot != "" {
			if _, err := os.Lstat(c.mustNot); err == nil {
				t.Errorf("mount %q left %s behind", c.args, c.mustNot)
			}
		}
	}
	// A port in use is found before anything is mounted or created.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	out, code := runCmd(t, "mount", "-metrics-addr", ln.Addr().String(), dir+"/new9")
	if code != exitUsage || !strings.Contains(out, "-metrics-addr") {
		t.Errorf("metrics address in use: exit %d, %q", code, out)
	}
	if _, err := os.Lstat(dir + "/new9"); err == nil {
		t.Errorf("a refused -metrics-addr left %s/new9 behind", dir)
	}
}

// Flags after the mountpoint work, as mount helpers put -o there; -o
// options reach the file.
func TestMountFlagsAfterMountpoint(t *testing.T) {
	mnt := filepath.Join(t.TempDir(), "mnt")
	cmd, path := startMount(t, mnt, "-name", "x", "-o", "mode=0600,max_size=64k,rw,dev,suid")
	if path != filepath.Join(mnt, "x") {
		t.Fatalf("printed %q, want %s/x", path, mnt)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode != unix.S_IFREG|0o600 {
		t.Errorf("stat %s: mode %o, %v; want 0600 from -o mode=0600", path, st.Mode, err)
	}
	if err := os.WriteFile(path, make([]byte, 100<<10), 0); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("100 KiB into -o max_size=64k: %v, want ENOSPC", err)
	}
	stopMount(t, cmd, syscall.SIGTERM)
}

// -o ro: writes fail with EROFS, as on a read-only tmpfs.
func TestMountReadOnly(t *testing.T) {
	mnt := filepath.Join(t.TempDir(), "mnt")
	cmd, path := startMount(t, "-o", "ro", mnt)
	if _, err := os.ReadFile(path); err != nil {
		t.Errorf("reading a read-only mount's file: %v", err)
	}
	if err := os.WriteFile(path, []byte("x"), 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing a read-only mount's file: %v, want EROFS", err)
	}
	stopMount(t, cmd, syscall.SIGTERM)
}

// SIGHUP unmounts cleanly and exits 0, like SIGINT and SIGTERM.
func TestMountSIGHUP(t *testing.T) {
	mnt := filepath.Join(t.TempDir(), "mnt")
	cmd, path := startMount(t, "-stats", mnt)
	if err := os.WriteFile(path, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	stopMount(t, cmd, syscall.SIGHUP)
	if got := testenv.MountsUnder(t, mnt); len(got) != 0 {
		t.Errorf("mounts left after SIGHUP: %q", got)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); err != nil {
		t.Errorf("statfs of the mountpoint after SIGHUP: %v (a dead mount left behind?)", err)
	}
}

// A mistyped command is not taken for the mount-helper form, which
// always carries -o.
func TestMistypedCommandIsNoMount(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x")
	out, code := runCmd(t, "moutn", dir)
	if code != exitUsage || !strings.Contains(out, `unknown command "moutn"`) {
		t.Errorf("ramproc moutn DIR: exit %d, %q", code, out)
	}
	if _, err := os.Lstat(dir); err == nil {
		t.Errorf("ramproc moutn DIR created %s", dir)
	}
}

func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version"} {
		out, code := runCmd(t, arg)
		if code != 0 || !strings.Contains(out, "(module github.com/ramproc/ramproc)") ||
			!strings.Contains(out, "\nrevision ") || !strings.Contains(out, runtime.Version()) {
			t.Errorf("ramproc %s: exit %d:\n%s", arg, code, out)
		}
	}
}

// statfs(2) of the mount, and of the file in it, reports what statfs of a
// tmpfs mounted with the same size= reports, after the same writes.
func TestMountStatfsAsTmpfs(t *testing.T) {
	for _, size := range []string{"1m", "0"} {
		tmpfs := testenv.Tmpfs(t, "size="+size)
		mnt := filepath.Join(t.TempDir(), "mnt")
		cmd, path := startMount(t, "-max-size", size, mnt)
		ref := filepath.Join(tmpfs, "ramfile")
		for _, p := range []string{path, ref} {
			f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o666)
			if err != nil {
				t.Fatal(err)
			}
			// 5000 bytes (two pages) and one byte far out: a hole between.
			f.WriteAt(bytes.Repeat([]byte("a"), 5000), 0)
			f.WriteAt([]byte("b"), 300<<10)
			f.Close()
		}
		var want unix.Statfs_t
		if err := unix.Statfs(tmpfs, &want); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{mnt, path} {
			var got unix.Statfs_t
			if err := unix.Statfs(p, &got); err != nil {
				t.Fatal(err)
			}
			g := [...]int64{got.Bsize, got.Frsize, int64(got.Blocks), int64(got.Bfree), int64(got.Bavail), int64(got.Files), int64(got.Ffree), got.Namelen}
			w := [...]int64{want.Bsize, want.Frsize, int64(want.Blocks), int64(want.Bfree), int64(want.Bavail), int64(want.Files), int64(want.Ffree), want.Namelen}
			if g != w {
				t.Errorf("size=%s: statfs %s = bsize,frsize,blocks,bfree,bavail,files,ffree,namelen %v; tmpfs: %v", size, p, g, w)
			}
		}
		stopMount(t, cmd, syscall.SIGTERM)
	}
}

// Two servers started on one directory at the same moment: exactly one
// mounts, the other exits 2 naming the process that serves it. A third,
// started later, is refused the same way.
func TestMountConcurrentClaim(t *testing.T) {
	testenv.RequireFUSE(t)
	for try := range 4 {
		mnt := filepath.Join(t.TempDir(), "mnt")
		type result struct {
			cmd  *exec.Cmd
			path string
			out  bytes.Buffer
			code int
		}
		var rs [2]*result
		lines := make(chan int, 2)
		exited := make(chan int, 2)
		for i := range rs {
			r := &result{cmd: exec.Command(ramprocBinary(t), "mount", mnt)}
			rs[i] = r
			stdout, _ := r.cmd.StdoutPipe()
			r.cmd.Stderr = &r.out
			if err := r.cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if r.cmd.ProcessState == nil {
					r.cmd.Process.Kill()
					r.cmd.Wait()
					unix.Unmount(mnt, unix.MNT_DETACH)
				}
			})
			go func() {
				l, _ := bufio.NewReader(stdout).ReadString('\n')
				r.path = strings.TrimSpace(l)
				if r.path != "" {
					lines <- i
					return
				}
				r.cmd.Wait()
				r.code = r.cmd.ProcessState.ExitCode()
				exited <- i
			}()
		}
		var winner, loser int
		for range 2 {
			select {
			case i := <-lines:
				winner = i
			case i := <-exited:
				loser = i
			case <-time.After(20 * time.Second):
				t.Fatalf("try %d: two servers on one directory: no outcome within 20s", try)
			}
		}
		if winner == loser {
			t.Fatalf("try %d: both servers mounted, or both failed: %q / %q", try, rs[0].out.String(), rs[1].out.String())
		}
		w, l := rs[winner], rs[loser]
		wantPid := "process " + strconv.Itoa(w.cmd.Process.Pid)
		if l.code != exitUsage || !strings.Contains(l.out.String(), wantPid) {
			t.Errorf("try %d: the second server: exit %d, %q; want exit 2 naming %s", try, l.code, l.out.String(), wantPid)
		}
		if got := testenv.MountsUnder(t, mnt); len(got) != 1 {
			t.Errorf("try %d: mounts at %s: %q, want exactly one", try, mnt, got)
		}
		if try == 0 {
			out, code := runCmd(t, "mount", mnt)
			if code != exitUsage || !strings.Contains(out, wantPid) || strings.Count(out, "\n") != 1 {
				t.Errorf("a third server on a served directory: exit %d, %q; want exit 2 naming %s", code, out, wantPid)
			}
		}
		stopMount(t, w.cmd, syscall.SIGTERM)
		if got := testenv.MountsUnder(t, mnt); len(got) != 0 {
			t.Errorf("try %d: mounts left after stopping the winner: %q", try, got)
		}
	}
}

// parseMetrics parses the Prometheus text format with the Prometheus
// parser itself.
func parseMetrics(t *testing.T, text []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("the Prometheus parser rejects the metrics: %v\n%s", err, text)
	}
	return mfs
}

// metricValue returns the value of the sample of family name whose labels
// include label=value (label "" for an unlabelled one); -1 if absent.
func metricValue(mfs map[string]*dto.MetricFamily, name, label, value string) float64 {
	mf := mfs[name]
	if mf == nil {
		return -1
	}
	for _, m := range mf.Metric {
		ok := label == ""
		for _, lp := range m.Label {
			if lp.GetName() == label && lp.GetValue() == value {
				ok = true
			}
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
	}
	return -1
}

// The stats file and -metrics-addr's /metrics are valid Prometheus text,
// and their counters move when the file is used.
func TestMountMetrics(t *testing.T) {
	testenv.RequireFUSE(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	errFile, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer errFile.Close()
	// Forwarded I/O, so that reads and writes reach the server.
	cmd, path := launchMount(t, ramprocBinary(t), nil, errFile, "-stats", "-passthrough", "off", "-max-size", "1m", "-metrics-addr", "127.0.0.1:0", mnt)
	log, _ := os.ReadFile(errFile.Name())
	m := regexp.MustCompile(`metrics=(http://\S+/metrics)`).FindSubmatch(log)
	if m == nil {
		t.Fatalf("no metrics address in the log: %s", log)
	}
	url := string(m[1])
	scrape := func() map[string]*dto.MetricFamily {
		c := http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return parseMetrics(t, b.Bytes())
	}
	statsFile := func() map[string]*dto.MetricFamily {
		b, err := os.ReadFile(filepath.Join(mnt, "stats"))
		if err != nil {
			t.Fatal(err)
		}
		return parseMetrics(t, b)
	}

	before := scrape()
	statsFile() // must parse too
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, 8192), 0); err != nil {
		t.Fatal(err)
	}
	unix.Fsync(int(f.Fd()))
	// A lookup that fails: an ENOENT to count.
	if _, err := os.Stat(filepath.Join(mnt, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat of a missing name: %v", err)
	}
	for _, mfs := range []map[string]*dto.MetricFamily{scrape(), statsFile()} {
		check := func(what string, got, atLeast float64) {
			t.Helper()
			if got < atLeast {
				t.Errorf("%s = %v, want at least %v", what, got, atLeast)
			}
		}
		check("ramproc_written_bytes_total", metricValue(mfs, "ramproc_written_bytes_total", "", ""), metricValue(before, "ramproc_written_bytes_total", "", "")+8192)
		check(`ramproc_requests_total{op="write"}`, metricValue(mfs, "ramproc_requests_total", "op", "write"), metricValue(before, "ramproc_requests_total", "op", "write")+1)
		check(`ramproc_requests_total{op="lookup"}`, metricValue(mfs, "ramproc_requests_total", "op", "lookup"), metricValue(before, "ramproc_requests_total", "op", "lookup")+1)
		check(`ramproc_request_errors_total{errno="ENOENT"}`, metricValue(mfs, "ramproc_request_errors_total", "errno", "ENOENT"), max(0, metricValue(before, "ramproc_request_errors_total", "errno", "ENOENT"))+1)
		check("ramproc_open_handles", metricValue(mfs, "ramproc_open_handles", "", ""), 1)
		check("ramproc_uptime_seconds", metricValue(mfs, "ramproc_uptime_seconds", "", ""), 0.000001)
		for name, want := range map[string]float64{
			"ramproc_published_entries":     2,
			"ramproc_store_size_bytes":      8192,
			"ramproc_store_allocated_bytes": 8192,
			"ramproc_store_capacity_bytes":  1 << 20,
			"ramproc_passthrough":           0,
		} {
			if got := metricValue(mfs, name, "", ""); got != want {
				t.Errorf("%s = %v, want %v", name, got, want)
			}
		}
		if mfs["ramproc_requests_total"].GetType() != dto.MetricType_COUNTER || mfs["ramproc_open_handles"].GetType() != dto.MetricType_GAUGE {
			t.Errorf("metric types: %v, %v", mfs["ramproc_requests_total"].GetType(), mfs["ramproc_open_handles"].GetType())
		}
	}
	// Reads through the server: drop the page cache of the file first
	// (forwarded mode keeps it), then read it back.
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	if _, err := f.ReadAt(make([]byte, 8192), 0); err != nil {
		t.Fatal(err)
	}
	if got := metricValue(scrape(), "ramproc_read_bytes_total", "", ""); got < 8192 {
		t.Errorf("ramproc_read_bytes_total after reading 8 KiB uncached: %v", got)
	}
	f.Close()
	stopMount(t, cmd, syscall.SIGTERM)
}

// -log-format json: every line the server prints on stderr is a JSON
// object, the bridge's per-request debug lines included.
func TestMountLogFormatJSON(t *testing.T) {
	mnt := filepath.Join(t.TempDir(), "mnt")
	errFile, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer errFile.Close()
	testenv.RequireFUSE(t)
	cmd, path := launchMount(t, ramprocBinary(t), nil, errFile, "-log-format", "json", "-debug", mnt)
	os.WriteFile(path, []byte("x"), 0)
	stopMount(t, cmd, syscall.SIGTERM)
	data, _ := os.ReadFile(errFile.Name())
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) < 3 {
		t.Fatalf("want the serving line and debug lines, got %q", data)
	}
	sawServing := false
	for _, l := range lines {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Errorf("not a JSON line: %q", l)
			continue
		}
		if v["path"] == path {
			sawServing = true
		}
	}
	if !sawServing {
		t.Errorf("no JSON line with the file's path %s in:\n%s", path, data)
	}
}

// TestMountSdNotify: with NOTIFY_SOCKET set, the server reports READY=1 once the file is
// served and STOPPING=1 on its way down, to a socket named by path or by
// an abstract name ("@...").
func TestMountSdNotify(t *testing.T) {
	testenv.RequireFUSE(t)
	for _, abstract := range []bool{false, true} {
		name := filepath.Join(t.TempDir(), "notify")
		if abstract {
			name = fmt.Sprintf("@ramproc-test-notify-%d", os.Getpid())
		}
		recv := testenv.ListenNotify(t, name)
		mnt := filepath.Join(t.TempDir(), "mnt")
		cmd := exec.Command(ramprocBinary(t), "mount", mnt)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+name)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
				unix.Unmount(mnt, unix.MNT_DETACH)
			}
		})
		if msg := recv(); msg != "READY=1" {
			t.Fatalf("first notification %q, want READY=1", msg)
		}
		// READY=1 came after the file is served, not before.
		if err := os.WriteFile(filepath.Join(mnt, "ramfile"), []byte("ready"), 0); err != nil {
			t.Errorf("writing the file right after READY=1: %v", err)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		if msg := recv(); msg != "STOPPING=1" {
			t.Errorf("notification after SIGTERM %q, want STOPPING=1", msg)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("exit after SIGTERM: %v\n%s", err, stderr.String())
			}
		case <-time.After(20 * time.Second):
			t.Fatal("no exit within 20s of SIGTERM")
		}
	}
}

// The real mount-helper path: mount(8) -> mount.fuse3 -> "ramproc SOURCE
// MOUNTPOINT -o rw,...,dev,suid", through `mount -t fuse BIN#SOURCE` and an
// fstab line given with `mount -T`. mount returns once the file is served,
// the server stays in the background, umount stops it; a mount that
// cannot be made fails mount(8) with the server's error.
func TestMountHelper(t *testing.T) {
	testenv.RequireFUSE(t)
	if _, err := os.Stat("/sbin/mount.fuse3"); err != nil {
		testenv.Missing(t, "the mount-helper tests need mount.fuse3 (apt-get install fuse3)")
	}
	bin := ramprocBinary(t)
	dir := t.TempDir()
	fstab := filepath.Join(dir, "fstab")
	fstabMnt := filepath.Join(dir, "fstab-mnt")
	os.Mkdir(fstabMnt, 0o755)
	line := fmt.Sprintf("%s#ramproc %s fuse noauto,max_size=64k,mode=0640,stats,x-systemd.automount,nofail,_netdev 0 0\n", bin, fstabMnt)
	if err := os.WriteFile(fstab, []byte("# a test-owned fstab\n"+line), 0o644); err != nil {
		t.Fatal(err)
	}
	helperMnt := filepath.Join(dir, "helper-mnt")
	os.Mkdir(helperMnt, 0o755)

	for _, c := range []struct {
		name string
		mnt  string
		args []string
	}{
		{"mount -t fuse", helperMnt, []string{"-t", "fuse", "-o", "max_size=64k,mode=0640,stats", bin + "#ramproc", helperMnt}},
		{"mount -T fstab", fstabMnt, []string{"-T", fstab, fstabMnt}},
	} {
		t.Cleanup(func() {
			if pid := holderPid(c.mnt); pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			unix.Unmount(c.mnt, unix.MNT_DETACH)
		})
		out, err := boundedCommand(t, "mount", c.args...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v: %s", c.name, err, out)
			continue
		}
		// Served the moment mount returns: no sleep, no retry.
		path := filepath.Join(c.mnt, "ramfile")
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil || st.Mode != unix.S_IFREG|0o640 {
			t.Errorf("%s: stat right after mount returned: mode %o, %v", c.name, st.Mode, err)
		}
		if err := os.WriteFile(path, make([]byte, 100<<10), 0); !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("%s: 100 KiB into max_size=64k: %v, want ENOSPC", c.name, err)
		}
		if _, err := os.ReadFile(filepath.Join(c.mnt, "stats")); err != nil {
			t.Errorf("%s: the stats option: %v", c.name, err)
		}
		pid := holderPid(c.mnt)
		if pid <= 0 {
			t.Errorf("%s: no server process holds %s", c.name, c.mnt)
		}
		// A second mount on the same directory fails, with the reason.
		out, err = boundedCommand(t, "mount", "-t", "fuse", bin+"#ramproc", c.mnt).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "process "+strconv.Itoa(pid)) {
			t.Errorf("%s: a second mount on a served directory: %v, %q; want a failure naming process %d", c.name, err, out, pid)
		}
		if out, err := boundedCommand(t, "umount", "-R", c.mnt).CombinedOutput(); err != nil {
			t.Errorf("%s: umount: %v: %s", c.name, err, out)
		}
		// Unmounted from outside, the server stops by itself.
		deadline := time.Now().Add(20 * time.Second)
		for pid > 0 && syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			t.Errorf("%s: the server (pid %d) still runs 20s after umount", c.name, pid)
		}
	}

	// Errors reach mount(8): an unknown option fails the mount, and says so.
	out, err := boundedCommand(t, "mount", "-t", "fuse", "-o", "bogus", bin+"#ramproc", helperMnt).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `"bogus"`) {
		t.Errorf("mount -o bogus: %v, %q; want a failure naming the option", err, out)
	}
	if got := testenv.MountsUnder(t, helperMnt); len(got) != 0 {
		t.Errorf("mounts after a refused mount: %q", got)
	}
}

// boundedCommand is exec.Command killed after a minute: mount(8) waits for
// the server's readiness, which must never hang a test.
func boundedCommand(t *testing.T, name string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return exec.CommandContext(ctx, name, args...)
}

// holderPid returns the pid of the ramproc server that holds dir's claim:
// a FLOCK in /proc/locks whose holder has dir open.
func holderPid(dir string) int {
	data, _ := os.ReadFile("/proc/locks")
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" {
			continue
		}
		pid, _ := strconv.Atoi(f[4])
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && target == dir {
				return pid
			}
		}
	}
	return 0
}

// The systemd unit's ExecStart, as systemd would run it for an instance
// (%f the unescaped mountpoint, RAMPROC_OPTS from its Environment=), with
// NOTIFY_SOCKET set: the command line is valid and reports READY=1.
func TestSystemdUnit(t *testing.T) {
	testenv.RequireFUSE(t)
	unit, err := os.ReadFile("../../contrib/systemd/ramproc@.service")
	if err != nil {
		t.Fatal(err)
	}
	var exec_, opts string
	for _, l := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
			exec_ = v
		}
		if v, ok := strings.CutPrefix(l, "Environment=RAMPROC_OPTS="); ok {
			opts = v
		}
		if v, ok := strings.CutPrefix(l, "Type="); ok && v != "notify" {
			t.Errorf("Type=%s, want notify", v)
		}
	}
	if exec_ == "" || opts == "" {
		t.Fatalf("no ExecStart or RAMPROC_OPTS in the unit:\n%s", unit)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	argv := strings.Fields(exec_)
	for i, a := range argv {
		a = strings.ReplaceAll(a, "${RAMPROC_OPTS}", opts)
		argv[i] = strings.ReplaceAll(a, "%f", mnt)
	}
	if argv[0] != "/usr/local/bin/ramproc" {
		t.Errorf("ExecStart runs %s; the README installs to /usr/local/bin/ramproc", argv[0])
	}
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cmd := exec.Command(ramprocBinary(t), argv[1:]...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 256)
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("the unit's command: %q, %v; stderr:\n%s", buf[:n], err, stderr.String())
	}
	stopMount(t, cmd, syscall.SIGTERM)
}

// The mount-helper form with -f stays in the foreground: the process that
// reports READY=1 is the one started, and SIGTERM stops it.
func TestHelperForeground(t *testing.T) {
	testenv.RequireFUSE(t)
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mnt := filepath.Join(t.TempDir(), "mnt")
	cmd := exec.Command(ramprocBinary(t), "ramproc", mnt, "-o", "rw,max_size=64k,dev,suid", "-f")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 256)
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("helper form with -f: %q, %v; stderr:\n%s", buf[:n], err, stderr.String())
	}
	if pid := holderPid(mnt); pid != cmd.Process.Pid {
		t.Errorf("the server is pid %d, want the started process %d (in the foreground)", pid, cmd.Process.Pid)
	}
	if _, err := os.Stat(filepath.Join(mnt, "ramfile")); err != nil {
		t.Error(err)
	}
	stopMount(t, cmd, syscall.SIGTERM)
}

// Built with VCS information, as go install and a go build in a clone do
// by default, version reports the revision and modified flag the go
// command stamped into the binary (read back with debug/buildinfo); in a
// checkout where go cannot stamp them (a git worktree) it says unknown.
func TestVersionRevision(t *testing.T) {
	testenv.RequireCommand(t, "git", "apt-get install git")
	bin := filepath.Join(t.TempDir(), "ramproc")
	build := boundedCommand(t, "go", "build", "-buildvcs=auto", "-o", bin, "./cmd/ramproc")
	build.Dir = "../.."
	build.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	want, modified := "revision unknown", ""
	for _, s := range bi.Settings {
		switch {
		case s.Key == "vcs.revision":
			want = "revision " + s.Value
		case s.Key == "vcs.modified" && s.Value == "true":
			modified = " (modified)"
		}
	}
	want += modified
	out, err := boundedCommand(t, bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "\n"+want) || !strings.Contains(string(out), bi.Main.Version) {
		t.Errorf("ramproc version: %v:\n%s\nwant %q and %q", err, out, want, bi.Main.Version)
	}
	t.Logf("%s", out)
}
