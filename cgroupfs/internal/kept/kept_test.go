package kept

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestKept: reads follow the file's content; a removed file is an error
// and a new file under the same path is read, not the old one; past Max
// the oldest descriptor goes; concurrent reads of a long kernel file each
// get a whole, well-formed file.
func TestKept(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	os.WriteFile(p, []byte("one\n"), 0o644)
	k := &Files{Max: 2}
	defer k.Close()
	if got, err := k.ReadFile(p); err != nil || string(got) != "one\n" {
		t.Fatalf("%q %v", got, err)
	}
	os.WriteFile(p, []byte("two, longer\n"), 0o644)
	if got, err := k.ReadFile(p); err != nil || string(got) != "two, longer\n" {
		t.Errorf("after a rewrite: %q %v", got, err)
	}
	for i := range 5 {
		q := filepath.Join(dir, strings.Repeat("x", i+1))
		os.WriteFile(q, []byte(q), 0o644)
		if got, err := k.ReadFile(q); err != nil || string(got) != q {
			t.Errorf("%s: %q %v", q, got, err)
		}
	}
	if n := len(k.open); n > 2 {
		t.Errorf("%d descriptors kept, Max 2", n)
	}
	// A cgroup file: removed, then recreated under the same name.
	if os.Geteuid() == 0 {
		cg := filepath.Join("/sys/fs/cgroup/memory", fmt.Sprintf("cgroupfs-kept-%d", os.Getpid()))
		if err := os.Mkdir(cg, 0o755); err == nil {
			defer os.Remove(cg)
			os.WriteFile(filepath.Join(cg, "memory.limit_in_bytes"), []byte("1048576"), 0)
			if got, err := k.ReadFile(filepath.Join(cg, "memory.limit_in_bytes")); err != nil || string(got) != "1048576\n" {
				t.Errorf("limit %q %v", got, err)
			}
			os.Remove(cg)
			if got, err := k.ReadFile(filepath.Join(cg, "memory.limit_in_bytes")); err == nil {
				t.Errorf("a removed cgroup's file read %q", got)
			}
			os.Mkdir(cg, 0o755)
			os.WriteFile(filepath.Join(cg, "memory.limit_in_bytes"), []byte("2097152"), 0)
			if got, err := k.ReadFile(filepath.Join(cg, "memory.limit_in_bytes")); err != nil || string(got) != "2097152\n" {
				t.Errorf("the recreated cgroup's limit %q %v", got, err)
			}
		}
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				got, err := k.ReadFile("/proc/self/mountinfo")
				if err != nil || len(got) == 0 || got[len(got)-1] != '\n' {
					t.Errorf("mountinfo: %d bytes, %v", len(got), err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestExitedProcess: the kept descriptor (read with Read and with
// ReadRecord, as /proc/PID/cgroup is one record) of /proc/PID/cgroup holds its
// process; once that process has exited, the read does not answer through
// it but opens the path anew, which is then ENOENT (or, had the pid been
// reused, the new process's file).
func TestExitedProcess(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	path := fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid)
	k := &Files{}
	defer k.Close()
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A buffer smaller than the file: read on (one record, or not).
	for _, read := range []func(string, []byte) ([]byte, error){k.Read, k.ReadRecord, k.ReadRecord} {
		if got, err := read(path, make([]byte, 0, 8)); err != nil || string(got) != string(want) {
			t.Fatalf("%s: %q, %v; want %q", path, got, err, want)
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	if got, err := k.Read(path, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after the exit: %q, %v; want ENOENT", got, err)
	}
	if n := len(k.open); n != 0 {
		t.Errorf("%d descriptors kept after the exit", n)
	}
}

// TestIdle: a descriptor not read for Idle is closed, and the path is
// read anew after it.
func TestIdle(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("one\n"), 0o644)
	k := &Files{Idle: 20 * time.Millisecond}
	defer k.Close()
	if got, err := k.ReadFile(p); err != nil || string(got) != "one\n" {
		t.Fatalf("%q %v", got, err)
	}
	// Bounded wait for the sweep (it runs at Idle, then every Idle/2).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		k.mu.Lock()
		n, armed := len(k.open), k.sweep != nil
		k.mu.Unlock()
		if n == 0 && !armed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors still kept (sweep armed %v) after 10 s idle", n, armed)
		}
	}
	os.WriteFile(p, []byte("two\n"), 0o644)
	if got, err := k.ReadFile(p); err != nil || string(got) != "two\n" {
		t.Fatalf("after the sweep: %q %v", got, err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.open) != 1 || k.sweep == nil {
		t.Errorf("after a new read: %d kept, sweep armed %v", len(k.open), k.sweep != nil)
	}
}
