package procview_test

import (
	"fmt"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
	"github.com/ramproc/ramproc/cgroupfs/procview"
)

func ExampleMeminfo() {
	host := []byte("MemTotal:       24683584 kB\nMemFree:        24357780 kB\nHugePages_Total:       0\n")
	m := cgroup.Memory{Limit: 256 << 20, Usage: 56 << 20}
	fmt.Print(string(procview.Meminfo(host, m)))
	// Output:
	// MemTotal:         262144 kB
	// MemFree:          204800 kB
	// HugePages_Total:       0
}

func ExampleCpuinfo() {
	host := []byte("processor\t: 0\nmodel name\t: A\n\nprocessor\t: 1\nmodel name\t: A\n\n")
	set, _ := cgroup.ParseCPUList("1")
	fmt.Print(string(procview.Cpuinfo(host, set)))
	// Output:
	// processor	: 1
	// model name	: A
}

func ExampleUptime() {
	fmt.Print(string(procview.Uptime(90*time.Second+250*time.Millisecond, 170*time.Second)))
	// Output: 90.25 170.00
}
