package ramfile_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/testenv"
	"github.com/ramproc/ramproc/ramfile"
)

// BenchmarkRestartGate prices the layer that makes a mount restartable
// (Options.Restartable, which `ramproc mount` always sets: restartfs.go),
// which every request passes: the RAM file served as ramproc mount serves
// it, with and without it, in one run. open+read+close of a page costs an
// OPEN (and an asynchronous RELEASE) in both I/O modes; a 64-byte write
// costs a WRITE where I/O is forwarded and no request with passthrough.
// Compare the gate=on figures with the gate=off ones of the same run.
func BenchmarkRestartGate(b *testing.B) {
	testenv.RequireFUSE(b)
	for _, io := range []struct {
		name string
		pt   fusebridge.Passthrough
	}{{"passthrough", fusebridge.PassthroughAuto}, {"forwarded", fusebridge.PassthroughOff}} {
		for _, gate := range []bool{false, true} {
			path, stop := serveGate(b, io.pt, gate)
			b.Run(fmt.Sprintf("%s/open-read-close/gate=%v", io.name, gate), func(b *testing.B) {
				buf := make([]byte, 4096)
				for b.Loop() {
					fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := unix.Read(fd, buf); err != nil {
						b.Fatal(err)
					}
					unix.Close(fd)
				}
			})
			b.Run(fmt.Sprintf("%s/write-64B/gate=%v", io.name, gate), func(b *testing.B) {
				fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					b.Fatal(err)
				}
				defer unix.Close(fd)
				buf := make([]byte, 64)
				var off int64
				for b.Loop() {
					if _, err := unix.Pwrite(fd, buf, off); err != nil {
						b.Fatal(err)
					}
					off = (off + 64) % (1 << 20)
				}
			})
			stop()
		}
	}
}

// serveGate mounts a RAM file of one page as ramproc mount does, with or
// without the restart layer.
func serveGate(b *testing.B, pt fusebridge.Passthrough, restartable bool) (string, func()) {
	store, err := bytestore.New(bytestore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := fusebridge.Mount(filepath.Join(b.TempDir(), "mnt"), fusebridge.Options{Passthrough: pt, Restartable: restartable})
	if err != nil {
		store.Close()
		b.Fatal(err)
	}
	stop := func() { srv.Unmount(); store.Close() }
	if _, err := srv.Create("ramfile", 0o644, ramfile.New(store)); err != nil {
		stop()
		b.Fatal(err)
	}
	path := filepath.Join(srv.Mountpoint(), "ramfile")
	if err := os.WriteFile(path, make([]byte, 4096), 0); err != nil {
		stop()
		b.Fatal(err)
	}
	return path, stop
}
