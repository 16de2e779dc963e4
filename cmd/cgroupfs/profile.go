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
// the last) and DIR/heap-N.pprof (after a GC), and profiles on.
func init() {
	dir := os.Getenv("CGROUPFS_PROFILE_DIR")
	if dir == "" {
		return
	}
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
			n++
			if cpu, err = os.Create(filepath.Join(dir, fmt.Sprintf("cpu-%d.pprof", n))); err == nil {
				pprof.StartCPUProfile(cpu)
			}
		}
	}()
}
