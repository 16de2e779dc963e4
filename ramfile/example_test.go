package ramfile_test

import (
	"log"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/ramfile"
)

// Serving the RAM file from a Go program: what `ramproc mount` does. (Not
// run by go test: it mounts on a fixed path.)
func Example() {
	store, err := bytestore.New(bytestore.Options{Capacity: 64 << 20})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	srv, err := fusebridge.Mount("/tmp/ramproc", fusebridge.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Unmount()
	if _, err := srv.Create("ramfile", 0o666, ramfile.New(store)); err != nil {
		log.Fatal(err)
	}
	srv.Wait() // until unmounted
}
