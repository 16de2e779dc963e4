package fusebridge_test

import (
	"context"
	"fmt"
	"log"
	"sync/atomic"
	"time"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// Waking the watchers of a generated file when its source changes: Notify
// is the sysfs_notify of the API. A program blocked in inotify on
// /tmp/myproc/temperature (inotifywait -e modify, systemd's path units)
// gets IN_MODIFY and reads the new value. (Not run by go test: it mounts
// on a fixed path; TestNotifyGenerated does the same in a temporary one.)
func ExampleEntry_Notify() {
	srv, err := fusebridge.Mount("/tmp/myproc", fusebridge.Options{NoOpenHandlers: true})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Unmount()

	var celsius atomic.Int64
	temp, err := srv.Create("temperature", 0o444, handler.Generated(func(ctx context.Context) ([]byte, error) {
		return fmt.Appendf(nil, "%d\n", celsius.Load()), nil
	}))
	if err != nil {
		log.Fatal(err)
	}
	for range time.Tick(time.Second) {
		if v := readSensor(); v != celsius.Load() {
			celsius.Store(v)
			temp.Notify() // drops the kernel's copy, then raises IN_MODIFY
		}
	}
}

func readSensor() int64 { return time.Now().Unix() / 60 % 40 }
