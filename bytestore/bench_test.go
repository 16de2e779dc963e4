package bytestore

import "testing"

// BenchmarkWriteAt measures the cost of one 4 KiB pwrite through the store:
// the lock-free path (no capacity, or kernel-enforced) against the emulated
// one (memfd with a capacity).
func BenchmarkWriteAt(b *testing.B) {
	for _, bc := range []struct {
		name     string
		kind     Kind
		capacity int64
	}{
		{"memfd-unlimited", Memfd, 0},
		{"memfd-emulated", Memfd, 64 << 20},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := openStore(b, bc.kind, bc.capacity)
			buf := make([]byte, 4096)
			b.SetBytes(int64(len(buf)))
			b.RunParallel(func(pb *testing.PB) {
				off := int64(0)
				for pb.Next() {
					if _, err := s.WriteAt(buf, off); err != nil {
						b.Error(err)
						return
					}
					off = (off + 4096) % (16 << 20)
				}
			})
		})
	}
}
