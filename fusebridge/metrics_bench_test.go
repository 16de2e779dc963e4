package fusebridge

import (
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// BenchmarkCountingFS prices the counting wrapper alone: a WRITE and a
// READ through countingFS against the same calls on the bare file system
// it wraps (go-fuse's default, which answers at once). The difference is
// what every request pays for the metrics; a FUSE round trip costs tens of
// microseconds.
func BenchmarkCountingFS(b *testing.B) {
	bare := fuse.NewDefaultRawFileSystem()
	s := newServer("/nowhere", Options{})
	wrapped := s.wrapRawFS(bare)
	in := &fuse.WriteIn{}
	rin := &fuse.ReadIn{}
	data := [][]byte{make([]byte, 4096)}
	for _, c := range []struct {
		name string
		fs   fuse.RawFileSystem
	}{{"bare", bare}, {"counting", wrapped}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				c.fs.Writev(nil, in, data)
				c.fs.Read(nil, rin, data[0])
			}
		})
	}
}
