package procview

import (
	"os"
	"testing"
)

// BenchmarkView: the work of one open of each file for this process, on
// the running system (no FUSE): what the server spends besides the
// requests.
func BenchmarkView(b *testing.B) {
	v, err := New()
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	pid := os.Getpid()
	for _, c := range []struct {
		name string
		f    func(int) ([]byte, error)
	}{
		{"meminfo", v.Meminfo}, {"cpuinfo", v.Cpuinfo}, {"stat", v.Stat}, {"uptime", v.Uptime},
		{"loadavg", v.Loadavg}, {"diskstats", v.Diskstats}, {"swaps", v.Swaps}, {"slabinfo", v.Slabinfo}, {"online", v.Online},
	} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				if _, err := c.f(pid); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
