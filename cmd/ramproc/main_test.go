package main

import (
	"os"
	"testing"

	"github.com/ramproc/ramproc/internal/testenv"
)

// ramprocBinary is the command built as a user builds it.
func ramprocBinary(t testing.TB) string { return testenv.Ramproc(t) }

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBuilds()
	os.Exit(code)
}
