// Package loadavg keeps a load average per cgroup, as LXCFS's loadavg
// daemon does: every Interval (5 s, the kernel's LOAD_FREQ) it counts the
// tasks of each cgroup (and of its descendants) that are runnable or in
// uninterruptible sleep, and folds the count into three exponential
// averages with the kernel's fixed-point factors for 1, 5 and 15 minutes.
//
// Only the cgroups that have been read are sampled: a cgroup is added at
// its first Read, whose answer is then all zeros (as LXCFS's first read),
// and dropped once it has no process or is removed. The sampling goroutine
// runs only while there is a cgroup to sample.
package loadavg

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/cgroup"
)

// The kernel's fixed-point load arithmetic (include/linux/sched/loadavg.h).
const (
	fshift = 11
	fixed1 = 1 << fshift
	exp1   = 1884 // 1/exp(5sec/1min) as fixed-point
	exp5   = 2014 // 1/exp(5sec/5min)
	exp15  = 2037 // 1/exp(5sec/15min)
)

// Load is one cgroup's load figures.
type Load struct {
	// Avg holds the 1, 5 and 15 minute averages in fixed point (11 bits
	// of fraction), as the kernel's avenrun.
	Avg [3]uint64
	// Running is the number of runnable or uninterruptible tasks at the
	// last sample, Total the number of tasks, Last the highest task id.
	Running, Total, Last int
}

// Format formats l as /proc/loadavg does: "0.52 0.58 0.59 1/467 3141\n".
// With strconv, not fmt: it is made at every open of a reader's loadavg,
// whose whole content costs a few microseconds, and fmt's five calls were
// a fifth of them.
func Format(l Load) []byte {
	b := make([]byte, 0, 64)
	for _, a := range l.Avg {
		a += fixed1 / 200 // round to two decimals, as the kernel does
		b = strconv.AppendUint(b, a>>fshift, 10)
		frac := ((a & (fixed1 - 1)) * 100) >> fshift // 0..99
		b = append(b, '.', byte('0'+frac/10), byte('0'+frac%10), ' ')
	}
	b = strconv.AppendInt(b, int64(l.Running), 10)
	b = append(b, '/')
	b = strconv.AppendInt(b, int64(l.Total), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(l.Last), 10)
	return append(b, '\n')
}

// calc folds active tasks into load with factor exp, as the kernel's
// calc_load.
func calc(load, exp, active uint64) uint64 {
	active *= fixed1
	n := load*exp + active*(fixed1-exp)
	if active >= load {
		n += fixed1 - 1
	}
	return n / fixed1
}

// Sampler keeps the load of the cgroups that are read.
type Sampler struct {
	// Proc is procfs ("/proc"), where the tasks' states are read.
	Proc string
	// Interval is the time between samples (5 s when zero).
	Interval time.Duration

	mu      sync.Mutex
	groups  map[string]*Load // by cgroup directory
	running bool
	stop    chan struct{}
}

// Read returns the load of the cgroup whose directory is dir, and starts
// sampling it if it is not yet sampled (its load is then zero, with one
// task: the reader, whose id is pid).
func (s *Sampler) Read(dir string, pid int) Load {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.groups[dir]; ok {
		return *l
	}
	if s.groups == nil {
		s.groups = map[string]*Load{}
	}
	l := &Load{Total: 1, Last: pid}
	s.groups[dir] = l
	if !s.running && s.stop == nil {
		s.running = true
		go s.loop()
	}
	return *l
}

// Loads returns the figures of every cgroup sampled, by directory: what a
// server hands to the process that replaces it at a restart (Restore), so
// that the averages go on from where they were rather than from zero, and
// a restart leaves no trace in proc/loadavg.
func (s *Sampler) Loads() map[string]Load {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Load, len(s.groups))
	for d, l := range s.groups {
		out[d] = *l
	}
	return out
}

// Restore samples the cgroups of loads (a predecessor's Loads) from their
// figures on. A cgroup already sampled keeps its own; one that is gone is
// dropped at the next sample, as any other.
func (s *Sampler) Restore(loads map[string]Load) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.groups == nil {
		s.groups = map[string]*Load{}
	}
	for d, l := range loads {
		if _, ok := s.groups[d]; !ok {
			s.groups[d] = &l
		}
	}
	if len(s.groups) > 0 && !s.running && s.stop == nil {
		s.running = true
		go s.loop()
	}
}

// Close stops the sampling.
func (s *Sampler) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop == nil {
		s.stop = make(chan struct{})
		close(s.stop)
	}
}

// loop samples every Interval until Close, or until no cgroup is left.
func (s *Sampler) loop() {
	every := s.Interval
	if every <= 0 {
		every = 5 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s.mu.Lock()
		stop := s.stop
		s.mu.Unlock()
		if stop != nil {
			return
		}
		select {
		case <-t.C:
		case <-stop:
			return
		}
		if s.Sample() == 0 {
			s.mu.Lock()
			if len(s.groups) == 0 {
				s.running = false
				s.mu.Unlock()
				return
			}
			s.mu.Unlock()
		}
	}
}

// Sample takes one sample of every cgroup that is sampled and returns how
// many are left: a cgroup with no process, or removed, is dropped.
func (s *Sampler) Sample() int {
	s.mu.Lock()
	dirs := make([]string, 0, len(s.groups))
	for d := range s.groups {
		dirs = append(dirs, d)
	}
	s.mu.Unlock()
	for _, d := range dirs {
		running, total, last, err := s.count(d)
		s.mu.Lock()
		l, ok := s.groups[d]
		switch {
		case !ok:
		case err != nil || total == 0:
			delete(s.groups, d)
		default:
			l.Avg[0] = calc(l.Avg[0], exp1, uint64(running))
			l.Avg[1] = calc(l.Avg[1], exp5, uint64(running))
			l.Avg[2] = calc(l.Avg[2], exp15, uint64(running))
			l.Running, l.Total, l.Last = running, total, last
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.groups)
}

// count counts the tasks of the cgroup at dir and its descendants: those
// running or in uninterruptible sleep (state R or D), all, and the highest
// task id.
func (s *Sampler) count(dir string) (running, total, last int, err error) {
	pids, err := cgroup.MembersOf(dir)
	if err != nil {
		return 0, 0, 0, err
	}
	proc := s.Proc
	if proc == "" {
		proc = "/proc"
	}
	for _, pid := range pids {
		taskDir := filepath.Join(proc, strconv.Itoa(pid), "task")
		tasks, err := os.ReadDir(taskDir)
		if err != nil {
			continue // exited since the listing
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			data, err := os.ReadFile(filepath.Join(taskDir, t.Name(), "stat"))
			if err != nil {
				continue
			}
			total++
			last = max(last, tid)
			if st, ok := State(data); ok && (st == 'R' || st == 'D') {
				running++
			}
		}
	}
	return running, total, last, nil
}

// State returns the state letter of a /proc/PID/stat file: the first field
// after the command name, which is in parentheses and may itself hold
// spaces and parentheses.
func State(stat []byte) (byte, bool) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 || end+2 >= len(stat) || stat[end+1] != ' ' {
		return 0, false
	}
	return stat[end+2], true
}
