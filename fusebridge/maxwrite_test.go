package fusebridge_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// sink is a write-only handler that keeps what it is given and the largest
// piece one WRITE request brought.
type sink struct {
	mu      sync.Mutex
	data    []byte
	largest int
}

func (s *sink) Write(_ context.Context, _ *handler.OpenFile, src []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if end := int(off) + len(src); end > len(s.data) {
		s.data = append(s.data, make([]byte, end-len(s.data))...)
	}
	copy(s.data[off:], src)
	s.largest = max(s.largest, len(src))
	return len(src), nil
}

// TestMaxWrite: Options.MaxWrite is the largest piece of a write(2) one
// request brings (the default, 1 MiB, takes a 1 MiB write whole), and a
// write larger than it arrives whole all the same, in pieces.
func TestMaxWrite(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	for _, tc := range []struct {
		name     string
		maxWrite int
		want     int
	}{
		{"default", 0, fusebridge.DefaultMaxWrite},
		{"128KiB", 128 << 10, 128 << 10},
		{"rounded to pages", 5000, 8192},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := mount(t, fusebridge.Options{MaxWrite: tc.maxWrite})
			s := &sink{}
			if _, err := srv.Create("sink", 0o200, s); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(filepath.Join(srv.Mountpoint(), "sink"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := f.Write(payload); err != nil || n != len(payload) {
				t.Fatalf("write: %d, %v", n, err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if !bytes.Equal(s.data, payload) {
				t.Errorf("the handler got %d bytes, not the %d written", len(s.data), len(payload))
			}
			if s.largest != tc.want {
				t.Errorf("largest piece per request %d, want %d", s.largest, tc.want)
			}
		})
	}
}
