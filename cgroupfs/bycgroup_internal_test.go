package cgroupfs

import (
	"bytes"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSameContent: equal content made for two cgroups is kept once (the
// second call returns the first's bytes), different content is returned
// as made, and what is kept has no spare room.
func TestSameContent(t *testing.T) {
	var s sameContent
	a := append(make([]byte, 0, 4096), "processor\t: 0\n"...)
	first := s.of(a)
	if string(first) != "processor\t: 0\n" || cap(first) > 2*len(first) {
		t.Fatalf("first: %q, cap %d", first, cap(first))
	}
	second := s.of([]byte("processor\t: 0\n"))
	if &second[0] != &first[0] {
		t.Error("equal content is not shared")
	}
	other := s.of([]byte("processor\t: 1\n"))
	if string(other) != "processor\t: 1\n" {
		t.Errorf("other content: %q", other)
	}
	if again := s.of([]byte("processor\t: 0\n")); &again[0] == &first[0] || !bytes.Equal(again, first) {
		t.Errorf("content after another's: %q, shared %v", again, &again[0] == &first[0])
	}
	if empty := s.of(nil); len(empty) != 0 {
		t.Errorf("empty content: %q", empty)
	}
}

// TestWalkDirs: walkDirs finds the directories filepath.WalkDir finds,
// with the inode numbers lstat(2) gives, follows no symbolic link and
// skips below a directory where fn says so: in a tree made here (more
// entries than one getdents buffer holds) and in the cgroup hierarchies
// of this machine.
func TestWalkDirs(t *testing.T) {
	top := t.TempDir()
	for _, d := range []string{"a/b/c", "a/skip/below", "d", "e/f"} {
		if err := os.MkdirAll(filepath.Join(top, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 300 {
		name := filepath.Join(top, "d", "file-with-a-long-name-"+strings.Repeat("x", i%40)+"-"+string(rune('a'+i%26))+string(rune('a'+i/26)))
		if err := os.WriteFile(name, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(top, "d", "last"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(top, "a"), filepath.Join(top, "e", "link")); err != nil {
		t.Fatal(err)
	}
	skip := func(dir string) bool { return filepath.Base(dir) == "skip" }
	compare := func(t *testing.T, top string) {
		want := map[string]uint64{}
		filepath.WalkDir(top, func(dir string, e fs.DirEntry, err error) error {
			if err != nil || !e.IsDir() {
				return nil
			}
			if st, err := e.Info(); err == nil {
				want[dir] = inoOf(st)
			}
			if skip(dir) {
				return fs.SkipDir
			}
			return nil
		})
		st, err := os.Lstat(top)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]uint64{}
		walkDirs(top, inoOf(st), make([]byte, 1024), func(dir string, ino uint64) bool {
			got[dir] = ino
			return !skip(dir)
		})
		if _, ok := got[filepath.Join(top, "d", "last")]; !ok && top != "/sys/fs/cgroup" && !strings.HasPrefix(top, "/sys/") {
			t.Errorf("walkDirs(%s) missed d/last, after 300 files (several getdents)", top)
		}
		if !maps.Equal(got, want) {
			t.Errorf("walkDirs(%s) found %v, want %v", top, got, want)
		}
	}
	compare(t, top)
	for _, h := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"} {
		if st, err := os.Stat(h); err == nil && st.IsDir() {
			compare(t, h)
		}
	}
}
