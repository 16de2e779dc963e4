package handler_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"github.com/ramproc/ramproc/handler"
)

// A /proc-style file: its content is generated at every open, and every
// read through that descriptor sees the same snapshot.
func ExampleGenerated() {
	calls := 0
	uptime := handler.Generated(func(ctx context.Context) ([]byte, error) {
		calls++
		return fmt.Appendf(nil, "opened %d times\n", calls), nil
	})

	// What the FUSE bridge does for open(2) and two read(2)s of 4 bytes.
	f := &handler.OpenFile{Flags: syscall.O_RDONLY}
	uptime.Open(context.Background(), f)
	buf := make([]byte, 4)
	n, _ := uptime.Read(context.Background(), f, buf, 0)
	fmt.Printf("%q\n", buf[:n])
	n, _ = uptime.Read(context.Background(), f, buf, 4)
	fmt.Printf("%q\n", buf[:n])
	// Output:
	// "open"
	// "ed 1"
}

// A /sys-style knob that accepts only numbers: a rejected write fails with
// EINVAL and leaves the value alone.
func ExampleValue() {
	level := handler.NewValue("1\n")
	level.Set = func(ctx context.Context, v []byte) error {
		if _, err := strconv.Atoi(strings.TrimSpace(string(v))); err != nil {
			return syscall.EINVAL
		}
		return nil
	}
	f := &handler.OpenFile{Flags: syscall.O_WRONLY | syscall.O_TRUNC}
	_, err := level.Write(context.Background(), f, []byte("42\n"), 0)
	fmt.Printf("%q %v\n", level.Get(), err)
	_, err = level.Write(context.Background(), f, []byte("high\n"), 0)
	fmt.Printf("%q %v\n", level.Get(), handler.Errno(err))
	// Output:
	// "42\n" <nil>
	// "42\n" invalid argument
}

func ExampleParseWhence() {
	for _, raw := range []int{0, 3, 4, 7} {
		w, err := handler.ParseWhence(raw)
		fmt.Println(raw, w, err)
	}
	// Output:
	// 0 SEEK_SET <nil>
	// 3 SEEK_DATA <nil>
	// 4 SEEK_HOLE <nil>
	// 7 SEEK_SET invalid argument
}

func ExampleErrno() {
	fmt.Println(handler.Errno(nil) == 0)
	fmt.Println(handler.Errno(fmt.Errorf("parsing knob: %w", syscall.EINVAL)))
	fmt.Println(handler.Errno(context.Canceled))
	fmt.Println(handler.Errno(errors.New("a bug")))
	// Output:
	// true
	// invalid argument
	// interrupted system call
	// input/output error
}
