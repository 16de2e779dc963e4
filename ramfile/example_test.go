package ramfile_test

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/ramfile"
)

// Serving the RAM file from a Go program: what `ramproc mount -max-size 64m`
// does. (A server that runs until someone unmounts it calls srv.Wait()
// where this one reads the file back and stops.)
func Example() {
	store, err := bytestore.New(bytestore.Options{Capacity: 64 << 20})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer store.Close()
	dir, err := os.MkdirTemp("", "ramproc")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	srv, err := fusebridge.Mount(filepath.Join(dir, "mnt"), fusebridge.Options{
		// df shows the capacity and use, as for a tmpfs with size=64m.
		Space: func() fusebridge.Space {
			st, _ := store.Stat()
			return fusebridge.Space{Capacity: 64 << 20, Used: st.Blocks * 512}
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Unmount()
	if _, err := srv.Create("ramfile", 0o666, ramfile.New(store)); err != nil {
		fmt.Println(err)
		return
	}

	path := filepath.Join(srv.Mountpoint(), "ramfile")
	if err := os.WriteFile(path, []byte("abcd\n"), 0); err != nil {
		fmt.Println(err)
		return
	}
	b, err := os.ReadFile(path)
	fmt.Printf("%s%v\n", b, err)
	var fs unix.Statfs_t
	if err := unix.Statfs(srv.Mountpoint(), &fs); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(fs.Blocks*uint64(fs.Bsize)>>20, "MiB") // as df reports it
	// Output:
	// abcd
	// <nil>
	// 64 MiB
}
