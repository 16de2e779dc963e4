package fusebridge_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/testenv"
	"github.com/ramproc/ramproc/ramfile"
)

func devOf(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Dev
}

// TestNoOpenHandlers checks the two-connection mount: the RAM file keeps
// passthrough while handler files get no-open semantics through binds, and
// every bind goes with Remove and Unmount.
func TestNoOpenHandlers(t *testing.T) {
	srv := mount(t, fusebridge.Options{NoOpenHandlers: true})
	if !srv.Passthrough() {
		testenv.Missing(t, "needs FUSE passthrough (root, Linux >= 6.9)")
	}
	if !srv.HandlersNoOpen() {
		t.Fatal("NoOpenHandlers did not take effect on a passthrough mount")
	}
	store, err := bytestore.New(bytestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := srv.Create("ramfile", 0o666, ramfile.New(store)); err != nil {
		t.Fatal(err)
	}
	dir := srv.Mountpoint()
	if got := testenv.MountsUnder(t, dir); len(got) != 1 {
		t.Errorf("a backing-file entry must not be a bind: mounts %q", got)
	}

	checkNoOpen(t, srv) // creates "counter" (removed at its end) and "knob"

	knob := filepath.Join(dir, "knob")
	if got := testenv.MountsUnder(t, dir); len(got) != 2 || got[1] != knob {
		t.Errorf("mounts after checkNoOpen = %q, want the directory and the knob", got)
	}
	if devOf(t, knob) == devOf(t, dir) {
		t.Error("the knob is on the main connection")
	}
	if devOf(t, filepath.Join(dir, "ramfile")) != devOf(t, dir) {
		t.Error("the RAM file left the main connection")
	}
	// The RAM file is served by passthrough: written data lands in the
	// store without the server in the path.
	if err := os.WriteFile(filepath.Join(dir, "ramfile"), []byte("abc"), 0); err != nil {
		t.Fatal(err)
	}
	if st, err := store.Stat(); err != nil || st.Size != 3 {
		t.Errorf("store after write: %+v, %v", st, err)
	}
	// The directory lists each name once.
	names, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, n := range names {
		listed = append(listed, n.Name())
	}
	if strings.Join(listed, " ") != "knob ramfile" {
		t.Errorf("readdir = %q", listed)
	}

	if err := srv.Unmount(); err != nil {
		t.Fatal(err)
	}
	if got := testenv.MountsUnder(t, dir); len(got) != 0 {
		t.Errorf("mounts left after Unmount: %q", got)
	}
}
