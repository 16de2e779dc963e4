package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Engines.
const (
	EngineAuto = "auto" // fio when it is installed, else go
	EngineFio  = "fio"  // fio for the workloads it can run, go for the rest
	EngineGo   = "go"   // the built-in Go load generator for everything
)

// Options configure a benchmark run. The zero value of a field means its
// default (see DefaultOptions).
type Options struct {
	// Engine is EngineAuto, EngineFio or EngineGo.
	Engine string
	// Duration is the length of one run of one workload on one target.
	Duration time.Duration
	// Reps is the number of runs of each workload on each target; the
	// table shows their median. Targets alternate within a repetition and
	// their order rotates from one repetition to the next.
	Reps int
	// FileSize is the data file's size: the region that sequential and
	// random workloads cover.
	FileSize int64
	// MemSize is how much the memory workload writes, and MemDeadline the
	// longest it may take (MemRegularFile grows quadratically).
	MemSize     int64
	MemDeadline time.Duration
	// Targets and Workloads select a subset (nil: all).
	Targets   []string
	Workloads []string
	// Ramproc is the ramproc binary used for the ramproc targets
	// ("ramproc mount ..."). Required when they are selected.
	Ramproc string
	// BaselineCommand returns the command that serves the MemRegularFile
	// baseline on a mountpoint (one that calls ServeBaseline and prints the
	// path line). Required when the memfile target is selected.
	BaselineCommand func(mountpoint string) *exec.Cmd
	// LibCommand returns the command that serves one of the library
	// section's servers (kind "lib": ServeLib; "gofuse-tree":
	// ServeGoFuseTree) on a mountpoint with a tree of treeFiles files.
	// Required when the library section (LibWorkload) is selected.
	LibCommand func(kind, mountpoint string, treeFiles int) *exec.Cmd
	// LibTreeFiles is the size of the library section's tree.
	LibTreeFiles int
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// DefaultOptions are the defaults of ramproc bench: under 3 minutes on two
// cores for all five targets.
func DefaultOptions() Options {
	return Options{
		Engine:       EngineAuto,
		Duration:     500 * time.Millisecond,
		Reps:         3,
		FileSize:     64 << 20,
		MemSize:      256 << 20,
		MemDeadline:  5 * time.Second,
		LibTreeFiles: 100000,
	}
}

// QuickOptions are for tests and smoke runs: every workload once, briefly,
// on small files. The figures are noisy; only their presence means
// something.
func QuickOptions() Options {
	return Options{
		Engine:       EngineAuto,
		Duration:     80 * time.Millisecond,
		Reps:         1,
		FileSize:     8 << 20,
		MemSize:      16 << 20,
		MemDeadline:  2 * time.Second,
		LibTreeFiles: 5000,
	}
}

func (o Options) withDefaults() Options {
	d := DefaultOptions()
	if o.Engine == "" {
		o.Engine = d.Engine
	}
	if o.Duration <= 0 {
		o.Duration = d.Duration
	}
	if o.Reps <= 0 {
		o.Reps = d.Reps
	}
	if o.FileSize <= 0 {
		o.FileSize = d.FileSize
	}
	if o.MemSize <= 0 {
		o.MemSize = d.MemSize
	}
	if o.MemDeadline <= 0 {
		o.MemDeadline = d.MemDeadline
	}
	if o.LibTreeFiles <= 0 {
		o.LibTreeFiles = d.LibTreeFiles
	}
	if len(o.Targets) == 0 {
		o.Targets = AllTargets
	}
	if len(o.Workloads) == 0 {
		o.Workloads = WorkloadNames()
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	return o
}

// Validate checks the options' names and values; it is what Run does
// first, exposed so that a command line can report usage errors early.
func (o Options) Validate() error {
	o = o.withDefaults()
	switch o.Engine {
	case EngineAuto, EngineFio, EngineGo:
	default:
		return fmt.Errorf("unknown engine %q (want %s, %s or %s)", o.Engine, EngineAuto, EngineFio, EngineGo)
	}
	for _, t := range o.Targets {
		if !slices.Contains(AllTargets, t) {
			return fmt.Errorf("unknown target %q (want some of %s)", t, strings.Join(AllTargets, ","))
		}
	}
	if !slices.Contains(o.Targets, TargetTmpfs) {
		return fmt.Errorf("the targets must include %s, the reference", TargetTmpfs)
	}
	names := append(WorkloadNames(), LibWorkload)
	for _, w := range o.Workloads {
		if !slices.Contains(names, w) {
			return fmt.Errorf("unknown workload %q (want some of %s)", w, strings.Join(names, ","))
		}
	}
	if slices.Contains(o.Workloads, LibWorkload) && o.LibCommand == nil {
		return errors.New("the library section needs Options.LibCommand")
	}
	if !o.fileWorkloads() {
		return nil // only the library section: the targets are not mounted
	}
	if o.FileSize < maxBlock || o.FileSize%(4<<10) != 0 {
		return fmt.Errorf("file size %d: want a multiple of 4096 of at least %d", o.FileSize, maxBlock)
	}
	if (slices.Contains(o.Targets, TargetRamproc) || slices.Contains(o.Targets, TargetRamprocNoPT) || slices.Contains(o.Targets, TargetRamprocNoOpen)) && o.Ramproc == "" {
		return errors.New("the ramproc targets need Options.Ramproc, the ramproc binary")
	}
	if slices.Contains(o.Targets, TargetMemfile) && o.BaselineCommand == nil {
		return errors.New("the memfile target needs Options.BaselineCommand")
	}
	return nil
}

// fileWorkloads reports whether a workload other than the library section
// is selected: only then are the targets mounted.
func (o Options) fileWorkloads() bool {
	for _, w := range o.Workloads {
		if w != LibWorkload {
			return true
		}
	}
	return false
}

// sample is one run of one workload on one target.
type sample struct {
	ops, bytes float64
	wall       float64 // seconds
	cpu        float64 // server CPU seconds
	hasCPU     bool
	engine     string
}

// Run mounts the selected targets, runs the selected workloads on each,
// interleaved, unmounts everything and returns the report. A target that
// cannot be mounted, or a run that fails, is reported in the Report (and
// makes Report.Failed true) rather than ending the run; Run itself fails
// only when it cannot measure at all (bad options, not root, no tmpfs).
func Run(ctx context.Context, o Options) (rep *Report, err error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	if os.Geteuid() != 0 {
		return nil, errors.New("ramproc bench mounts tmpfs and FUSE file systems itself and must run as root")
	}
	began := time.Now()
	rep = &Report{
		Version:   1,
		Started:   began,
		Kernel:    kernelRelease(),
		CPUs:      runtime.NumCPU(),
		DurationS: o.Duration.Seconds(),
		Reps:      o.Reps,
		FileBytes: o.FileSize,
		MemBytes:  o.MemSize,
	}
	fio := ""
	if o.Engine != EngineGo {
		if p, err := exec.LookPath("fio"); err == nil {
			fio = p
		} else if o.Engine == EngineFio {
			return nil, errors.New("engine fio: fio is not installed (apt-get install fio), or use --engine go")
		}
	}
	rep.Engine = EngineGo
	if fio != "" {
		rep.Engine = EngineFio
		rep.Fio, _ = fioVersion(fio)
	}
	logf := func(format string, args ...any) { fmt.Fprintf(o.Log, format+"\n", args...) }

	// Mount the targets, reference first.
	var live []*target
	defer func() {
		for _, t := range live {
			if cerr := t.close(); cerr != nil {
				rep.Notes = append(rep.Notes, cerr.Error())
				rep.Failed = true
			}
		}
		rep.ElapsedS = time.Since(began).Seconds()
	}()
	if slices.Contains(o.Workloads, LibWorkload) {
		// Last, after the targets are unmounted: its tree and servers
		// would otherwise share the machine with theirs.
		defer func() {
			for _, t := range live {
				if cerr := t.close(); cerr != nil {
					rep.Notes = append(rep.Notes, cerr.Error())
					rep.Failed = true
				}
			}
			live = nil
			if err == nil && ctx.Err() == nil {
				if lerr := runLib(ctx, o, rep, logf); lerr != nil {
					rep.Notes = append(rep.Notes, "library section: "+lerr.Error())
					rep.Failed = true
				}
			}
		}()
	}
	if !o.fileWorkloads() {
		return rep, nil
	}
	maxSize := 2 * max(o.FileSize, o.MemSize, appendCap)
	for _, name := range AllTargets {
		if !slices.Contains(o.Targets, name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		t, err := setupTarget(ctx, name, o, maxSize)
		info := TargetInfo{Name: name}
		if err == nil {
			info.Description = t.desc
			info.PID = t.pid
			info.Mountpoint = t.dir
			logf("bench: %s: %s, data file %s", name, t.desc, t.data)
			if t.gen == "" {
				rep.Notes = append(rep.Notes, fmt.Sprintf("%s: no generated file %s/stats; its open-read100-close-gen row is empty", name, t.dir))
			}
			if err = prefill(t.data, o.FileSize); err != nil {
				t.close()
				err = fmt.Errorf("fill the data file: %w", err)
			}
		}
		if err != nil {
			info.Error = err.Error()
			rep.Failed = true
			logf("bench: %s: %v", name, err)
			if name == TargetTmpfs {
				rep.Targets = append(rep.Targets, info)
				return rep, fmt.Errorf("tmpfs, the reference: %w", err)
			}
		} else {
			live = append(live, t)
		}
		rep.Targets = append(rep.Targets, info)
	}

	var bufs [][]byte
	for j := range 2 {
		b, err := newBuffer(uint64(j) + 7)
		if err != nil {
			return rep, err
		}
		defer unix.Munmap(b)
		bufs = append(bufs, b)
	}

	dead := map[string]error{}
	for _, w := range allWorkloads {
		if !slices.Contains(o.Workloads, w.name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		row := &Row{Workload: w.name, Title: w.title, Unit: w.unit, Results: map[string]*Result{}}
		rep.Rows = append(rep.Rows, row)
		engines := map[string]bool{}
		if w.op == opMemory {
			engines[EngineGo] = true
			for _, t := range live {
				res := &Result{}
				row.Results[t.name] = res
				if err := dead[t.name]; err != nil {
					res.Error = err.Error()
					continue
				}
				m, err := memoryRun(t, o.MemSize, o.MemDeadline, bufs[0])
				if err == nil {
					err = t.alive()
				}
				if err != nil {
					res.Error = err.Error()
					rep.Failed = true
					continue
				}
				res.Memory = m
				res.Value = m.PerByte
				res.Min, res.Max = m.PerByte, m.PerByte
				res.Samples = []float64{m.PerByte}
			}
		} else {
			samples := map[string][]sample{}
			for r := range o.Reps {
				if err := ctx.Err(); err != nil {
					return rep, err
				}
				var order []*target
				for k := range live {
					if t := live[(k+r)%len(live)]; dead[t.name] == nil {
						order = append(order, t)
					}
				}
				for i, res := range runRound(ctx, w, order, o, fio, bufs) {
					t := order[i]
					if res.err != nil {
						err := res.err
						if aerr := t.alive(); aerr != nil {
							dead[t.name] = aerr
							err = aerr
						}
						if row.Results[t.name] == nil {
							row.Results[t.name] = &Result{Error: err.Error()}
						}
						rep.Failed = true
						continue
					}
					engines[res.s.engine] = true
					samples[t.name] = append(samples[t.name], res.s)
				}
			}
			for _, t := range live {
				if ss := samples[t.name]; len(ss) > 0 {
					row.Results[t.name] = summarize(w, ss)
				} else if row.Results[t.name] == nil {
					err := dead[t.name]
					if err == nil {
						err = errors.New("no run")
					}
					row.Results[t.name] = &Result{Error: err.Error()}
				}
			}
		}
		var es []string
		for e := range engines {
			es = append(es, e)
		}
		sort.Strings(es)
		row.Engine = strings.Join(es, "+")
		row.finish(w)
		logf("bench: %s", row.logLine(rep.targetNames()))
	}
	return rep, nil
}

// setupTarget mounts one target.
func setupTarget(ctx context.Context, name string, o Options, maxSize int64) (*target, error) {
	switch name {
	case TargetTmpfs:
		return setupTmpfs()
	case TargetRamproc:
		t, err := startRamproc(ctx, name, o.Ramproc, "on", maxSize)
		if err == nil {
			return t, nil
		}
		// Passthrough may be unavailable (kernel, privilege): measure what
		// auto picks and say why.
		t, err2 := startRamproc(ctx, name, o.Ramproc, "auto", maxSize)
		if err2 != nil {
			return nil, fmt.Errorf("with -passthrough on: %v; with -passthrough auto: %v", err, err2)
		}
		t.desc += " (-passthrough on failed: " + err.Error() + ")"
		return t, nil
	case TargetRamprocNoPT:
		return startRamproc(ctx, name, o.Ramproc, "off", maxSize)
	case TargetRamprocNoOpen:
		return startRamproc(ctx, name, o.Ramproc, "off", maxSize, "-no-open")
	case TargetMemfile:
		return startBaseline(ctx, o.BaselineCommand)
	}
	return nil, fmt.Errorf("unknown target %q", name)
}

// prefill makes path a size-byte file of non-zero data: truncate to the
// size first (one allocation for MemRegularFile, which otherwise grows its
// slice on every write), then write it in 1 MiB blocks.
func prefill(path string, size int64) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, size); err != nil {
		return fmt.Errorf("truncate to %d: %w", size, err)
	}
	buf, err := newBuffer(42)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	for off := int64(0); off < size; {
		n, err := unix.Pwrite(fd, buf[:min(int64(len(buf)), size-off)], off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write at %d: %w", off, err)
		}
		if n == 0 {
			return fmt.Errorf("write at %d: 0 bytes written", off)
		}
		off += int64(n)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Size != size {
		return fmt.Errorf("size %d after writing %d bytes", st.Size, size)
	}
	return nil
}

// outcome is one target's part of a round.
type outcome struct {
	s   sample
	err error
}

// runRound runs w once on each of ts, in that order, and measures each
// server's CPU time around its run. Under fio the whole round is one fio
// invocation with one stonewalled job per target, because fio's start-up
// (0.25 s on an idle machine, seconds on a loaded one) would otherwise
// dominate the bench's duration; each server's CPU time is then read
// around the whole invocation, which is fair because a FUSE server whose
// file is not being used sits idle. If that invocation fails, each target
// is run alone so that the failure lands on the right one.
func runRound(ctx context.Context, w *workload, ts []*target, o Options, fio string, bufs [][]byte) []outcome {
	out := make([]outcome, len(ts))
	useFio := fio != "" && w.fio != ""
	paths := make([]string, len(ts))
	var live []int
	for i, t := range ts {
		if err := t.alive(); err != nil {
			out[i].err = err
			continue
		}
		paths[i] = t.data
		if w.gen {
			if t.gen == "" {
				out[i].err = errors.New("no generated file")
				continue
			}
			paths[i] = t.gen
		}
		live = append(live, i)
	}
	if useFio && len(live) > 1 {
		jobs := make([]fioJob, len(live))
		cpu0 := make([]float64, len(live))
		ok0 := make([]bool, len(live))
		for k, i := range live {
			jobs[k] = fioJob{name: ts[i].name, path: paths[i]}
			cpu0[k], ok0[k] = ts[i].cpu()
		}
		got, err := fioRun(ctx, fio, w, jobs, o.FileSize, o.Duration)
		if err == nil {
			for k, i := range live {
				s := got[k]
				s.engine = EngineFio
				if cpu1, ok1 := ts[i].cpu(); ok0[k] && ok1 {
					s.cpu, s.hasCPU = cpu1-cpu0[k], true
				}
				out[i].s = s
			}
			return out
		}
		if ctx.Err() != nil {
			for _, i := range live {
				out[i].err = err
			}
			return out
		}
		// Fall through: one fio run per target.
	}
	for _, i := range live {
		t := ts[i]
		cpu0, ok0 := t.cpu()
		var s sample
		var err error
		if useFio {
			var got []sample
			got, err = fioRun(ctx, fio, w, []fioJob{{name: t.name, path: paths[i]}}, o.FileSize, o.Duration)
			if err == nil {
				s = got[0]
			}
			s.engine = EngineFio
		} else {
			s, err = goRun(w, paths[i], o.FileSize, o.Duration, bufs)
			s.engine = EngineGo
		}
		cpu1, ok1 := t.cpu()
		if err != nil {
			out[i].err = err
			continue
		}
		if ok0 && ok1 {
			s.cpu, s.hasCPU = cpu1-cpu0, true
		}
		out[i].s = s
	}
	return out
}

// value converts a sample to the row's unit.
func value(w *workload, s sample) float64 {
	switch w.unit {
	case unitMiBs:
		return s.bytes / s.wall / (1 << 20)
	case unitKIOPS, unitKops:
		return s.ops / s.wall / 1000
	}
	return math.NaN()
}

// summarize turns a target's samples of one workload into its Result.
func summarize(w *workload, ss []sample) *Result {
	r := &Result{}
	var ops, bytes, wall, cpu float64
	hasCPU := true
	for _, s := range ss {
		r.Samples = append(r.Samples, value(w, s))
		ops += s.ops
		bytes += s.bytes
		wall += s.wall
		cpu += s.cpu
		hasCPU = hasCPU && s.hasCPU
	}
	r.Min, r.Max = slices.Min(r.Samples), slices.Max(r.Samples)
	r.Value = median(r.Samples)
	r.OpsPerSec = ops / wall
	r.BytesPerSec = bytes / wall
	if hasCPU {
		pct := 100 * cpu / wall
		us := 1e6 * cpu / ops
		r.ServerCPUPercent = &pct
		r.ServerCPUPerOpUS = &us
	}
	return r
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}
