package cgroup

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Dev is a block device number.
type Dev struct{ Major, Minor uint32 }

// IOStat is what a cgroup has done on one block device: the counters of
// /proc/diskstats that cgroups account. A counter the hierarchy does not
// keep is 0.
type IOStat struct {
	Reads, Writes, Discards            uint64 // requests completed
	ReadMerges, WriteMerges            uint64 // requests merged (v1 with CFQ/BFQ only)
	ReadBytes, WrittenBytes, Discarded uint64
	ReadTime, WriteTime, DiscardTime   time.Duration // service + wait (v1 with CFQ/BFQ only)
	TotalTime                          time.Duration // service time of all requests (ditto)
}

// blkioFiles are v1's blkio files, by the IOStat fields they feed: those
// of the CFQ scheduler (kernels before 5.0) or of BFQ (blkio.bfq.*), as
// LXCFS reads them. The blkio.throttle.* counters are not used: kernels
// since 5.x count there only the I/O of devices that have a throttle rule,
// so they are 0 for a cgroup that is not throttled however much it reads.
var blkioFiles = []struct {
	names []string
	sum   bool // every file there is added (service + wait time)
	set   func(s *IOStat, op string, n uint64)
}{
	{[]string{"blkio.io_serviced_recursive", "blkio.bfq.io_serviced_recursive"}, false, func(s *IOStat, op string, n uint64) {
		set(pick(op, &s.Reads, &s.Writes, &s.Discards), n)
	}},
	{[]string{"blkio.io_service_bytes_recursive", "blkio.bfq.io_service_bytes_recursive"}, false, func(s *IOStat, op string, n uint64) {
		set(pick(op, &s.ReadBytes, &s.WrittenBytes, &s.Discarded), n)
	}},
	{[]string{"blkio.io_merged_recursive", "blkio.bfq.io_merged_recursive"}, false, func(s *IOStat, op string, n uint64) {
		set(pick(op, &s.ReadMerges, &s.WriteMerges, nil), n)
	}},
	{[]string{"blkio.io_service_time_recursive", "blkio.bfq.io_service_time_recursive", "blkio.io_wait_time_recursive", "blkio.bfq.io_wait_time_recursive"}, true, func(s *IOStat, op string, n uint64) {
		if op == "Total" {
			s.TotalTime += time.Duration(min(n, 1<<62))
		} else if t := pick(op, &s.ReadTime, &s.WriteTime, &s.DiscardTime); t != nil {
			*t += time.Duration(min(n, 1<<62))
		}
	}},
}

// pick returns the one of read, write and discard that a blkio line's
// operation names; nil for the others (Sync, Async, Total).
func pick[T any](op string, read, write, discard *T) *T {
	switch op {
	case "Read":
		return read
	case "Write":
		return write
	case "Discard":
		return discard
	}
	return nil
}

func set(c *uint64, n uint64) {
	if c != nil {
		*c = n
	}
}

// IO reads the cgroup's block I/O per device: v1 blkio's CFQ or BFQ
// counters, v2 io.stat. ok is false when no io or blkio controller covers
// the process, or v1 has no scheduler counters (the caller then shows the
// host's figures, as LXCFS does).
func (g *Group) IO() (map[Dev]IOStat, bool, error) {
	sc := getScratch()
	defer sc.put()
	if p, ok := g.placeOf("blkio"); ok && !p.v2 {
		// A v1 hierarchy has the same files in every cgroup, its root
		// included: without the scheduler's counters there, no cgroup has
		// them, and looking for each in every ancestor would cost a dozen
		// failed opens per read.
		if !g.h.hasSchedCounters(p.mount.Dir) {
			return nil, false, nil
		}
		stats := map[Dev]IOStat{}
		found := false
		for k, f := range blkioFiles {
			for _, name := range f.names {
				data, dir, ok, err := p.readUp(name, sc)
				if err != nil {
					return nil, false, err
				}
				if !ok {
					continue
				}
				if err := ParseBlkio(data, func(d Dev, op string, n uint64) {
					s := stats[d]
					f.set(&s, op, n)
					stats[d] = s
				}); err != nil {
					return nil, false, fmt.Errorf("%s/%s: %w", dir, name, err)
				}
				found = found || k == 0
				if !f.sum {
					break // CFQ's file, else BFQ's
				}
			}
		}
		return stats, found, nil
	}
	p, ok := g.placeOf("io")
	if !ok || !p.v2 {
		return nil, false, nil
	}
	data, dir, ok, err := p.readUp("io.stat", sc)
	if err != nil || !ok {
		return nil, false, err
	}
	stats, err := ParseIOStat(data)
	if err != nil {
		return nil, false, fmt.Errorf("%s/io.stat: %w", dir, err)
	}
	return stats, true, nil
}

// ParseBlkio parses a v1 blkio file ("MAJ:MIN Op N" lines and a final
// "Total N"), calling each for every device line. The Total line is
// skipped; the per-device "Total" op is passed on.
func ParseBlkio(data []byte, each func(d Dev, op string, n uint64)) error {
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || (len(f) == 2 && f[0] == "Total") {
			continue
		}
		if len(f) != 3 {
			return fmt.Errorf("%w: line %q", errMalformed, line)
		}
		d, err := parseDev(f[0])
		n, err2 := strconv.ParseUint(f[2], 10, 64)
		if err != nil || err2 != nil {
			return fmt.Errorf("%w: line %q", errMalformed, line)
		}
		each(d, f[1], n)
	}
	return nil
}

// ParseIOStat parses v2's io.stat: "MAJ:MIN key=value ..." per device.
// Unknown keys (the cost model's, a newer kernel's) are skipped.
func ParseIOStat(data []byte) (map[Dev]IOStat, error) {
	stats := map[Dev]IOStat{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		d, err := parseDev(f[0])
		if err != nil {
			return nil, fmt.Errorf("%w: line %q", errMalformed, line)
		}
		s := stats[d]
		for _, kv := range f[1:] {
			k, v, ok := strings.Cut(kv, "=")
			n, err := strconv.ParseUint(v, 10, 64)
			if !ok || err != nil {
				continue // e.g. cost.vrate=123.45 where io.cost is on
			}
			switch k {
			case "rbytes":
				s.ReadBytes = n
			case "wbytes":
				s.WrittenBytes = n
			case "dbytes":
				s.Discarded = n
			case "rios":
				s.Reads = n
			case "wios":
				s.Writes = n
			case "dios":
				s.Discards = n
			}
		}
		stats[d] = s
	}
	return stats, nil
}

// hasSchedCounters reports whether the v1 blkio hierarchy at dir has the
// CFQ or BFQ scheduler's counters (in its root, so in every cgroup). The
// answer is kept for schedCheckFor: the counters come and go only with the
// scheduler (BFQ's module loaded or unloaded), and the check costs two
// stat(2) calls, as much as the rest of a diskstats that has none.
func (h *Hierarchies) hasSchedCounters(dir string) bool {
	h.mu.Lock()
	c, ok := h.sched[dir]
	h.mu.Unlock()
	if ok && time.Since(c.at) < schedCheckFor {
		return c.has
	}
	c = schedCheck{at: time.Now()}
	c.has = exists(filepath.Join(dir, blkioFiles[0].names[0])) || exists(filepath.Join(dir, blkioFiles[0].names[1]))
	h.mu.Lock()
	if h.sched == nil {
		h.sched = map[string]schedCheck{}
	}
	h.sched[dir] = c
	h.mu.Unlock()
	return c.has
}

// schedCheckFor is how long hasSchedCounters keeps its answer.
const schedCheckFor = time.Second

type schedCheck struct {
	has bool
	at  time.Time
}

func exists(file string) bool {
	_, err := os.Stat(file)
	return err == nil
}

func parseDev(s string) (Dev, error) {
	a, b, ok := strings.Cut(s, ":")
	ma, err1 := strconv.ParseUint(a, 10, 32)
	mi, err2 := strconv.ParseUint(b, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return Dev{}, errMalformed
	}
	return Dev{uint32(ma), uint32(mi)}, nil
}
