package handler

import (
	"context"
	"sync/atomic"
	"testing"
)

// The snapshot handlers behave as seq_file: one snapshot per descriptor
// for a sequential reader, a new one when the descriptor goes back to
// offset 0 after reading, and the same one throughout where the kernel
// caches the content (OpenFile.Caching, a no-open connection).
func TestSnapshotRereadAtZero(t *testing.T) {
	ctx := context.Background()
	var gen atomic.Int64
	text := func() string { return []string{"zero\n", "one\n", "two\n"}[gen.Load()%3] }
	knob := NewEnum("zero", "zero", "one", "two")
	value := NewValue("zero\n")
	set := func(i int64) {
		gen.Store(i)
		if err := knob.Set(text()[:len(text())-1]); err != nil {
			t.Fatal(err)
		}
		value.val = []byte(text())
	}
	handlers := map[string]interface {
		Opener
		Reader
	}{
		"Generated":          Generated(func(context.Context) ([]byte, error) { return []byte(text()), nil }),
		"PerCallerGenerated": PerCallerGenerated(func(context.Context) ([]byte, error) { return []byte(text()), nil }),
		"Value":              value,
	}
	for name, h := range handlers {
		for _, caching := range []bool{false, true} {
			set(0)
			f := &OpenFile{}
			if err := h.Open(ctx, f); err != nil {
				t.Fatal(err)
			}
			f.Caching = caching
			read := func(off int64) string {
				buf := make([]byte, 2)
				n, err := h.Read(ctx, f, buf, off)
				if err != nil {
					t.Fatalf("%s: read at %d: %v", name, off, err)
				}
				return string(buf[:n])
			}
			// Read at 0 first: no regeneration for the first read.
			set(1)
			if got := read(0); got != "ze" {
				t.Errorf("%s caching=%v: first read %q, want the snapshot of open (ze)", name, caching, got)
			}
			if got := read(2); got != "ro" {
				t.Errorf("%s caching=%v: sequential read %q, want the same snapshot (ro)", name, caching, got)
			}
			set(2)
			want := "tw"
			if caching {
				want = "ze"
			}
			if got := read(0); got != want {
				t.Errorf("%s caching=%v: re-read at 0 after a change: %q, want %q", name, caching, got, want)
			}
		}
	}
	// A knob: re-read at 0 shows the value set since open.
	set(0)
	f := &OpenFile{}
	knob.Open(ctx, f)
	buf := make([]byte, 64)
	n, _ := knob.Read(ctx, f, buf, 0)
	if string(buf[:n]) != "[zero] one two\n" {
		t.Fatalf("knob first read %q", buf[:n])
	}
	set(1)
	n, _ = knob.Read(ctx, f, buf, 0)
	if string(buf[:n]) != "zero [one] two\n" {
		t.Errorf("knob re-read at 0 after Set: %q, want %q", buf[:n], "zero [one] two\n")
	}
}

// A reopened descriptor (a restarted server opening again what its
// predecessor had open) takes no snapshot at open, in the server's name,
// but at its first read, whatever the offset, for the reader.
func TestSnapshotReopened(t *testing.T) {
	type who struct{}
	gen := func(ctx context.Context) ([]byte, error) {
		name, _ := ctx.Value(who{}).(string)
		return []byte("for " + name + "\n"), nil
	}
	for name, h := range map[string]interface {
		Opener
		Reader
	}{"Generated": Generated(gen), "PerCallerGenerated": PerCallerGenerated(gen)} {
		for _, off := range []int64{0, 4} {
			f := &OpenFile{Reopened: true}
			if err := h.Open(context.WithValue(context.Background(), who{}, "server"), f); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64)
			n, err := h.Read(context.WithValue(context.Background(), who{}, "reader"), f, buf, off)
			if want := "for reader\n"[off:]; err != nil || string(buf[:n]) != want {
				t.Errorf("%s: first read at %d of a reopened descriptor: %q, %v; want %q", name, off, buf[:n], err, want)
			}
		}
	}
}
