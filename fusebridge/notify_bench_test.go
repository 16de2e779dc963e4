package fusebridge_test

import (
	"path/filepath"
	"sort"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/testenv"
)

// BenchmarkNotify measures Entry.Notify on each kind of connection: the
// latency from the call to the watcher's IN_MODIFY (median and p99, in µs),
// what the call itself costs its caller (ns), and the CPU time the whole
// process spends per notification (the bridge's work, the kernel's
// SETATTR round trip and the watcher's read: µs).
func BenchmarkNotify(b *testing.B) {
	for _, m := range notifyModes {
		b.Run(m.name, func(b *testing.B) {
			testenv.RequireFUSE(b)
			srv, err := fusebridge.Mount(filepath.Join(b.TempDir(), "mnt"), m.opts)
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Unmount()
			e, err := srv.Create("gen", 0o444, text("x\n"))
			if err != nil {
				b.Fatal(err)
			}
			p := filepath.Join(srv.Mountpoint(), "gen")
			ino, err := unix.InotifyInit1(unix.IN_CLOEXEC)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(ino)
			wd, err := unix.InotifyAddWatch(ino, p, unix.IN_MODIFY)
			if err != nil {
				b.Fatal(err)
			}
			events := make(chan time.Time, 1)
			go func() {
				buf := make([]byte, 4096)
				for {
					n, err := unix.Read(ino, buf)
					if err != nil {
						return
					}
					for off := 0; off+unix.SizeofInotifyEvent <= n; {
						ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
						off += unix.SizeofInotifyEvent + int(ev.Len)
						if ev.Mask&unix.IN_IGNORED != 0 {
							return
						}
						events <- time.Now()
					}
				}
			}()
			lat := make([]time.Duration, 0, b.N)
			var call time.Duration
			var ru0, ru1 unix.Rusage
			unix.Getrusage(unix.RUSAGE_SELF, &ru0)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				e.Notify()
				call += time.Since(t0)
				select {
				case t1 := <-events:
					lat = append(lat, t1.Sub(t0))
				case <-time.After(10 * time.Second):
					b.Fatal("no event within 10s of Notify")
				}
			}
			b.StopTimer()
			unix.Getrusage(unix.RUSAGE_SELF, &ru1)
			unix.InotifyRmWatch(ino, uint32(wd)) // IN_IGNORED ends the reader
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
			cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) / time.Duration(b.N)
			b.ReportMetric(us(lat[len(lat)/2]), "µs-median")
			b.ReportMetric(us(lat[len(lat)*99/100]), "µs-p99")
			b.ReportMetric(float64(call)/float64(b.N), "ns-call")
			b.ReportMetric(us(cpu), "µs-cpu/notify")
		})
	}
}
