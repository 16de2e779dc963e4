package fusebridge_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// visDir is a per-caller dynamic directory: each child may be hidden from
// one uid, as a /proc in a pid namespace hides other containers' pids. A
// child the test deletes with vanish is reported with handler.ErrVanished,
// one deleted with drop with plain ENOENT (a handler that cannot tell).
type visDir struct {
	mu       sync.Mutex
	kids     map[string]visKid
	vanished map[string]bool
}

type visKid struct {
	node     any
	hideFrom int64 // a uid that does not see it, or -1
}

var _ handler.PerCaller = (*visDir)(nil)

func newVisDir() *visDir {
	return &visDir{kids: map[string]visKid{}, vanished: map[string]bool{}}
}

func (v *visDir) set(name string, node any, hideFrom int64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.kids[name] = visKid{node, hideFrom}
	delete(v.vanished, name)
}

func (v *visDir) vanish(name string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.kids, name)
	v.vanished[name] = true
}

func (v *visDir) drop(name string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.kids, name)
}

func (v *visDir) PerCaller() bool { return true }

func visUid(ctx context.Context) int64 {
	c, ok := handler.CallerOf(ctx)
	if !ok {
		return -2
	}
	return int64(c.Uid)
}

func (v *visDir) Lookup(ctx context.Context, name string) (handler.Child, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	k, ok := v.kids[name]
	switch {
	case !ok && v.vanished[name]:
		return handler.Child{}, fmt.Errorf("%s exited: %w", name, handler.ErrVanished)
	case !ok || k.hideFrom == visUid(ctx):
		return handler.Child{}, syscall.ENOENT
	}
	return handler.Child{Name: name, Mode: 0o555, Node: k.node}, nil
}

func (v *visDir) List(ctx context.Context) ([]handler.Child, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	uid := visUid(ctx)
	var list []handler.Child
	for name, k := range v.kids {
		if k.hideFrom != uid {
			list = append(list, handler.Child{Name: name, Mode: 0o555, Node: k.node})
		}
	}
	return list, nil
}

// asNobody runs a command as user nobody and returns its output (stdout
// and stderr) and error.
func asNobody(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func fstatIno(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatalf("fstat %s: %v", f.Name(), err)
	}
	return st.Ino
}

// preadString reads f from offset 0: a read that reaches the server each
// time (the children of a dynamic directory are not cached).
func preadString(f *os.File) (string, error) {
	b := make([]byte, 64)
	n, err := f.ReadAt(b, 0)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return string(b[:n]), err
}

// TestPerCallerDirVisibility: in a per-caller dynamic directory, another
// caller (user nobody) that lists it or looks up a child it cannot see
// retires nothing: root's descriptors on that child keep reading, and its
// inode numbers stay. Once the child really vanishes (the handler says
// handler.ErrVanished) lookups are ENOENT and the descriptors get EIO, and
// a child of that name shown later is a new inode.
func TestPerCallerDirVisibility(t *testing.T) {
	testenv.RequireFUSE(t)
	for _, opts := range []fusebridge.Options{{}, {NoOpenHandlers: true}} {
		t.Run(fmt.Sprintf("noopenhandlers=%v", opts.NoOpenHandlers), func(t *testing.T) {
			tmp := t.TempDir()
			os.Chmod(tmp, 0o755)
			os.Chmod(filepath.Dir(tmp), 0o755)
			srv, err := fusebridge.Mount(filepath.Join(tmp, "mnt"), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Unmount()
			ctx := boundedCtx(t)

			v := newVisDir()
			one := newMapDir()
			one.set("status", text("Pid: 1\n"))
			v.set("a", text("A\n"), 65534)
			v.set("1", one, 65534)
			v.set("shared", text("S\n"), -1)
			v.set("gone", text("G\n"), -1)
			if _, err := srv.Create("proc", 0o555, v); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(srv.Mountpoint(), "proc")
			if got := listNames(t, dir); got != "1 a gone shared" {
				t.Fatalf("root lists %q", got)
			}
			fa, err := os.Open(filepath.Join(dir, "a"))
			if err != nil {
				t.Fatal(err)
			}
			defer fa.Close()
			fs, err := os.Open(filepath.Join(dir, "1/status"))
			if err != nil {
				t.Fatal(err)
			}
			defer fs.Close()
			fg, err := os.Open(filepath.Join(dir, "gone"))
			if err != nil {
				t.Fatal(err)
			}
			defer fg.Close()
			inoA, inoS := fstatIno(t, fa), fstatIno(t, fs)
			ino1 := inoOf(t, filepath.Join(dir, "1"))

			for round := range 3 {
				// nobody's listing and lookups miss root's children.
				out, err := asNobody(ctx, "ls", "-1", dir)
				if err != nil || out != "gone\nshared\n" {
					t.Fatalf("round %d: nobody lists %q, %v; want gone and shared", round, out, err)
				}
				for _, p := range []string{"a", "1", "1/status"} {
					out, err := asNobody(ctx, "stat", "-c", "%i", filepath.Join(dir, p))
					if err == nil || !strings.Contains(out, "No such file") {
						t.Errorf("round %d: nobody stats %s: %q, %v; want ENOENT", round, p, out, err)
					}
				}
				if out, err := asNobody(ctx, "cat", filepath.Join(dir, "1/status")); err == nil {
					t.Errorf("round %d: nobody reads 1/status: %q", round, out)
				}
				// root's descriptors read on, its inode numbers stay.
				for f, want := range map[*os.File]string{fa: "A\n", fs: "Pid: 1\n"} {
					if got, err := preadString(f); err != nil || got != want {
						t.Errorf("round %d: root's descriptor on %s reads %q, %v; want %q", round, f.Name(), got, err, want)
					}
				}
				if got := fstatIno(t, fa); got != inoA {
					t.Errorf("round %d: fstat inode of a: %d, was %d", round, got, inoA)
				}
				if got := inoOf(t, filepath.Join(dir, "a")); got != inoA {
					t.Errorf("round %d: stat inode of a: %d, was %d", round, got, inoA)
				}
				if got := inoOf(t, filepath.Join(dir, "1")); got != ino1 {
					t.Errorf("round %d: inode of 1: %d, was %d", round, got, ino1)
				}
				if got := inoOf(t, filepath.Join(dir, "1/status")); got != inoS {
					t.Errorf("round %d: inode of 1/status: %d, was %d", round, got, inoS)
				}
				if got := listNames(t, dir); got != "1 a gone shared" {
					t.Errorf("round %d: root lists %q", round, got)
				}
			}

			// Plain ENOENT for everyone: the bridge cannot tell it from
			// "not for this caller", so the open descriptor reads on.
			v.drop("gone")
			if _, err := os.Stat(filepath.Join(dir, "gone")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stat of a dropped child: %v, want ENOENT", err)
			}
			if got, err := preadString(fg); err != nil || got != "G\n" {
				t.Errorf("descriptor on a child the handler no longer shows: %q, %v", got, err)
			}

			// Really vanished: ENOENT, EIO for the descriptors.
			v.vanish("a")
			v.vanish("1")
			for _, p := range []string{"a", "1", "1/status"} {
				if _, err := os.Stat(filepath.Join(dir, p)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("stat of vanished %s: %v, want ENOENT", p, err)
				}
			}
			for _, f := range []*os.File{fa, fs} {
				if _, err := f.ReadAt(make([]byte, 8), 0); !errors.Is(err, syscall.EIO) {
					t.Errorf("read of vanished %s's descriptor: %v, want EIO", f.Name(), err)
				}
			}
			if e := srv.Lookup("proc/a"); e != nil {
				t.Errorf("the bridge still holds vanished a: %v", e.Path())
			}
			// Shown again, it is a new child.
			v.set("a", text("A2\n"), 65534)
			if got := inoOf(t, filepath.Join(dir, "a")); got == inoA {
				t.Errorf("a child that vanished came back with its old inode number %d", got)
			}
			if got := readAt(t, filepath.Join(dir, "a")); got != "A2\n" {
				t.Errorf("the new a reads %q", got)
			}
		})
	}
}

// genDir shows one child, "p", whose generation the test sets: a pid that
// a new process reuses.
type genDir struct {
	mu        sync.Mutex
	gen       uint64
	perCaller bool
}

func (g *genDir) PerCaller() bool { return g.perCaller }

func (g *genDir) child() handler.Child {
	g.mu.Lock()
	defer g.mu.Unlock()
	return handler.Child{Name: "p", Mode: 0o444, Node: text(fmt.Sprintf("gen %d\n", g.gen)), Gen: g.gen}
}

func (g *genDir) Lookup(ctx context.Context, name string) (handler.Child, error) {
	if name != "p" {
		return handler.Child{}, syscall.ENOENT
	}
	return g.child(), nil
}

func (g *genDir) List(ctx context.Context) ([]handler.Child, error) {
	return []handler.Child{g.child()}, nil
}

// TestDynamicChildGen: a child shown under the same name with another
// handler.Child.Gen is a new child, with no answer in between that missed
// it: a new inode number, the new Node's content, EIO for the old one's
// descriptors. The same Gen keeps the child.
func TestDynamicChildGen(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	for _, perCaller := range []bool{false, true} {
		g := &genDir{gen: 1, perCaller: perCaller}
		name := fmt.Sprintf("d%v", perCaller)
		if _, err := srv.Create(name, 0o555, g); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(srv.Mountpoint(), name, "p")
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		ino := fstatIno(t, f)
		if got := inoOf(t, p); got != ino {
			t.Errorf("per-caller %v: same Gen, inode %d then %d", perCaller, ino, got)
		}
		if got := listNames(t, filepath.Dir(p)); got != "p" {
			t.Errorf("per-caller %v: ls = %q", perCaller, got)
		}
		if got, err := preadString(f); err != nil || got != "gen 1\n" {
			t.Errorf("per-caller %v: same Gen, the descriptor reads %q, %v", perCaller, got, err)
		}
		g.mu.Lock()
		g.gen = 2
		g.mu.Unlock()
		if got := inoOf(t, p); got == ino {
			t.Errorf("per-caller %v: a new Gen kept the inode number %d", perCaller, ino)
		}
		if got := readAt(t, p); got != "gen 2\n" {
			t.Errorf("per-caller %v: the new child reads %q", perCaller, got)
		}
		if _, err := f.ReadAt(make([]byte, 8), 0); !errors.Is(err, syscall.EIO) {
			t.Errorf("per-caller %v: the old child's descriptor: %v, want EIO", perCaller, err)
		}
	}
}
