package filecheck

import (
	"bytes"
	"strings"
	"testing"
)

// The verdict of the append checks must notice lost, doubled and torn
// records, or those checks would pass a file that loses appends.
func TestRecordsVerdict(t *testing.T) {
	var recs [][]byte
	for proc := 0; proc < 2; proc++ {
		for seq := 0; seq < 10; seq++ {
			recs = append(recs, record(proc, seq))
		}
	}
	join := func(rs ...[]byte) []byte { return bytes.Join(rs, nil) }
	all := join(recs...)
	if v := recordsVerdict(all, 2, 10); !strings.Contains(v, "all 20 records present once and intact") {
		t.Errorf("intact: %s", v)
	}
	// Interleaved in another order is fine too.
	if v := recordsVerdict(join(append(append([][]byte{}, recs[10:]...), recs[:10]...)...), 2, 10); !strings.Contains(v, "intact") {
		t.Errorf("reordered: %s", v)
	}
	if v := recordsVerdict(join(recs[1:]...), 2, 10); !strings.Contains(v, "missing records [0:0]") {
		t.Errorf("lost record: %s", v)
	}
	if v := recordsVerdict(join(append([][]byte{recs[3]}, recs...)...), 2, 10); !strings.Contains(v, "duplicated [0:3×2]") {
		t.Errorf("doubled record: %s", v)
	}
	torn := append([]byte{}, all...)
	off := len(recs[0]) + 5
	copy(torn[off:], record(1, 9)) // an append that overwrote another's bytes
	v := recordsVerdict(torn, 2, 10)
	if !strings.Contains(v, "not whole records") || !strings.Contains(v, "missing records") {
		t.Errorf("torn record: %s", v)
	}
	if v := recordsVerdict(all[:len(all)-1], 2, 10); !strings.Contains(v, "not whole records") {
		t.Errorf("short last record: %s", v)
	}
}

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string
	}{
		{nil, `""`},
		{[]byte("abc"), `"abc"`},
		{append(make([]byte, 100), 'X'), `100×'\x00' "X"`},
		{append([]byte("ab"), bytes.Repeat([]byte{'z'}, 8)...), `"ab" 8×'z'`},
	} {
		if got := summarize(tc.in, 60); got != tc.want {
			t.Errorf("summarize(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// Every subsequence of a random sequence is valid, and a seed always
// draws the same sequence.
func TestGenOpsDeterministic(t *testing.T) {
	a, b := genOps(42, 500), genOps(42, 500)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("op %d differs between two draws of one seed: %v, %v", i, a[i], b[i])
		}
	}
	kinds := map[string]bool{}
	for _, o := range a {
		kinds[o.kind] = true
	}
	for _, k := range []string{"read", "write", "pread", "pwrite", "lseek", "ftruncate", "fallocate", "open", "mapread", "mapwrite"} {
		if !kinds[k] {
			t.Errorf("500 ops never draw %s", k)
		}
	}
}

// The comparisons of the read-only checks pass content that moved between
// two reads (numbers changed, a column widened) and fail bytes lost,
// doubled or out of place.
func TestReadOnlyShapes(t *testing.T) {
	ref := []byte("MemTotal:       16310740 kB\nMemFree:         9876543 kB\nCached:  1.25 x\n")
	moved := []byte("MemTotal:       16310740 kB\nMemFree:        10000001 kB\nCached:  1.5 x\n")
	mid := len(ref) / 2
	for _, tc := range []struct {
		name string
		sh   shape
		got  []byte
		want bool
	}{
		{"whole, exact", shape{}, ref, true},
		{"whole, moved", shape{}, moved, true},
		{"whole, empty", shape{}, nil, false},
		{"whole, short", shape{}, ref[:len(ref)-3], false},
		{"whole, doubled", shape{}, append(append([]byte{}, ref...), ref...), false},
		{"whole, a word changed", shape{}, bytes.Replace(moved, []byte("Free"), []byte("Fre!"), 1), false},
		{"tail, exact", shape{from: mid}, ref[mid:], true},
		{"tail, moved", shape{from: mid}, moved[mid:], true},
		{"tail, cut in a number", shape{from: 50}, moved[50:], true},
		{"tail, nothing", shape{from: mid}, nil, false},
		{"tail, from 0", shape{from: mid}, ref, false},
		{"tail, its end lost", shape{from: mid}, ref[mid : len(ref)-4], false},
		{"tail, from the end", shape{from: len(ref)}, nil, true},
		{"mapped, one page", shape{mapped: true}, append(append([]byte{}, ref...), make([]byte, 4096-len(ref))...), true},
		{"mapped, moved", shape{mapped: true}, append(append([]byte{}, moved...), make([]byte, 100)...), true},
		{"mapped, cut by a fault", shape{mapped: true}, moved[:40], true},
		{"mapped, other bytes", shape{mapped: true}, bytes.Repeat([]byte("x"), 4096), false},
	} {
		if got := tc.sh.match(tc.got, ref); got != tc.want {
			t.Errorf("%s: match %q against %q = %v, want %v", tc.name, tc.got, tc.sh.expect(tc.got, ref), got, tc.want)
		}
	}
}
