package fusebridge_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/ramfile"
)

// Publishing a live file and a knob from a Go program, reading and writing
// them as any program does, then withdrawing the knob while it may be in use.
// (A server that runs until someone unmounts it calls srv.Wait() instead.)
func Example() {
	dir, err := os.MkdirTemp("", "myproc")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	srv, err := fusebridge.Mount(filepath.Join(dir, "mnt"), fusebridge.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Unmount()

	// A /proc-style file: generated afresh at every open.
	var opens atomic.Int64
	if _, err := srv.Create("opens", 0o444, handler.Generated(func(ctx context.Context) ([]byte, error) {
		return fmt.Appendf(nil, "%d\n", opens.Add(1)), nil
	})); err != nil {
		fmt.Println(err)
		return
	}
	// A /sys-style knob that accepts only numbers.
	value := handler.NewValue("1\n")
	value.Set = func(ctx context.Context, v []byte) error {
		if _, err := strconv.Atoi(strings.TrimSuffix(string(v), "\n")); err != nil {
			return syscall.EINVAL
		}
		return nil
	}
	level, err := srv.Create("level", 0o644, value)
	if err != nil {
		fmt.Println(err)
		return
	}

	path := func(name string) string { return filepath.Join(srv.Mountpoint(), name) }
	for range 2 {
		b, _ := os.ReadFile(path("opens"))
		fmt.Printf("opens: %s", b)
	}
	for _, v := range []string{"42\n", "high\n"} {
		err := os.WriteFile(path("level"), []byte(v), 0)
		fmt.Printf("echo %q > level: %v\n", v, errors.Unwrap(err)) // the errno
	}
	b, _ := os.ReadFile(path("level"))
	fmt.Printf("level: %s", b)

	if err := level.Remove(); err != nil {
		fmt.Println(err)
		return
	}
	_, err = os.ReadFile(path("level"))
	fmt.Println(errors.Is(err, fs.ErrNotExist))
	// Output:
	// opens: 1
	// opens: 2
	// echo "42\n" > level: <nil>
	// echo "high\n" > level: invalid argument
	// level: 42
	// true
}

// A RAM file served by passthrough next to a /proc-style file that costs
// no request to cat: the generated file goes over a second, no-open
// connection (root, Linux >= 6.9; elsewhere the option changes nothing),
// where the kernel serves it from its cache, so the program calls
// Invalidate when the content it shows has changed.
func ExampleOptions_noOpenHandlers() {
	srv, done := exampleMount(fusebridge.Options{NoOpenHandlers: true})
	defer done()

	store, err := bytestore.New(bytestore.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer store.Close()
	if _, err := srv.Create("data", 0o666, ramfile.New(store)); err != nil {
		fmt.Println(err)
		return
	}
	stats, err := srv.Create("stats", 0o444, handler.Generated(func(ctx context.Context) ([]byte, error) {
		st, err := store.Stat()
		return fmt.Appendf(nil, "size %d\n", st.Size), err
	}))
	if err != nil {
		fmt.Println(err)
		return
	}
	// srv.Passthrough() and srv.HandlersNoOpen() say whether it took effect.

	if err := os.WriteFile(filepath.Join(srv.Mountpoint(), "data"), []byte("hello\n"), 0); err != nil {
		fmt.Println(err)
		return
	}
	stats.Invalidate() // the store changed: the next read generates afresh
	b, err := os.ReadFile(filepath.Join(srv.Mountpoint(), "stats"))
	fmt.Printf("%s%v\n", b, err)
	// Output:
	// size 6
	// <nil>
}

// Counters a mount serves into; the zero value is ready (runnable: no
// mount needed to show the API).
func ExampleMetrics() {
	var m fusebridge.Metrics
	srv := fusebridge.Options{Metrics: &m} // pass to Mount; then read m at any time
	_ = srv
	for _, op := range fusebridge.Ops()[:3] {
		fmt.Println(op, m.Requests(op))
	}
	fmt.Println("open handles", m.OpenHandles(), "errors", len(m.Errors()))
	// Output:
	// lookup 0
	// forget 0
	// getattr 0
	// open handles 0 errors 0
}
