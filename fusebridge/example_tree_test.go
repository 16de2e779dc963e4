package fusebridge_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// exampleMount mounts a fresh directory for an example (real FUSE: as root,
// or with fusermount3) and returns it with its cleanup.
func exampleMount(opts fusebridge.Options) (*fusebridge.Server, func()) {
	dir, err := os.MkdirTemp("", "fusebridge-example")
	if err != nil {
		log.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	srv, err := fusebridge.Mount(filepath.Join(dir, "mnt"), opts)
	if err != nil {
		os.RemoveAll(dir)
		log.Fatal(err)
	}
	return srv, func() { srv.Unmount(); os.RemoveAll(dir) }
}

func str(s string) handler.Generated {
	return func(context.Context) ([]byte, error) { return []byte(s), nil }
}

// Directories at any depth, created and removed while the mount is in use,
// as proc_mkdir and remove_proc_subtree do.
func ExampleDir_Mkdir() {
	srv, done := exampleMount(fusebridge.Options{})
	defer done()

	kernel, err := srv.MkdirAll("sys/kernel", 0o555)
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := kernel.Create("hostname", 0o444, str("ramproc\n")); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := srv.Create("sys/kernel/version", 0o444, str("1\n")); err != nil { // by path
		fmt.Println(err)
		return
	}
	b, err := os.ReadFile(filepath.Join(srv.Mountpoint(), "sys/kernel/hostname"))
	fmt.Printf("%s%v\n", b, err)

	// Remove the whole subtree: its names are gone at once.
	if err := srv.Lookup("sys").Dir().Remove(); err != nil {
		fmt.Println(err)
		return
	}
	_, err = os.Stat(filepath.Join(srv.Mountpoint(), "sys/kernel/hostname"))
	fmt.Println(errors.Is(err, fs.ErrNotExist))
	// Output:
	// ramproc
	// <nil>
	// true
}

// services is a dynamic directory: one file per service, made on demand
// from a table instead of being registered one by one.
type services map[string]string

func (s services) Lookup(ctx context.Context, name string) (handler.Child, error) {
	state, ok := s[name]
	if !ok {
		return handler.Child{}, syscall.ENOENT
	}
	return handler.Child{Name: name, Mode: 0o444, Node: str(state + "\n")}, nil
}

func (s services) List(ctx context.Context) ([]handler.Child, error) {
	var list []handler.Child
	for name := range s {
		c, _ := s.Lookup(ctx, name)
		list = append(list, c)
	}
	return list, nil
}

// A dynamic directory, as /proc/<pid>: the handler produces its children
// when they are looked up or listed.
func Example_dynamicDirectory() {
	srv, done := exampleMount(fusebridge.Options{})
	defer done()

	table := services{"sshd": "running", "cron": "stopped"}
	if _, err := srv.Create("services", 0o555, table); err != nil {
		fmt.Println(err)
		return
	}
	dir := filepath.Join(srv.Mountpoint(), "services")
	ents, err := os.ReadDir(dir)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		fmt.Printf("%s: %s", e.Name(), b)
	}
	_, err = os.Stat(filepath.Join(dir, "httpd"))
	fmt.Println(errors.Is(err, fs.ErrNotExist))
	// Output:
	// cron: stopped
	// sshd: running
	// true
}

// Symbolic links: a fixed one, and one computed for each reader, as
// /proc/self.
func Example_symlink() {
	srv, done := exampleMount(fusebridge.Options{})
	defer done()

	if _, err := srv.Create("version", 0o444, str("1\n")); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := srv.Create("current", 0o777, handler.Link("version")); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := srv.Create("self", 0o777, handler.SelfLink); err != nil {
		fmt.Println(err)
		return
	}
	b, _ := os.ReadFile(filepath.Join(srv.Mountpoint(), "current"))
	fmt.Printf("%s", b)
	target, _ := os.Readlink(filepath.Join(srv.Mountpoint(), "self"))
	fmt.Println(target == strconv.Itoa(os.Getpid()))
	// Output:
	// 1
	// true
}

// A file whose content depends on who reads it: never served from a cache,
// in any mount mode, so no caller sees another's content.
func Example_perCaller() {
	srv, done := exampleMount(fusebridge.Options{NoOpenHandlers: true})
	defer done()

	whoami := handler.PerCallerGenerated(func(ctx context.Context) ([]byte, error) {
		c, _ := handler.CallerOf(ctx)
		return fmt.Appendf(nil, "uid %d\n", c.Uid), nil
	})
	if _, err := srv.Create("whoami", 0o444, whoami); err != nil {
		fmt.Println(err)
		return
	}
	b, _ := os.ReadFile(filepath.Join(srv.Mountpoint(), "whoami"))
	fmt.Println(string(b) == fmt.Sprintf("uid %d\n", os.Getuid()))
	// Output:
	// true
}
