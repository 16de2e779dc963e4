package bytestore_test

import (
	"fmt"
	"log"
	"os"

	"github.com/ramproc/ramproc/bytestore"
)

// A store is created with a capacity, written and read like a file with
// pwrite and pread. It works with or without privileges: without, it falls
// back to a memfd and enforces the capacity itself.
func Example() {
	s, err := bytestore.New(bytestore.Options{Capacity: 1 << 20})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	if _, err := s.WriteAt([]byte("hello, world"), 4096); err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 5)
	n, err := s.ReadAt(buf, 4096+7)
	fmt.Printf("%d %q %v\n", n, buf[:n], err)

	// Reading the hole before the data gives zeros; reading past the end
	// gives a short count, as pread does.
	n, _ = s.ReadAt(buf, 0)
	fmt.Println(n, buf[:n])
	n, _ = s.ReadAt(buf, 4096+10)
	fmt.Println(n)

	// One page of memory holds the bytes: the hole costs nothing.
	st, _ := s.Stat()
	fmt.Println(st.Size, st.Blocks*512/int64(os.Getpagesize()))
	// Output:
	// 5 "world" <nil>
	// 5 [0 0 0 0 0]
	// 2
	// 4108 1
}
