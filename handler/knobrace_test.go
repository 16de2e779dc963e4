//go:build race

package handler_test

// raceBuild: the race detector keeps shadow memory resident for every heap
// page ever used, so RSS cannot show memory returned to the OS.
const raceBuild = true
