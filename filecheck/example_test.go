package filecheck_test

import (
	"context"
	"fmt"
	"os"
	"regexp"

	"github.com/ramproc/ramproc/filecheck"
)

// Check a file against the oracle (a scratch file on /dev/shm), here with
// the seed's checks only. Without reload commands seed/reload is skipped.
func Example() {
	f, err := os.CreateTemp("", "filecheck-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	f.Close()
	defer os.Remove(f.Name())

	rep, err := filecheck.Run(context.Background(), filecheck.Config{
		Path: f.Name(),
		Run:  regexp.MustCompile(`^seed/`),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, res := range rep.Results {
		fmt.Println(res.Status, res.Name)
	}
	fmt.Println(rep.Summary())
	// Output:
	// PASS seed/open-options
	// PASS seed/read-write
	// PASS seed/write-seek-read
	// PASS seed/write-seek-overwrite
	// PASS seed/concurrent-writes
	// SKIP seed/reload
	// 5 passed, 0 failed, 1 skipped
}
