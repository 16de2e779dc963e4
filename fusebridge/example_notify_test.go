package fusebridge_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// Waking the watchers of a generated file when its source changes: Notify
// is the sysfs_notify of the API. A program blocked in inotify on the file
// (inotifywait -e modify, systemd's path units) gets IN_MODIFY and reads
// the new value, even on a connection where the kernel caches the file's
// content, as for the handler files of a NoOpenHandlers mount.
func ExampleEntry_Notify() {
	srv, done := exampleMount(fusebridge.Options{NoOpenHandlers: true})
	defer done()

	var celsius atomic.Int64
	temp, err := srv.Create("temperature", 0o444, handler.Generated(func(ctx context.Context) ([]byte, error) {
		return fmt.Appendf(nil, "%d\n", celsius.Load()), nil
	}))
	if err != nil {
		fmt.Println(err)
		return
	}
	path := filepath.Join(srv.Mountpoint(), "temperature")
	b, _ := os.ReadFile(path)
	fmt.Printf("before: %s", b)

	// The watcher: usually another program.
	in, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer unix.Close(in)
	if _, err := unix.InotifyAddWatch(in, path, unix.IN_MODIFY); err != nil {
		fmt.Println(err)
		return
	}

	celsius.Store(42) // the source moved on (a sensor, a counter)
	temp.Notify()     // drops the kernel's copy, then raises IN_MODIFY

	ev := make([]byte, 4096)
	if _, err := unix.Read(in, ev); err != nil { // blocks until the event
		fmt.Println(err)
		return
	}
	mask := binary.NativeEndian.Uint32(ev[4:8]) // struct inotify_event's mask
	b, _ = os.ReadFile(path)
	fmt.Printf("IN_MODIFY: %v, after: %s", mask&unix.IN_MODIFY != 0, b)
	// Output:
	// before: 0
	// IN_MODIFY: true, after: 42
}
