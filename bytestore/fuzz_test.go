package bytestore

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/internal/testenv"
)

// fuzzCapacities are the capacities the fuzzer picks from (by the first
// input byte): one page, a capacity tmpfs rounds up, and a few pages.
var fuzzCapacities = []int64{4096, 10000, 40000, 64 << 10}

var fuzzModes = []uint32{
	0, keepSize, punchHole | keepSize, punchHole,
	unix.FALLOC_FL_ZERO_RANGE, unix.FALLOC_FL_ZERO_RANGE | keepSize,
	unix.FALLOC_FL_COLLAPSE_RANGE, unix.FALLOC_FL_INSERT_RANGE,
}

// fuzzOpLen is the number of input bytes one operation takes.
const fuzzOpLen = 6

// decodeOps turns fuzz input into at most 24 operations with small
// offsets (about 24 pages), plus a few near 2^63 and below 0.
func decodeOps(data []byte) []op {
	var ops []op
	for len(data) >= fuzzOpLen && len(ops) < 24 {
		b := data[:fuzzOpLen]
		data = data[fuzzOpLen:]
		a := binary.LittleEndian.Uint16(b[1:])
		off := int64(a) * 3 / 2
		switch {
		case a>>8 == 0xff:
			off = maxOff - int64(a&0xff)*37
		case a>>8 == 0xfe:
			off = -int64(a & 0xff)
		case b[5]&0x80 != 0:
			off = off / pg * pg
		}
		n := int64(binary.LittleEndian.Uint16(b[3:])) * 2
		if b[5]&0x40 != 0 {
			n = n / pg * pg
		}
		switch b[0] % 6 {
		case 0:
			ops = append(ops, op{kind: opWrite, off: off, n: n, seed: b[5]})
		case 1:
			ops = append(ops, T(off))
		case 2:
			ops = append(ops, F(fuzzModes[b[5]%uint8(len(fuzzModes))], off, n))
		case 3:
			ops = append(ops, punch(off, n))
		case 4:
			ops = append(ops, SeekOp(off, unix.SEEK_DATA+int(b[5]&1)))
		case 5:
			ops = append(ops, R(off, n))
		}
	}
	return ops
}

// encodeOps is decodeOps's inverse for small values, to write seeds.
func encodeOps(capIndex byte, ops ...op) []byte {
	out := []byte{capIndex}
	for _, o := range ops {
		var b [fuzzOpLen]byte
		switch o.kind {
		case opWrite:
			b[0] = 0
		case opTruncate:
			b[0] = 1
		case opFallocate:
			b[0] = 2
			for i, m := range fuzzModes {
				if m == o.mode {
					b[5] = byte(i)
				}
			}
		case opSeek:
			b[0] = 4
			b[5] = byte(o.whence - unix.SEEK_DATA)
		case opRead:
			b[0] = 5
		}
		binary.LittleEndian.PutUint16(b[1:], uint16(o.off*2/3))
		binary.LittleEndian.PutUint16(b[3:], uint16(o.n/2))
		out = append(out, b[:]...)
	}
	return out
}

// FuzzStoreVsTmpfs applies a fuzzer-chosen operation sequence to a memfd
// store with a small capacity, which emulates the capacity, and to a file on
// a tmpfs mounted with the same size=, and requires identical results and
// identical files.
func FuzzStoreVsTmpfs(f *testing.F) {
	dirs := make([]string, len(fuzzCapacities))
	for i, c := range fuzzCapacities {
		dirs[i] = testenv.Tmpfs(f, tmpfsOptions(c))
	}
	f.Add(encodeOps(3, W(100, 70000), W(0, 10), punch(4096, 8192), W(70000, 10000)))
	f.Add(encodeOps(3, keep(8*4096, 8*4096), W(0, 8*4096), W(8*4096, 8*4096), W(16*4096, 1), T(16*4096), T(0)))
	f.Add(encodeOps(2, alloc(0, 9*4096), W(0, 9*4096), SeekOp(0, unix.SEEK_DATA), punch(4096, 4096), alloc(0, 10*4096)))
	f.Add(encodeOps(1, W(5000, 3), W(0, 20000), R(0, 20000), T(3), W(8192, 4096), SeekOp(1, unix.SEEK_HOLE)))
	f.Add(encodeOps(0, W(1, 1), W(4096, 1), F(unix.FALLOC_FL_ZERO_RANGE, 0, 10), keep(0, 8192), keep(0, 4096)))
	f.Add(append(encodeOps(3, W(0, 60000)), 0, 0xfe, 0xff, 0, 0xff, 0, 0, 0xff, 0xff, 0x0a, 0, 0x80, 0, 0x10, 0xff, 0x0a, 0, 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		i := int(data[0]) % len(fuzzCapacities)
		ops := decodeOps(data[1:])
		oracle := newOracleIn(t, dirs[i])
		defer closeOracle(t, dirs[i], oracle)
		s, err := New(Options{Kind: Memfd, Capacity: fuzzCapacities[i]})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		d := newDiffer(t, s, oracle)
		d.full = false
		for _, o := range ops {
			d.apply(o)
		}
		d.checkContent(d.prevO.Size)
	})
}
