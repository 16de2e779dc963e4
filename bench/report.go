package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the outcome of Run; WriteText and WriteJSON print it.
type Report struct {
	Version   int       `json:"version"`
	Started   time.Time `json:"started"`
	ElapsedS  float64   `json:"elapsed_s"`
	Kernel    string    `json:"kernel"`
	CPUs      int       `json:"cpus"`
	Engine    string    `json:"engine"`        // "fio" or "go"
	Fio       string    `json:"fio,omitempty"` // fio's version when used
	DurationS float64   `json:"duration_s"`    // one run
	Reps      int       `json:"reps"`
	FileBytes int64     `json:"file_bytes"`
	MemBytes  int64     `json:"memory_bytes"`

	Targets []TargetInfo `json:"targets"`
	// LibPeers are the library section's columns (-workloads lib), whose
	// rows (named lib-...) are among Rows.
	LibPeers []TargetInfo `json:"lib_peers,omitempty"`
	Rows     []*Row       `json:"rows"`
	Notes    []string     `json:"notes,omitempty"`
	// Failed is set when a target could not be mounted, a run failed or a
	// server misbehaved on unmount: the table has holes.
	Failed bool `json:"failed"`
}

// TargetInfo describes one target (one column).
type TargetInfo struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Mountpoint  string `json:"mountpoint,omitempty"`
	PID         int    `json:"server_pid,omitempty"`
	Error       string `json:"error,omitempty"` // why it could not be mounted
}

// Row is one workload.
type Row struct {
	Workload string `json:"workload"`
	Title    string `json:"title"`
	Unit     string `json:"unit"`
	Engine   string `json:"engine"` // "fio", "go" (or both)
	// Results by target name.
	Results map[string]*Result `json:"results"`
	Goals   []GoalResult       `json:"goals,omitempty"`
	// Note is what else the row measured (lib-gen-fresh: the oldest
	// content read).
	Note string `json:"note,omitempty"`
}

// isLib reports a row of the library section.
func (row *Row) isLib() bool { return strings.HasPrefix(row.Workload, "lib-") }

// Result is one cell: a target's figures for one workload.
type Result struct {
	Value   float64   `json:"value"` // median of Samples, in the row's unit
	Min     float64   `json:"min"`
	Max     float64   `json:"max"`
	Samples []float64 `json:"samples"`
	// RatioToTmpfs is Value / tmpfs's Value (absent without tmpfs figure).
	RatioToTmpfs *float64 `json:"ratio_to_tmpfs,omitempty"`
	// Totals over all runs.
	OpsPerSec   float64 `json:"ops_per_s,omitempty"`
	BytesPerSec float64 `json:"bytes_per_s,omitempty"`
	// The server's CPU time (utime+stime of the whole process) over all
	// runs, per operation and as a share of one core; absent for tmpfs.
	ServerCPUPerOpUS *float64      `json:"server_cpu_us_per_op,omitempty"`
	ServerCPUPercent *float64      `json:"server_cpu_percent,omitempty"`
	Memory           *MemoryResult `json:"memory,omitempty"`
	Error            string        `json:"error,omitempty"`
}

// GoalResult is one target of issue 4 checked against the row.
type GoalResult struct {
	Goal     string   `json:"goal"` // e.g. "ramproc >= 0.90 x tmpfs"
	Short    string   `json:"short"`
	Measured *float64 `json:"measured"` // the ratio or value checked; null when missing
	Met      bool     `json:"met"`
}

func (r *Result) ok() bool { return r != nil && r.Error == "" && len(r.Samples) > 0 }

// finish fills in the ratios to tmpfs and checks the goals.
func (row *Row) finish(w *workload) {
	ref := row.Results[TargetTmpfs]
	for _, r := range row.Results {
		if x, ok := ratio(r, ref); ok {
			r.RatioToTmpfs = &x
		}
	}
	for _, g := range w.goals {
		gr := GoalResult{Goal: g.String(), Short: g.short()}
		c := row.Results[g.col]
		x, have := 0.0, c.ok()
		if have {
			x = c.Value
			if g.ref != "" {
				x, have = ratio(c, row.Results[g.ref])
			}
		}
		if have && !math.IsNaN(x) {
			gr.Measured = &x
			if g.atMost {
				gr.Met = x <= g.want
			} else {
				gr.Met = x >= g.want
			}
		}
		row.Goals = append(row.Goals, gr)
	}
}

// ratio is r's figure over ref's. Samples of the same repetition were taken
// moments apart, so when both have one per repetition the ratio is the
// median of the per-repetition ratios: a machine that slows down for a
// while slows both sides of a pair, which the ratio of medians would not
// cancel.
func ratio(r, ref *Result) (float64, bool) {
	if !r.ok() || !ref.ok() || ref.Value <= 0 {
		return 0, false
	}
	if len(r.Samples) < 2 || len(r.Samples) != len(ref.Samples) {
		return r.Value / ref.Value, true
	}
	var xs []float64
	for i, v := range r.Samples {
		if ref.Samples[i] <= 0 {
			return r.Value / ref.Value, true
		}
		xs = append(xs, v/ref.Samples[i])
	}
	return median(xs), true
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (rep *Report) targetNames() []string {
	var ns []string
	for _, t := range rep.Targets {
		ns = append(ns, t.Name)
	}
	return ns
}

// logLine is the row's progress line.
func (row *Row) logLine(targets []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-24s", row.Workload)
	for _, t := range targets {
		fmt.Fprintf(&b, " %s %s", t, row.cell(t))
	}
	fmt.Fprintf(&b, " %s", row.Unit)
	return b.String()
}

// cell is a target's figure with its ratio to tmpfs: "123.4 (0.95)".
func (row *Row) cell(t string) string {
	r := row.Results[t]
	if r == nil {
		return "-"
	}
	if !r.ok() {
		return "error"
	}
	s := formatValue(r.Value)
	if r.RatioToTmpfs != nil && t != TargetTmpfs {
		s += fmt.Sprintf(" (%.2f)", *r.RatioToTmpfs)
	}
	if r.Memory != nil && r.Memory.CutShort {
		s += "*"
	}
	return s
}

func formatValue(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 10:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// spread is the widest (max-min)/median among the row's targets, as a
// measure of the run-to-run noise.
func (row *Row) spread() string {
	worst := -1.0
	for _, r := range row.Results {
		if r.ok() && len(r.Samples) > 1 && r.Value > 0 {
			worst = max(worst, (r.Max-r.Min)/r.Value)
		}
	}
	if worst < 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*worst)
}

func (row *Row) goalText() (target, met string) {
	var ts, ms []string
	for _, g := range row.Goals {
		ts = append(ts, g.Short)
		switch {
		case g.Measured == nil:
			ms = append(ms, "n/a")
		case g.Met:
			ms = append(ms, fmt.Sprintf("yes %.2f", *g.Measured))
		default:
			ms = append(ms, fmt.Sprintf("NO %.2f", *g.Measured))
		}
	}
	if len(ts) == 0 {
		return "-", "-"
	}
	return strings.Join(ts, " "), strings.Join(ms, ", ")
}

// WriteJSON prints the report as one indented JSON document.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// WriteText prints the report as tables for people; bench's package
// comment explains how to read them.
func (rep *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	var mainRows, libRows []*Row
	for _, row := range rep.Rows {
		if row.isLib() {
			libRows = append(libRows, row)
		} else {
			mainRows = append(mainRows, row)
		}
	}
	fmt.Fprintf(&b, "ramproc bench: Linux %s, %d CPUs, %s\n", rep.Kernel, rep.CPUs, rep.Started.Format("2006-01-02 15:04:05"))
	if len(mainRows) > 0 {
		// The engine, the data file and the targets concern the main
		// table only: the library section names its own peers.
		engine := "built-in Go load generator"
		if rep.Engine == EngineFio {
			engine = rep.Fio + " (psync) where it applies, Go generator for the rest"
		}
		fmt.Fprintf(&b, "engine: %s\n", engine)
	}
	fmt.Fprintf(&b, "%d repetition(s) x %v per workload and target, targets interleaved; figure = median, (x.xx) = ratio to tmpfs\n",
		rep.Reps, time.Duration(rep.DurationS*float64(time.Second)).Round(time.Millisecond))
	if len(mainRows) > 0 {
		fmt.Fprintf(&b, "data file %s; the memory row writes %s into the emptied file\n\n", sizeString(rep.FileBytes), sizeString(rep.MemBytes))
		fmt.Fprintf(&b, "targets:\n")
		for _, t := range rep.Targets {
			d := t.Description
			if t.Error != "" {
				d = "NOT MEASURED: " + t.Error
			}
			fmt.Fprintf(&b, "  %-15s %s\n", t.Name, d)
		}
	}
	b.WriteString("\n")

	names := rep.targetNames()
	wide := len("workload")
	for _, row := range rep.Rows {
		wide = max(wide, len(row.Workload))
	}
	left := func(s string) string { return fmt.Sprintf("%-*s", wide, s) }
	if len(mainRows) > 0 {
		rep.writeMain(&b, mainRows, names, left)
	}
	if len(libRows) > 0 {
		rep.writeLib(&b, libRows, left)
	}

	// Goals and failures.
	met, total, unmeasured := 0, 0, 0
	for _, row := range rep.Rows {
		for _, g := range row.Goals {
			total++
			if g.Met {
				met++
			}
			if g.Measured == nil {
				unmeasured++
			}
		}
	}
	if total > 0 { // none when the caller dropped them (ramproc bench -quick)
		fmt.Fprintf(&b, "\ngoals met: %d of %d", met, total)
		if unmeasured > 0 {
			fmt.Fprintf(&b, " (%d could not be measured)", unmeasured)
		}
		b.WriteString("\n")
	}
	var errs []string
	for _, row := range mainRows {
		for _, n := range names {
			if r := row.Results[n]; r != nil && r.Error != "" {
				errs = append(errs, fmt.Sprintf("%s on %s: %s", row.Workload, n, r.Error))
			}
		}
	}
	if len(errs) > 0 || len(rep.Notes) > 0 {
		b.WriteString("\nnotes:\n")
		for _, s := range append(errs, rep.Notes...) {
			fmt.Fprintf(&b, "  %s\n", s)
		}
	}
	fmt.Fprintf(&b, "\nelapsed %.0fs\n", rep.ElapsedS)
	_, err := io.WriteString(w, b.String())
	return err
}

// newTable starts a table of rows on b: its header names the workload, the
// unit, each of cols, then the tab-separated tail.
func newTable(b *strings.Builder, left func(string) string, cols []string, tail string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\tunit\t", left("workload"))
	for _, c := range cols {
		fmt.Fprintf(tw, "%s\t", c)
	}
	fmt.Fprintf(tw, "%s\t\n", tail)
	return tw
}

// writeMain prints the table of the file workloads, their server CPU and
// memory details.
func (rep *Report) writeMain(b *strings.Builder, mainRows []*Row, names []string, left func(string) string) {
	// tabwriter aligns every column right; the names are padded to read
	// left-aligned.
	tw := newTable(b, left, names, "spread\tengine\ttarget\tmet")
	for _, row := range mainRows {
		fmt.Fprintf(tw, "%s\t%s\t", left(row.Workload), row.Unit)
		for _, n := range names {
			fmt.Fprintf(tw, "%s\t", row.cell(n))
		}
		tg, met := row.goalText()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", row.spread(), row.Engine, tg, met)
	}
	tw.Flush()
	b.WriteString(`
target: >=X  ramproc >= X x tmpfs (the memory row: <=X bytes of RAM per byte, absolute);
        np>=3xmf  ramproc-nopt >= 3 x memfile;  no>=X  ramproc-noopen >= X x tmpfs.
        met: yes/NO with the measured ratio.
spread: widest (max-min)/median over the repetitions among the targets.
`)

	// Server CPU.
	var servers []string
	for _, t := range rep.Targets {
		if t.Name != TargetTmpfs && t.Error == "" {
			servers = append(servers, t.Name)
		}
	}
	if len(servers) > 0 {
		b.WriteString("\nserver CPU time: microseconds per operation (percent of one core while the workload ran)\n")
		tw = tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "%s\t", left("workload"))
		for _, s := range servers {
			fmt.Fprintf(tw, "%s\t", s)
		}
		fmt.Fprintf(tw, "\n")
		for _, row := range mainRows {
			if row.Unit == unitBPB {
				continue
			}
			fmt.Fprintf(tw, "%s\t", left(row.Workload))
			for _, s := range servers {
				r := row.Results[s]
				if !r.ok() || r.ServerCPUPerOpUS == nil {
					fmt.Fprintf(tw, "-\t")
					continue
				}
				fmt.Fprintf(tw, "%s (%.0f%%)\t", formatValue(*r.ServerCPUPerOpUS), *r.ServerCPUPercent)
			}
			fmt.Fprintf(tw, "\n")
		}
		tw.Flush()
	}

	// Memory details.
	for _, row := range mainRows {
		if row.Unit != unitBPB {
			continue
		}
		b.WriteString("\nmemory: RAM spent = shmem files + server RssAnon + the FUSE file's own page cache (deltas);\n" +
			"        system Shmem is /proc/meminfo's delta over the same time, a cross-check (other processes move it too)\n")
		tw = tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
		cut := false
		fmt.Fprintf(tw, "%s\tstored\tshmem files\tserver anon\tpage cache\tRAM/byte\tsystem Shmem\twrite time\t\n", "target")
		for _, n := range names {
			r := row.Results[n]
			if r == nil || r.Memory == nil {
				continue
			}
			m := r.Memory
			star := ""
			if m.CutShort {
				star, cut = "*", true
			}
			fmt.Fprintf(tw, "%s\t%s%s\t%s\t%s\t%s\t%.3f\t%s\t%.2fs\t\n", n, sizeString(m.Stored), star,
				signedSize(m.ShmemFilesDelta), signedSize(m.ServerAnonDelta), signedSize(m.PageCacheDelta), m.PerByte,
				signedSize(m.SystemShmemDelta), m.WriteSeconds)
		}
		tw.Flush()
		if cut {
			b.WriteString("* the write deadline stopped it before the full size (MemRegularFile copies its whole slice on every growth)\n")
		}
	}

}

// writeLib prints the library section: each row's figures by peer, the
// ratio its goal checks, and its note.
func (rep *Report) writeLib(b *strings.Builder, rows []*Row, left func(string) string) {
	b.WriteString("\nlibrary section (-workloads lib): open+read+close rows in kops/s (higher is better), catall in seconds and RSS in MiB (lower is better)\n")
	for _, t := range rep.LibPeers {
		fmt.Fprintf(b, "  %-15s %s\n", t.Name, t.Description)
	}
	tw := newTable(b, left, LibPeers, "spread\ttarget\tmet")
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\t", left(row.Workload), row.Unit)
		for _, p := range LibPeers {
			r := row.Results[p]
			switch {
			case r == nil:
				fmt.Fprintf(tw, "-\t")
			case !r.ok():
				fmt.Fprintf(tw, "error\t")
			default:
				fmt.Fprintf(tw, "%s\t", formatValue(r.Value))
			}
		}
		tg, met := row.goalText()
		fmt.Fprintf(tw, "%s\t%s\t%s\t\n", row.spread(), tg, met)
	}
	tw.Flush()
	for _, row := range rows {
		if row.Note != "" {
			fmt.Fprintf(b, "%s: %s\n", row.Workload, row.Note)
		}
		for _, p := range LibPeers {
			if r := row.Results[p]; r != nil && r.Error != "" {
				fmt.Fprintf(b, "%s on %s: %s\n", row.Workload, p, r.Error)
			}
		}
	}
	b.WriteString("target: lib >= X x PEER (rates) or lib <= X x PEER (times, RSS); met: yes/NO with the measured ratio.\n")
}

func sizeString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func signedSize(n int64) string {
	if n < 0 {
		return "-" + sizeString(-n)
	}
	return "+" + sizeString(n)
}
