package cgroup_test

import (
	"fmt"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
)

func ExampleParseProcCgroup() {
	m, err := cgroup.ParseProcCgroup([]byte("4:memory:/ctr\n3:cpuset:/\n0::/\n"))
	if err != nil {
		panic(err)
	}
	fmt.Println(m.V1["memory"], m.V1["cpuset"], m.Unified)
	// Output: /ctr / /
}

func ExampleParseCPUList() {
	set, err := cgroup.ParseCPUList("0-2,5,3\n")
	if err != nil {
		panic(err)
	}
	fmt.Println(len(set), set.Contains(4), set)
	// Output: 5 false 0-3,5
}

func ExampleParseLimit() {
	for _, s := range []string{"268435456\n", "max\n", "9223372036854771712\n"} {
		n, _ := cgroup.ParseLimit([]byte(s))
		fmt.Println(n == cgroup.NoLimit, n>>20)
	}
	// Output:
	// false 256
	// true 17592186044415
	// true 17592186044415
}
