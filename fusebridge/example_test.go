package fusebridge_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"ramproc/fusebridge"
	"ramproc/handler"
)

// Publishing a live file and a knob from a Go program. (Not run by go test:
// it mounts on a fixed path; the tests in this package mount the same way.)
func Example() {
	srv, err := fusebridge.Mount("/tmp/myproc", fusebridge.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Unmount()

	start := time.Now()
	if _, err := srv.Create("uptime", 0o444, handler.Generated(func(ctx context.Context) ([]byte, error) {
		return fmt.Appendf(nil, "%.0f\n", time.Since(start).Seconds()), nil
	})); err != nil {
		log.Fatal(err)
	}
	level, err := srv.Create("level", 0o644, handler.NewValue("1\n"))
	if err != nil {
		log.Fatal(err)
	}

	// ... serve until done; then withdraw the knob while it may be in use.
	level.Remove()
}
