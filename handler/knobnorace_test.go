//go:build !race

package handler_test

const raceBuild = false
