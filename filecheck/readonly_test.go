package filecheck_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/ramproc/ramproc/filecheck"
	"github.com/ramproc/ramproc/internal/testenv"
)

// runReadOnly runs the read-only checks on path and logs the report.
func runReadOnly(t *testing.T, path string) *filecheck.Report {
	t.Helper()
	rep := runConfig(t, filecheck.Config{Path: path, ReadOnly: true})
	if n := len(rep.Results); n != rep.Passed+rep.Failed+rep.Skipped || n == 0 {
		t.Errorf("%d results, %s", n, rep.Summary())
	}
	for _, res := range rep.Results {
		if !strings.HasPrefix(res.Name, "read-only/") {
			t.Errorf("%s ran with ReadOnly", res.Name)
		}
	}
	return rep
}

// requireNote checks that the named check's note says want.
func requireNote(t *testing.T, rep *filecheck.Report, name, want string) {
	t.Helper()
	if res := rep.Result(name); res == nil || !strings.Contains(res.Note, want) {
		t.Errorf("%s: want a note saying %q: %+v", name, want, res)
	}
}

// TestReadOnlyKernelFiles: the kernel's own /proc and /sys files pass every
// read-only check, content that moves between two reads (free memory,
// uptime) included; the sizes they show, and procfs's refusal of mmap, are
// notes.
func TestReadOnlyKernelFiles(t *testing.T) {
	for _, tc := range []struct{ path, size string }{
		{"/proc/meminfo", "fstat: size 0,"},
		{"/proc/uptime", "fstat: size 0,"},
		{"/sys/devices/system/cpu/online", "fstat: size 4096,"},
	} {
		t.Run(strings.ReplaceAll(strings.TrimPrefix(tc.path, "/"), "/", "_"), func(t *testing.T) {
			if _, err := os.Stat(tc.path); err != nil {
				testenv.Missing(t, tc.path+" is missing: "+err.Error())
			}
			rep := runReadOnly(t, tc.path)
			requireAllPass(t, rep)
			requireNote(t, rep, "read-only/size", tc.size)
			requireNote(t, rep, "read-only/mmap-private", "refused with")
			if len(rep.Results) != len(readOnlyNames()) {
				t.Errorf("%d checks ran, want the %d read-only ones", len(rep.Results), len(readOnlyNames()))
			}
		})
	}
}

func readOnlyNames() []string {
	var names []string
	for _, n := range filecheck.Names() {
		if strings.HasPrefix(n, "read-only/") {
			names = append(names, n)
		}
	}
	return names
}

// fillFile writes n bytes of /proc-like lines into the file at path.
func fillFile(t *testing.T, path string, n int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Repeat("MemFree:   123456 kB\n", n/21+1)[:n]), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestReadOnlyFakeDirectIOSizeZero: the Linux 6.18 deviation, without a
// write: a file read with FOPEN_DIRECT_IO whose size shows 0, as a /proc
// file's does, gives read(2) every byte and sendfile(2) none. The
// sendfile and splice checks fail at their first step; every other way of
// reading passes (mmap with the SIGBUS a size 0 gives, copy_file_range
// refused with EXDEV, both noted).
func TestReadOnlyFakeDirectIOSizeZero(t *testing.T) {
	path := mountFake(t, breakage{directIO: true, sizeZero: true})
	fillFile(t, path, 5000)
	rep := runReadOnly(t, path)
	for _, res := range rep.Results {
		want := filecheck.Pass
		if res.Name == "read-only/sendfile" || res.Name == "read-only/splice" {
			want = filecheck.Fail
		}
		if res.Status != want {
			t.Errorf("%s: %s, want %s: %s", res.Name, res.Status, want, res.Reason)
		}
	}
	requireDiff(t, rep, "read-only/sendfile", "sendfile(pipe, fd, NULL, 32768)", "0, 0 bytes", `read(2) gives 5000, 5000 bytes, from byte 0: "MemFree:`)
	requireDiff(t, rep, "read-only/splice", "splice(pipe, fd, NULL, 32768)", "0, 0 bytes", "5000 bytes")
	if d := rep.Result("read-only/sendfile").FirstDiff; d != nil && d.Step != 1 {
		t.Errorf("sendfile failed at step %d, want 1", d.Step)
	}
	requireNote(t, rep, "read-only/mmap-private", "SIGBUS at the first access")
	requireNote(t, rep, "read-only/copy-file-range", "EXDEV")
	requireNote(t, rep, "read-only/size", "fstat: size 0,")
}

// TestReadOnlyFakeDirectIOFaithful: FOPEN_DIRECT_IO with the right size is
// no deviation here either (the page cache sendfile reads is current).
func TestReadOnlyFakeDirectIOFaithful(t *testing.T) {
	path := mountFake(t, breakage{directIO: true})
	fillFile(t, path, 70000)
	rep := runReadOnly(t, path)
	requireAllPass(t, rep)
	requireNote(t, rep, "read-only/size", "fstat: size 70000, lseek(SEEK_END): 70000, read(2): 70000 bytes")
}

// TestReadOnlyUsage: what the read-only checks refuse, and the refusals
// of the other checks that point at them.
func TestReadOnlyUsage(t *testing.T) {
	dir := testenv.Tmpfs(t, "")
	full := newFile(t, dir)
	if err := os.WriteFile(full, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  filecheck.Config
		want string
	}{
		{filecheck.Config{Path: full}, "--read-only"}, // not empty
		{filecheck.Config{Path: "/proc/uptime", Destructive: true}, "--read-only"},
		{filecheck.Config{Path: full, ReadOnly: true, Destructive: true}, "never write"},
		{filecheck.Config{Path: dir, ReadOnly: true}, "not a regular file"},
		{filecheck.Config{Path: "/dev/null", ReadOnly: true}, "character device"},
	} {
		_, err := filecheck.Run(context.Background(), tc.cfg)
		var ue *filecheck.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%+v: %v, want a one-line usage error saying %q", tc.cfg, err, tc.want)
		}
	}
	if data, _ := os.ReadFile(full); string(data) != "precious\n" {
		t.Errorf("the file changed: %q", data)
	}
	// A file with content passes without --destructive, untouched.
	rep := runReadOnly(t, full)
	requireAllPass(t, rep)
	if data, _ := os.ReadFile(full); string(data) != "precious\n" {
		t.Errorf("the file changed: %q", data)
	}
}
