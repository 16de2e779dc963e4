package handler_test

import (
	"context"
	"fmt"
	"syscall"

	"github.com/ramproc/ramproc/handler"
)

// A /proc-style table produced record by record as it is read: a reader
// reading 20 bytes at a time gets whole lines, never one cut in two, and
// only as many lines are produced as have been read.
func ExampleStream() {
	produced := 0
	table := handler.Stream(func(ctx context.Context, w *handler.RecordWriter) error {
		for pid := 1; pid <= 1000000; pid++ {
			produced++
			if _, err := fmt.Fprintf(w, "%d\tproc%d\n", pid, pid); err != nil {
				return err // the reader is gone
			}
		}
		return nil
	})

	// What the FUSE bridge does for open(2), three read(2)s of 20 bytes
	// and close(2).
	f := &handler.OpenFile{Flags: syscall.O_RDONLY}
	table.Open(context.Background(), f)
	buf := make([]byte, 20)
	var off int64
	for range 3 {
		n, _ := table.Read(context.Background(), f, buf, off)
		fmt.Printf("%q\n", buf[:n])
		off += int64(n)
	}
	table.Release(context.Background(), f)
	// The 7th line was produced, did not fit, and waited for a read.
	fmt.Println("lines produced:", produced)
	// Output:
	// "1\tproc1\n2\tproc2\n"
	// "3\tproc3\n4\tproc4\n"
	// "5\tproc5\n6\tproc6\n"
	// lines produced: 7
}
