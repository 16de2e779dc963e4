package fusebridge_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/ramfile"
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

// A RAM file served by passthrough next to a /proc-style file that costs
// no request to cat: the generated file goes over a second, no-open
// connection, refreshed once a second. (Not run by go test, like Example.)
func ExampleOptions_noOpenHandlers() {
	srv, err := fusebridge.Mount("/tmp/myproc", fusebridge.Options{NoOpenHandlers: true})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Unmount()

	store, err := bytestore.New(bytestore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	if _, err := srv.Create("data", 0o666, ramfile.New(store)); err != nil {
		log.Fatal(err)
	}
	stats, err := srv.Create("stats", 0o444, handler.Generated(func(ctx context.Context) ([]byte, error) {
		st, err := store.Stat()
		return fmt.Appendf(nil, "size %d\n", st.Size), err
	}))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(srv.Passthrough(), srv.HandlersNoOpen()) // true true as root on Linux >= 6.9

	// The kernel serves the stats file from its cache: refresh it.
	for range time.Tick(time.Second) {
		stats.Invalidate()
	}
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
