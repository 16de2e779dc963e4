package fusebridge_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// A generated file with a freshness bound: never read older than the bound
// (here an hour), served from the kernel's page cache in between, so a
// re-read costs no request and shows the same bytes; Notify makes the next
// reads show new content at once.
func Example_freshnessBound() {
	srv, done := exampleMount(fusebridge.Options{})
	defer done()

	var load atomic.Value
	load.Store("0.10\n")
	loadavg := handler.Generated(func(ctx context.Context) ([]byte, error) {
		return []byte(load.Load().(string)), nil
	})
	e, err := srv.Create("loadavg", 0o444, loadavg.MaxAge(time.Hour))
	if err != nil {
		fmt.Println(err) // printed, so the example fails with it; done still runs
		return
	}
	path := filepath.Join(srv.Mountpoint(), "loadavg")
	a, _ := os.ReadFile(path)
	b, _ := os.ReadFile(path) // within the bound: the same bytes
	fmt.Printf("%s%s", a, b)

	load.Store("0.42\n")
	e.Notify() // asynchronous: the kernel's copy is gone shortly
	for string(b) == string(a) {
		time.Sleep(time.Millisecond)
		b, _ = os.ReadFile(path)
	}
	fmt.Printf("%s", b)
	// Output:
	// 0.10
	// 0.10
	// 0.42
}
