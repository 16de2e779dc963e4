package bench

import "fmt"

// opKind is what a workload's loop does.
type opKind int

const (
	opSeqWrite opKind = iota
	opSeqRead
	opRandRead
	opRandWrite
	opDirectRandRead
	opOpenReadClose
	opStat
	opAppend
	opMemory
)

// Units of the table.
const (
	unitMiBs  = "MiB/s"  // bytes per second / 2^20
	unitKIOPS = "kIOPS"  // thousand data operations per second
	unitKops  = "kops/s" // thousand metadata operations per second
	unitBPB   = "B/B"    // bytes of RAM spent per byte stored
)

// goal is one target of issue 4, checked on one row.
type goal struct {
	col    string // the column checked
	ref    string // divided by this column; "" for an absolute value
	atMost bool   // the value must be <= want (else >= want)
	want   float64
}

func (g goal) String() string {
	op := ">="
	if g.atMost {
		op = "<="
	}
	if g.ref == "" {
		return fmt.Sprintf("%s %s %.2f", g.col, op, g.want)
	}
	return fmt.Sprintf("%s %s %.2f x %s", g.col, op, g.want, g.ref)
}

// short is the goal's compact form for the table.
func (g goal) short() string {
	op := ">="
	if g.atMost {
		op = "<="
	}
	switch {
	case g.ref == "":
		return fmt.Sprintf("%s%g", op, g.want)
	case g.col == TargetRamproc && g.ref == TargetTmpfs:
		return fmt.Sprintf("%s%g", op, g.want)
	case g.col == TargetRamprocNoPT && g.ref == TargetMemfile:
		return fmt.Sprintf("np%s%gxmf", op, g.want)
	case g.col == TargetRamprocNoOpen && g.ref == TargetTmpfs:
		return fmt.Sprintf("no%s%g", op, g.want)
	}
	return g.String()
}

// workload is one row of the table.
type workload struct {
	name   string
	title  string
	op     opKind
	bs     int
	jobs   int
	gen    bool   // run on the generated file instead of the data file
	fio    string // fio's rw= for this workload; "" when fio cannot do it
	direct bool
	unit   string
	data   bool // a data workload: ramproc-nopt must beat memfile 3x
	goals  []goal
}

func vsTmpfs(want float64) goal { return goal{col: TargetRamproc, ref: TargetTmpfs, want: want} }

var nopt3xMemfile = goal{col: TargetRamprocNoPT, ref: TargetMemfile, want: 3}

// allWorkloads is every workload in the order they run and are shown. The
// O_APPEND workload runs after the others because it empties the data file;
// the memory workload runs last for the same reason.
var allWorkloads = func() []*workload {
	var ws []*workload
	sizes := []struct {
		bs   int
		name string
	}{{4 << 10, "4k"}, {128 << 10, "128k"}, {1 << 20, "1m"}}
	for _, rw := range []struct {
		op   opKind
		name string
		fio  string
	}{{opSeqWrite, "write", "write"}, {opSeqRead, "read", "read"}} {
		for _, s := range sizes {
			ws = append(ws, &workload{
				name: "seq-" + rw.name + "-" + s.name, title: "sequential " + rw.name + " " + s.name,
				op: rw.op, bs: s.bs, fio: rw.fio, unit: unitMiBs, data: true,
				goals: []goal{vsTmpfs(0.9), nopt3xMemfile},
			})
		}
	}
	for _, rw := range []struct {
		op   opKind
		name string
		fio  string
	}{{opRandRead, "read", "randread"}, {opRandWrite, "write", "randwrite"}} {
		for _, jobs := range []int{1, 2} {
			name := "rand-" + rw.name + "-4k"
			title := "random " + rw.name + " 4k"
			if jobs > 1 {
				name += fmt.Sprintf("-%dj", jobs)
				title += fmt.Sprintf(", %d jobs", jobs)
			}
			ws = append(ws, &workload{
				name: name, title: title, op: rw.op, bs: 4 << 10, jobs: jobs, fio: rw.fio,
				unit: unitKIOPS, data: true, goals: []goal{vsTmpfs(0.9), nopt3xMemfile},
			})
		}
	}
	ws = append(ws,
		&workload{name: "direct-rand-read-4k", title: "O_DIRECT random read 4k", op: opDirectRandRead,
			bs: 4 << 10, fio: "randread", direct: true, unit: unitKIOPS, data: true,
			goals: []goal{nopt3xMemfile}},
		&workload{name: "open-read100-close", title: "open + read 100 B + close, data file",
			op: opOpenReadClose, unit: unitKops},
		&workload{name: "open-read100-close-gen", title: "open + read 100 B + close, generated file",
			op: opOpenReadClose, gen: true, unit: unitKops,
			// ramproc mount's stats file is generated per open (one
			// request each, no bind mount, so that a plain umount stops
			// it) except on -no-open, where the kernel caches it for up to
			// fusebridge.DefaultMaxAge. The library section measures
			// bounded files (lib-gen-fresh).
			goals: []goal{{col: TargetRamprocNoOpen, ref: TargetTmpfs, want: 0.5}}},
		&workload{name: "stat", title: "stat(2) of the data file", op: opStat, unit: unitKops,
			goals: []goal{vsTmpfs(0.9)}},
		&workload{name: "append-4k", title: "O_APPEND write 4k", op: opAppend, bs: 4 << 10,
			unit: unitKIOPS, data: true, goals: []goal{vsTmpfs(0.9), nopt3xMemfile}},
		&workload{name: "memory", title: "RAM spent per byte stored", op: opMemory, unit: unitBPB,
			goals: []goal{{col: TargetRamproc, atMost: true, want: 1.05}}},
	)
	return ws
}()

// WorkloadNames lists the workloads' names in the order they run.
func WorkloadNames() []string {
	names := make([]string, len(allWorkloads))
	for i, w := range allWorkloads {
		names[i] = w.name
	}
	return names
}
