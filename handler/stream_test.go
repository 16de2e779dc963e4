package handler_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ramproc/ramproc/handler"
)

// table is a stream of n records of varying length (1 to 300 bytes, each
// ending in "\n"), and the same content generated whole.
func table(n int) (handler.Stream, []byte) {
	rec := func(i int) []byte {
		return fmt.Appendf(nil, "%d %s\n", i, strings.Repeat("x", (i*37)%290))
	}
	var whole []byte
	for i := 0; i < n; i++ {
		whole = append(whole, rec(i)...)
	}
	return func(ctx context.Context, w *handler.RecordWriter) error {
		for i := 0; i < n; i++ {
			if _, err := w.Write(rec(i)); err != nil {
				return err
			}
		}
		return nil
	}, whole
}

func openStream(s handler.Stream) *handler.OpenFile {
	f := &handler.OpenFile{Flags: syscall.O_RDONLY}
	if err := s.Open(context.Background(), f); err != nil {
		panic(err)
	}
	return f
}

// readAll reads f sequentially in pieces of size, checking that every
// read ends at a record boundary unless a single record is larger than
// the read.
func readAll(t *testing.T, s handler.Stream, f *handler.OpenFile, size int) []byte {
	t.Helper()
	var out []byte
	buf := make([]byte, size)
	for {
		n, err := s.Read(context.Background(), f, buf, int64(len(out)))
		if err != nil {
			t.Fatalf("read at %d: %v", len(out), err)
		}
		if n == 0 {
			return out
		}
		atStart := len(out) == 0 || out[len(out)-1] == '\n'
		if size >= 300 && (buf[n-1] != '\n' || !atStart) {
			t.Fatalf("read of %d at %d returned %d bytes ending in %q: a torn record", size, len(out), n, buf[n-1])
		}
		out = append(out, buf[:n]...)
	}
}

func TestStreamPieces(t *testing.T) {
	s, whole := table(5000)
	for _, size := range []int{1, 7, 300, 4096, 1 << 20} {
		f := openStream(s)
		got := readAll(t, s, f, size)
		s.Release(context.Background(), f)
		if !bytes.Equal(got, whole) {
			t.Errorf("read in pieces of %d: %d bytes, want the %d generated whole (first difference at %d)", size, len(got), len(whole), firstDiff(got, whole))
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// Reads at other offsets reposition as seq_lseek does: forwards by
// dropping, backwards by generating again; each open has its own position.
func TestStreamSeek(t *testing.T) {
	var generations atomic.Int32
	inner, whole := table(3000)
	s := handler.Stream(func(ctx context.Context, w *handler.RecordWriter) error {
		generations.Add(1)
		return inner(ctx, w)
	})
	f, g := openStream(s), openStream(s)
	buf := make([]byte, 1000)
	var gOff int64
	for _, off := range []int64{0, 5000, 5001, 123456, 10, 0, int64(len(whole)) - 3, int64(len(whole)), int64(len(whole)) + 100} {
		n, err := s.Read(context.Background(), f, buf, off)
		if err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		want := whole[min(off, int64(len(whole))):]
		if n > len(want) || !bytes.Equal(buf[:n], want[:n]) || (n == 0 && len(want) > 0) {
			t.Errorf("read at %d: %q..., want %q...", off, buf[:min(n, 20)], want[:min(len(want), 20)])
		}
		// The other descriptor reads on sequentially, undisturbed.
		m, _ := s.Read(context.Background(), g, buf[:200], gOff)
		if !bytes.Equal(buf[:m], whole[gOff:gOff+int64(m)]) || m == 0 {
			t.Errorf("second descriptor at %d: %q", gOff, buf[:m])
		}
		gOff += int64(m)
	}
	// f went backwards three times (5000+ to 5001, to 10, to 0); g never.
	if gen := generations.Load(); gen != 5 {
		t.Errorf("%d generations; want 4 for the descriptor that seeks back 3 times, 1 for the other", gen)
	}
}

func TestStreamErrorAndStop(t *testing.T) {
	boom := fmt.Errorf("table broke: %w", syscall.ENOMEM)
	var returned atomic.Int32
	s := handler.Stream(func(ctx context.Context, w *handler.RecordWriter) error {
		defer returned.Add(1)
		for i := 0; ; i++ {
			if i == 100 {
				return boom
			}
			if _, err := fmt.Fprintf(w, "%04d\n", i); err != nil {
				if ctx.Err() == nil {
					t.Error("Write failed but ctx is not cancelled")
				}
				return err
			}
		}
	})
	f := openStream(s)
	buf := make([]byte, 100)
	n, err := s.Read(context.Background(), f, buf, 0)
	if err != nil || n != 100 {
		t.Fatalf("first read: %d, %v", n, err)
	}
	off := int64(n)
	for {
		n, err = s.Read(context.Background(), f, buf, off)
		off += int64(n)
		if err != nil || n == 0 {
			break
		}
	}
	if !errors.Is(err, syscall.ENOMEM) || off != 500 || handler.Errno(err) != syscall.ENOMEM {
		t.Errorf("after %d bytes: %v; want the function's ENOMEM after all 500 bytes before it", off, err)
	}
	if _, err := s.Read(context.Background(), f, buf, off); !errors.Is(err, syscall.ENOMEM) {
		t.Errorf("a read after the error: %v, want it again", err)
	}
	s.Release(context.Background(), f)

	// Release of a file whose function is suspended ends the function.
	returned.Store(0)
	f = openStream(s)
	s.Read(context.Background(), f, buf, 0)
	s.Release(context.Background(), f)
	if returned.Load() != 1 {
		t.Errorf("the function did not return at Release")
	}
}

// The caller of open(2) is the caller the function sees.
func TestStreamCaller(t *testing.T) {
	s := handler.Stream(func(ctx context.Context, w *handler.RecordWriter) error {
		c, ok := handler.CallerOf(ctx)
		fmt.Fprintf(w, "%v %d %d\n", ok, c.Uid, c.Tid)
		return nil
	})
	f := &handler.OpenFile{}
	s.Open(fuseCtx(65534, 4242), f)
	buf := make([]byte, 64)
	n, _ := s.Read(context.Background(), f, buf, 0)
	if got := string(buf[:n]); got != "true 65534 4242\n" {
		t.Errorf("the function saw %q", got)
	}
}

// Reading a 256 MiB stream allocates about nothing per read: memory does
// not depend on the content's size.
func TestStreamMemory(t *testing.T) {
	rec := bytes.Repeat([]byte("y"), 99)
	rec = append(rec, '\n')
	const total = 256 << 20
	s := handler.Stream(func(ctx context.Context, w *handler.RecordWriter) error {
		for i := 0; i < total/len(rec); i++ {
			if _, err := w.Write(rec); err != nil {
				return err
			}
		}
		return nil
	})
	f := openStream(s)
	buf := make([]byte, 128<<10)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var off int64
	for {
		n, err := s.Read(context.Background(), f, buf, off)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		off += int64(n)
	}
	runtime.ReadMemStats(&after)
	s.Release(context.Background(), f)
	if off != total/int64(len(rec))*int64(len(rec)) {
		t.Errorf("read %d bytes", off)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
		t.Errorf("reading %d MiB allocated %d bytes; want under 1 MiB", total>>20, got)
	}
}

// fuseCtx is the ctx of a FUSE request made by uid and pid.
func fuseCtx(uid, pid uint32) context.Context {
	return &fuse.Context{Caller: fuse.Caller{Owner: fuse.Owner{Uid: uid}, Pid: pid}}
}

// An interrupted read (the reader got a signal: the kernel sends
// INTERRUPT and the read's ctx is cancelled) cancels the function's ctx,
// fails with EINTR, and the retry at the same offset gets the content.
func TestStreamInterrupt(t *testing.T) {
	var block atomic.Bool
	block.Store(true)
	s := handler.Stream(func(ctx context.Context, w *handler.RecordWriter) error {
		for i := 0; i < 100; i++ {
			if i == 50 && block.Load() {
				<-ctx.Done() // waits for data that never comes
				return ctx.Err()
			}
			if _, err := fmt.Fprintf(w, "%03d\n", i); err != nil {
				return err
			}
		}
		return nil
	})
	f := openStream(s)
	buf := make([]byte, 100)
	// Records 0-24, then 25-49; the third read reaches the wait.
	for off := int64(0); off < 200; off += 100 {
		if n, err := s.Read(context.Background(), f, buf, off); err != nil || n != 100 {
			t.Fatalf("read at %d: %d, %v", off, n, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if n, err := s.Read(ctx, f, buf, 200); !errors.Is(err, syscall.EINTR) || n != 0 {
		t.Fatalf("the interrupted read: %d, %v; want EINTR", n, err)
	}
	block.Store(false)
	n, err := s.Read(context.Background(), f, buf, 200)
	var want []byte
	for i := 50; i < 75; i++ {
		want = fmt.Appendf(want, "%03d\n", i)
	}
	if err != nil || string(buf[:n]) != string(want) {
		t.Errorf("the retry: %q, %v; want %q", buf[:n], err, want)
	}
	s.Release(context.Background(), f)
}
