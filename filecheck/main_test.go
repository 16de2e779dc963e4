package filecheck_test

import (
	"os"
	"testing"

	"github.com/ramproc/ramproc/filecheck"
)

// TestMain lets the test binary serve as filecheck's child process (the
// package's init already does; this makes it explicit).
func TestMain(m *testing.M) {
	filecheck.MaybeRunChild()
	os.Exit(m.Run())
}
