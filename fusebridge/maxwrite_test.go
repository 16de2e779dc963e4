package fusebridge_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
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

// writeOnce writes data to path with one write(2).
func writeOnce(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := f.Write(data); err != nil || n != len(data) {
		t.Fatalf("write: %d, %v", n, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
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
			writeOnce(t, filepath.Join(srv.Mountpoint(), "sink"), payload)
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

// bigBounded is a bounded file of fixed content that records the largest
// READ it is asked for, and takes writes (dropping them), recording the
// largest piece.
type bigBounded struct {
	data    []byte
	mu      sync.Mutex
	largest int
	written int
}

func (b *bigBounded) Write(_ context.Context, _ *handler.OpenFile, src []byte, _ int64) (int, error) {
	b.mu.Lock()
	b.written = max(b.written, len(src))
	b.mu.Unlock()
	return len(src), nil
}

func (b *bigBounded) FreshFor() time.Duration              { return time.Hour }
func (b *bigBounded) SnapshotSize(*handler.OpenFile) int64 { return int64(len(b.data)) }
func (b *bigBounded) Read(_ context.Context, _ *handler.OpenFile, dst []byte, off int64) (int, error) {
	b.mu.Lock()
	b.largest = max(b.largest, len(dst))
	b.mu.Unlock()
	if off >= int64(len(b.data)) {
		return 0, nil
	}
	return copy(dst, b.data[off:]), nil
}

// TestMaxWriteBounded: the no-open connection that serves files with a
// freshness bound takes requests of at most 128 KiB, or MaxWrite if that
// is less (its request buffers are that size): a 1 MiB write(2) reaches
// the handler in pieces of that size, and a file larger than that is read
// whole all the same.
func TestMaxWriteBounded(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	for _, tc := range []struct {
		name     string
		maxWrite int
		want     int
	}{
		{"default", 0, 128 << 10},
		{"64KiB", 64 << 10, 64 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := mount(t, fusebridge.Options{MaxWrite: tc.maxWrite})
			if !srv.HandlersNoOpen() {
				testenv.Missing(t, "bounded files are served by a no-open connection only on a mount made by root")
			}
			b := &bigBounded{data: payload}
			if _, err := srv.Create("big", 0o644, b); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(srv.Mountpoint(), "big")
			writeOnce(t, p, payload)
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("read %d bytes, not the %d of the file", len(got), len(payload))
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.largest == 0 || b.largest > tc.want {
				t.Errorf("largest READ %d bytes, want at most %d", b.largest, tc.want)
			}
			if b.written != tc.want {
				t.Errorf("largest WRITE %d bytes, want %d", b.written, tc.want)
			}
		})
	}
}
