package handler_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// BenchmarkStreamCat1GiB: `cat` of a 1 GiB Stream through a real mount,
// next to `cat` of a 1 GiB file on a private tmpfs, interleaved in every
// iteration. It reports each one's throughput, their ratio, and how much
// this process's RSS (the server's) grew while the stream was read
// (targets: >= 1 GiB/s, < 16 MiB). The stream's records are 100-byte
// lines, as a /proc table's are.
//
//	go test -run '^$' -bench StreamCat -benchtime 3x ./handler/
func BenchmarkStreamCat1GiB(b *testing.B) {
	const total = 1 << 30
	testenv.RequireFUSE(b)
	srv, err := fusebridge.Mount(filepath.Join(b.TempDir(), "mnt"), fusebridge.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Unmount()
	line := append(bytes.Repeat([]byte("r"), 99), '\n')
	if _, err := srv.Create("table", 0o444, handler.Stream(func(ctx context.Context, w *handler.RecordWriter) error {
		for n := 0; n < total; n += len(line) {
			if _, err := w.Write(line[:min(len(line), total-n)]); err != nil {
				return err
			}
		}
		return nil
	})); err != nil {
		b.Fatal(err)
	}
	stream := filepath.Join(srv.Mountpoint(), "table")

	tmp := testenv.Tmpfs(b, "size=1100m")
	plain := filepath.Join(tmp, "file")
	if out, err := exec.Command("sh", "-c", "head -c 1073741824 /dev/zero | tr '\\0' r > "+plain).CombinedOutput(); err != nil {
		b.Fatalf("filling the tmpfs file: %s %v", out, err)
	}

	cat := func(path string) time.Duration {
		start := time.Now()
		out, err := exec.Command("sh", "-c", "cat "+path+" >/dev/null; echo 1073741824").Output()
		d := time.Since(start)
		if err != nil || string(bytes.TrimSpace(out)) != "1073741824" {
			b.Fatalf("cat %s: %q, %v", path, out, err)
		}
		return d
	}
	// RSS is sampled while the stream is read; the peak over the figure
	// before the first cat is the growth.
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	base := rssOf(b)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if r := rssOf(b); r > peak.Load() {
				peak.Store(r)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	var ts, tt time.Duration
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ts += cat(stream)
		b.StopTimer()
		tt += cat(plain)
		b.StartTimer()
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	gib := float64(b.N) // GiB read from each
	b.ReportMetric(gib/ts.Seconds(), "stream-GiB/s")
	b.ReportMetric(gib/tt.Seconds(), "tmpfs-GiB/s")
	b.ReportMetric(tt.Seconds()/ts.Seconds(), "x-tmpfs")
	b.ReportMetric(float64(peak.Load()-base)/(1<<20), "rss-growth-MiB")
}

// rssOf is this process's resident set from /proc/self/statm, which is
// cheaper to sample than status.
func rssOf(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		b.Fatal(err)
	}
	pages, err := strconv.ParseInt(string(bytes.Fields(data)[1]), 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}
