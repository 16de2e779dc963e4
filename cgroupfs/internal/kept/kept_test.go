package kept

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
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
