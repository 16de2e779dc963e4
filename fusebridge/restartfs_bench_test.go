package fusebridge

import (
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// BenchmarkRestartLayer prices the restart layer alone (restartfs.go), in
// CPU per request: an OPEN, a GETATTR, a 4 KiB WRITE and a RELEASE through
// restartFS against the same calls on the bare file system it wraps
// (go-fuse's default, which answers at once). A FUSE round trip costs tens
// of microseconds; BenchmarkRestartGate (ramfile) prices it through a
// mount.
func BenchmarkRestartLayer(b *testing.B) {
	bare := fuse.NewDefaultRawFileSystem()
	data := make([]byte, 4096)
	for _, c := range []struct {
		name string
		fs   fuse.RawFileSystem
	}{{"bare", bare}, {"restart", newRestartFS(bare)}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				oin := &fuse.OpenIn{InHeader: fuse.InHeader{NodeId: 2}}
				var oout fuse.OpenOut
				c.fs.Open(nil, oin, &oout)
				gin := &fuse.GetAttrIn{InHeader: fuse.InHeader{NodeId: 2}}
				var gout fuse.AttrOut
				c.fs.GetAttr(nil, gin, &gout)
				win := &fuse.WriteIn{InHeader: fuse.InHeader{NodeId: 2}, Fh: oout.Fh}
				c.fs.Write(nil, win, data)
				c.fs.Release(nil, &fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: 2}, Fh: oout.Fh})
			}
		})
	}
}
