package fusebridge_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// inode is the inode number of path, as ls -i shows it.
func inode(path string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Ino
}

// Withdrawing a file while a reader holds it open, as remove_proc_entry
// does: the reader's next read fails with EIO, a new open with ENOENT, and
// the name is free to publish again.
func ExampleEntry_Remove() {
	srv, done := exampleMount(fusebridge.Options{})
	defer done()

	level, err := srv.Create("level", 0o644, handler.NewInt(1, 0, 10))
	if err != nil {
		fmt.Println(err)
		return
	}
	path := filepath.Join(srv.Mountpoint(), "level")
	f, err := os.Open(path) // a reader that keeps the file open
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()

	// Remove returns once no callback of the handler runs any more: what
	// the handler uses may be freed then.
	if err := level.Remove(); err != nil {
		fmt.Println(err)
		return
	}
	_, err = f.Read(make([]byte, 10))
	fmt.Println("read on the old descriptor:", errors.Unwrap(err))
	_, err = os.Open(path)
	fmt.Println("open:", errors.Unwrap(err))

	if _, err := srv.Create("level", 0o644, handler.NewInt(5, 0, 10)); err != nil {
		fmt.Println(err)
		return
	}
	b, _ := os.ReadFile(path)
	fmt.Printf("published again: %s", b)
	// Output:
	// read on the old descriptor: input/output error
	// open: no such file or directory
	// published again: 5
}

// Removing a dynamic directory's child: the bridge retires the one it
// holds (its descriptors get EIO), but the handler still decides what
// exists, so as long as it shows the name, the next lookup makes a new
// child of it, with a new inode number. (A child also goes away by itself
// when the handler stops showing it; see handler.DirHandler.)
func ExampleEntry_Remove_dynamicChild() {
	srv, done := exampleMount(fusebridge.Options{})
	defer done()

	if _, err := srv.Create("services", 0o555, services{"sshd": "running"}); err != nil {
		fmt.Println(err)
		return
	}
	path := filepath.Join(srv.Mountpoint(), "services", "sshd")
	f, err := os.Open(path) // the bridge now holds the child "sshd"
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()
	before := inode(path)

	if err := srv.Lookup("services/sshd").Remove(); err != nil {
		fmt.Println(err)
		return
	}
	_, err = f.Read(make([]byte, 10))
	fmt.Println("read on the old descriptor:", errors.Unwrap(err))
	b, _ := os.ReadFile(path)
	fmt.Printf("read afresh: %s", b)
	fmt.Println("same inode:", inode(path) == before)
	// Output:
	// read on the old descriptor: input/output error
	// read afresh: running
	// same inode: false
}

// Removing a subtree in use, as remove_proc_subtree does: static files,
// directories and a dynamic directory's children alike are gone at once,
// and descriptors open anywhere below get EIO.
func ExampleDir_Remove() {
	srv, done := exampleMount(fusebridge.Options{})
	defer done()

	if _, err := srv.MkdirAll("sys/kernel", 0o555); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := srv.Create("sys/kernel/version", 0o444, str("1\n")); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := srv.Create("sys/services", 0o555, services{"cron": "stopped"}); err != nil {
		fmt.Println(err)
		return
	}
	mnt := srv.Mountpoint()
	version, err := os.Open(filepath.Join(mnt, "sys/kernel/version"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer version.Close()
	cron, err := os.Open(filepath.Join(mnt, "sys/services/cron")) // a dynamic child
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cron.Close()

	if err := srv.Lookup("sys").Dir().Remove(); err != nil {
		fmt.Println(err)
		return
	}
	for _, f := range []*os.File{version, cron} {
		_, err := f.Read(make([]byte, 10))
		fmt.Printf("%s: %v\n", filepath.Base(f.Name()), errors.Unwrap(err))
	}
	_, err = os.Stat(filepath.Join(mnt, "sys"))
	fmt.Println("sys exists:", !errors.Is(err, fs.ErrNotExist), srv.Lookup("sys") != nil)
	fmt.Println("the root:", srv.Root().Remove() != nil) // Unmount is the root's removal
	// Output:
	// version: input/output error
	// cron: input/output error
	// sys exists: false false
	// the root: true
}

// procTable is a dynamic directory of processes, each a file named by its
// pid; a pid is reused by a later process with another start time.
type procTable struct {
	mu      sync.Mutex
	started map[string]uint64 // pid -> start time
}

func (p *procTable) Lookup(ctx context.Context, name string) (handler.Child, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.started[name]
	if !ok {
		return handler.Child{}, syscall.ENOENT
	}
	// Gen tells this process from an earlier one with the same pid.
	return handler.Child{Name: name, Mode: 0o444, Node: str(fmt.Sprintf("started at %d\n", t)), Gen: t}, nil
}

func (p *procTable) List(ctx context.Context) ([]handler.Child, error) {
	var list []handler.Child
	for _, name := range []string{"42"} {
		if c, err := p.Lookup(ctx, name); err == nil {
			list = append(list, c)
		}
	}
	return list, nil
}

// A dynamic directory whose names are reused, as /proc/<pid> is: with
// Child.Gen (the process's start time) the bridge knows that pid 42 now
// names another process, even though no answer in between left it out. The
// new child gets a new inode number and the old one's descriptors get EIO,
// so no reader of the old process ever reads the new one's file.
func Example_childGen() {
	srv, done := exampleMount(fusebridge.Options{})
	defer done()

	procs := &procTable{started: map[string]uint64{"42": 100}}
	if _, err := srv.Create("proc", 0o555, procs); err != nil {
		fmt.Println(err)
		return
	}
	path := filepath.Join(srv.Mountpoint(), "proc", "42")
	old, err := os.Open(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer old.Close()
	first := inode(path)
	fmt.Println("looked up again, same child:", inode(path) == first)

	procs.mu.Lock()
	procs.started["42"] = 200 // pid 42 exited; a new process got its number
	procs.mu.Unlock()

	fmt.Println("after the reuse, same child:", inode(path) == first)
	_, err = old.Read(make([]byte, 20))
	fmt.Println("read on the old descriptor:", errors.Unwrap(err))
	b, _ := os.ReadFile(path)
	fmt.Printf("read afresh: %s", b)
	// Output:
	// looked up again, same child: true
	// after the reuse, same child: false
	// read on the old descriptor: input/output error
	// read afresh: started at 200
}

// MkdirAll makes a path of static directories in one call, keeps those that
// exist, and refuses to go through anything that is not a static directory.
func ExampleServer_MkdirAll() {
	srv, done := exampleMount(fusebridge.Options{})
	defer done()

	mm, err := srv.MkdirAll("sys/kernel/mm", 0o555)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(mm.Path(), mm.Name())
	kernel, err := srv.MkdirAll("sys/kernel", 0o555) // exists: returned as is
	fmt.Println(kernel == srv.Lookup("sys/kernel").Dir(), err)
	if _, err := kernel.Create("version", 0o444, str("1\n")); err != nil {
		fmt.Println(err)
		return
	}
	_, err = srv.MkdirAll("sys/kernel/version/x", 0o555)
	fmt.Println(errors.Unwrap(err))

	filepath.WalkDir(srv.Mountpoint(), func(path string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(srv.Mountpoint(), path)
		fmt.Println(rel, d.IsDir())
		return err
	})
	// Output:
	// sys/kernel/mm mm
	// true <nil>
	// not a directory
	// . true
	// sys true
	// sys/kernel true
	// sys/kernel/mm true
	// sys/kernel/version false
}
