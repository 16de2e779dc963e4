package procview

import (
	"os"
	"testing"

	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
)

// BenchmarkView: the work of one open of each file (no FUSE): what the
// server spends besides the requests. "self" derives the files for this
// process, wherever it runs; "container" for a process in a container's
// cgroups that the benchmark makes (256 MiB, CPU 0; root), the case a
// cgroupfs server is for.
func BenchmarkView(b *testing.B) {
	v, err := New()
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	b.Run("self", func(b *testing.B) { benchFiles(b, v, os.Getpid()) })
	b.Run("container", func(b *testing.B) {
		sleeper := livecg.Start(b, livecg.Container(b), "sleep", "1000")
		benchFiles(b, v, sleeper.Process.Pid)
	})
}

func benchFiles(b *testing.B, v *View, pid int) {
	for _, c := range []struct {
		name string
		f    func(int) ([]byte, error)
	}{
		{"meminfo", v.Meminfo}, {"cpuinfo", v.Cpuinfo}, {"stat", v.Stat}, {"uptime", v.Uptime},
		{"loadavg", v.Loadavg}, {"diskstats", v.Diskstats}, {"swaps", v.Swaps}, {"slabinfo", v.Slabinfo}, {"online", v.Online},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if _, err := c.f(pid); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
