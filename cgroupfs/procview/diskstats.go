package procview

import (
	"bytes"
	"fmt"
	"strconv"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
)

// Diskstats derives the /proc/diskstats that a process of a cgroup should
// see from the host's and the cgroup's I/O per device, as LXCFS does: a
// line for each of the host's devices on which the cgroup has done I/O (in
// the host's order), with the cgroup's figures. Requests and their bytes
// (as 512-byte sectors) come from every hierarchy; merges and times only
// from v1 with the CFQ or BFQ scheduler; requests in flight and the
// weighted time are 0, as no cgroup accounts them. The line has the
// kernel's layout ("%4d %7d %s" and the counters) with as many counters as
// the host's line.
func Diskstats(host []byte, io map[cgroup.Dev]cgroup.IOStat) []byte {
	var out []byte
	for _, line := range bytes.Split(host, []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) < 3+11 {
			continue
		}
		major, err1 := strconv.ParseUint(string(f[0]), 10, 32)
		minor, err2 := strconv.ParseUint(string(f[1]), 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		s, ok := io[cgroup.Dev{Major: uint32(major), Minor: uint32(minor)}]
		if !ok || s == (cgroup.IOStat{}) {
			continue
		}
		ms := func(d time.Duration) uint64 { return uint64(max(0, d/time.Millisecond)) }
		vals := []uint64{
			s.Reads, s.ReadMerges, s.ReadBytes / 512, ms(s.ReadTime),
			s.Writes, s.WriteMerges, s.WrittenBytes / 512, ms(s.WriteTime),
			0, ms(s.TotalTime), 0,
			s.Discards, 0, s.Discarded / 512, ms(s.DiscardTime),
			0, 0, // flushes and their time
		}
		out = fmt.Appendf(out, "%4d %7d %s", major, minor, f[2])
		for _, v := range vals[:min(len(vals), len(f)-3)] {
			out = fmt.Appendf(out, " %d", v)
		}
		out = append(out, '\n')
	}
	return out
}
