//go:build cgroupfsprof

package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"syscall"
)

// Profiles of the server, for the benchmarks only: a build with the
// cgroupfsprof tag (internal/cgroupfstest makes one for
// -cgroupfs.profile) and CGROUPFS_PROFILE_DIR set profiles the CPU from
// the start; at the Nth SIGUSR1 it writes DIR/cpu-N.pprof (the CPU since
// the last), DIR/heap-N.pprof (after a GC) and DIR/memstats-N.txt (the
// runtime's figures, in KiB), and profiles on.
func init() {
	dir := os.Getenv("CGROUPFS_PROFILE_DIR")
	if dir == "" {
		return
	}
	// Every 4 KiB allocated is sampled, not every 512 KiB: the figures
	// per cgroup are tens of KB, which the default's samples would miss.
	runtime.MemProfileRate = 4 << 10
	n := 1
	cpu, err := os.Create(filepath.Join(dir, fmt.Sprintf("cpu-%d.pprof", n)))
	if err != nil || pprof.StartCPUProfile(cpu) != nil {
		fmt.Fprintln(os.Stderr, "cgroupfs: cannot profile:", err)
		return
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	go func() {
		for range sig {
			pprof.StopCPUProfile()
			cpu.Close()
			runtime.GC()
			heap := filepath.Join(dir, fmt.Sprintf("heap-%d.pprof", n))
			if f, err := os.Create(heap + ".tmp"); err == nil {
				pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
				os.Rename(heap+".tmp", heap)
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			os.WriteFile(filepath.Join(dir, fmt.Sprintf("memstats-%d.txt", n)), fmt.Appendf(nil,
				"HeapInuse %d\nHeapIdle %d\nHeapReleased %d\nStackInuse %d\nGCSys %d\nOtherSys %d\nSys %d\nNumGC %d\nNumGoroutine %d\n",
				ms.HeapInuse>>10, ms.HeapIdle>>10, ms.HeapReleased>>10, ms.StackInuse>>10, ms.GCSys>>10, ms.OtherSys>>10, ms.Sys>>10, ms.NumGC, runtime.NumGoroutine()), 0o644)
			n++
			if cpu, err = os.Create(filepath.Join(dir, fmt.Sprintf("cpu-%d.pprof", n))); err == nil {
				pprof.StartCPUProfile(cpu)
			}
		}
	}()
}
