package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The library section (-workloads lib): what a program built on package
// fusebridge gets for its generated files, beside tmpfs and the fastest
// thing a FUSE server can do per open here, libfuse's hello_ll example in
// C, built at bench time from Debian's libfuse3-dev.

// LibWorkload selects the library section.
const LibWorkload = "lib"

// The library section's columns.
const (
	PeerHelloLL = "hello_ll" // libfuse3-dev's examples/hello_ll.c, built at bench time
	PeerLib     = "lib"      // a fusebridge server with the zero Options (ServeLib)
	// peerLibPT is the library server with Options.PerOpenPassthrough
	// (ServeLibPerOpen), shown in the "lib" column of lib-gen-perop-pt.
	peerLibPT  = "lib-pt"
	PeerGoFuse = "go-fuse" // a plain go-fuse server of the same tree (ServeGoFuseTree)
)

// LibPeers lists the library section's columns in the table's order.
var LibPeers = []string{TargetTmpfs, PeerHelloLL, PeerGoFuse, PeerLib}

// HelloLLSource is where Debian's libfuse3-dev installs hello_ll.c.
const HelloLLSource = "/usr/share/doc/libfuse3-dev/examples/hello_ll.c"

// libAgeSlack is what lib-gen-fresh allows beyond the bound for "one
// regeneration": the GETATTR that makes new content and its reply's way to
// the kernel.
const libAgeSlack = 50 * time.Millisecond

// libRows are the library section's rows.
var libRows = []*workload{
	{name: "lib-gen-fresh", title: "open + read + close, Generated with a 100 ms bound", unit: unitKops,
		goals: []goal{{col: PeerLib, ref: TargetTmpfs, want: 0.5}}},
	{name: "lib-gen-perop", title: "open + read + close, Generated per open", unit: unitKops,
		goals: []goal{{col: PeerLib, ref: PeerHelloLL, want: 1.0}}},
	// No goal: the opt-in passthrough way to the same end as
	// lib-gen-perop (which the default page cache now reaches with one
	// request per open, where this pays a memfd and its registration),
	// kept for comparison.
	{name: "lib-gen-perop-pt", title: "open + read + close, Generated per open, PerOpenPassthrough", unit: unitKops},
	{name: "lib-percaller", title: "open + read + close, PerCallerGenerated", unit: unitKops,
		goals: []goal{{col: PeerLib, ref: PeerHelloLL, want: 0.6}}},
	// No goal: hello_ll's file served by a plain go-fuse server, what Go
	// and go-fuse cost per open where the C server answers the same
	// requests (the split is in the note of each per-open row).
	{name: "lib-gofuse-hello", title: "open + read + close, hello_ll's file in plain go-fuse (OPEN, one READ)", unit: unitKops},
	{name: "lib-tree-catall", title: "find -type f | xargs cat over the tree (seconds)", unit: unitSeconds,
		goals: []goal{{col: PeerLib, ref: TargetTmpfs, atMost: true, want: 2}}},
	{name: "lib-tree-rss", title: "server RSS after lib-tree-catall (MiB)", unit: unitMiB,
		goals: []goal{{col: PeerLib, ref: PeerGoFuse, atMost: true, want: 1.5}}},
}

// Units of the library section.
const (
	unitSeconds = "s"
	unitMiB     = "MiB"
)

// libServerTimeout bounds the wait for a library server, which publishes
// its whole tree before it prints its path.
const libServerTimeout = 5 * time.Minute

// runLib runs the library section and appends its rows to rep.
func runLib(ctx context.Context, o Options, rep *Report, logf func(string, ...any)) error {
	if o.LibCommand == nil {
		return errors.New("the library section needs Options.LibCommand")
	}
	tmp, err := os.MkdirTemp("", "ramproc-bench-lib-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	peers := map[string]*target{}
	defer func() {
		for name, t := range peers {
			if name == PeerHelloLL {
				// hello_ll exits 1 on a signal (its session loop
				// returns the signal); unmounted, it ends its loop and
				// exits 0.
				unix.Unmount(t.dir, 0)
				select {
				case <-t.exited:
				case <-time.After(5 * time.Second):
				}
			}
			if err := t.close(); err != nil {
				rep.Notes = append(rep.Notes, err.Error())
				rep.Failed = true
			}
		}
	}()
	note := func(format string, args ...any) {
		rep.Notes = append(rep.Notes, fmt.Sprintf(format, args...))
		rep.Failed = true
		logf("bench: "+format, args...)
	}

	// tmpfs: a 100-byte file and the same tree.
	tt, err := setupTmpfs()
	if err != nil {
		return fmt.Errorf("tmpfs, the reference: %w", err)
	}
	peers[TargetTmpfs] = tt
	for i := range o.LibTreeFiles {
		name := filepath.Join(tt.dir, libTree, libTreeName(i))
		if i < libTreeDirs {
			if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
				return err
			}
		}
		if err := os.WriteFile(name, []byte(libTreeName(i)+"\n"), 0o444); err != nil {
			return err
		}
	}
	if t, err := startHelloLL(ctx, tmp); err != nil {
		note("%s: %v", PeerHelloLL, err)
	} else {
		peers[PeerHelloLL] = t
	}
	if t, err := startLibServer(ctx, PeerLib, o.LibCommand, "lib", o.LibTreeFiles); err != nil {
		note("%s: %v", PeerLib, err)
	} else {
		peers[PeerLib] = t
	}
	// The same library server with Options.PerOpenPassthrough, for
	// lib-gen-perop-pt: its "lib" column (peers keeps it under its own
	// name, so that it is stopped with the others).
	if t, err := startLibServer(ctx, peerLibPT, o.LibCommand, "lib-perop", 0); err != nil {
		note("%s: %v", peerLibPT, err)
	} else {
		peers[peerLibPT] = t
	}
	if t, err := startLibServer(ctx, PeerGoFuse, o.LibCommand, "gofuse-tree", o.LibTreeFiles); err != nil {
		note("%s: %v", PeerGoFuse, err)
	} else {
		peers[PeerGoFuse] = t
	}
	for _, p := range LibPeers {
		if t := peers[p]; t != nil {
			rep.LibPeers = append(rep.LibPeers, TargetInfo{Name: p, Description: t.desc, Mountpoint: t.dir, PID: t.pid})
		}
	}

	// The file each open+read+close row reads on each peer.
	files := map[string]map[string]string{
		"lib-gen-fresh":    {TargetTmpfs: tt.gen},
		"lib-gen-perop":    {TargetTmpfs: tt.gen},
		"lib-gen-perop-pt": {TargetTmpfs: tt.gen},
		"lib-percaller":    {TargetTmpfs: tt.gen},
		"lib-gofuse-hello": {TargetTmpfs: tt.gen},
	}
	if t := peers[PeerHelloLL]; t != nil {
		for _, m := range files {
			m[PeerHelloLL] = t.gen
		}
	}
	if t := peers[PeerLib]; t != nil {
		files["lib-gen-fresh"][PeerLib] = filepath.Join(t.dir, libFresh)
		files["lib-gen-perop"][PeerLib] = filepath.Join(t.dir, libPerOp)
		files["lib-percaller"][PeerLib] = filepath.Join(t.dir, libCaller)
	}
	// The go-fuse column of the per-open rows is a plain go-fuse file
	// asked the same requests as the library's (see ServeGoFuseTree).
	if t := peers[PeerGoFuse]; t != nil {
		files["lib-gen-perop"][PeerGoFuse] = filepath.Join(t.dir, libPerOp)
		files["lib-percaller"][PeerGoFuse] = filepath.Join(t.dir, libPerOp)
		files["lib-gofuse-hello"][PeerGoFuse] = filepath.Join(t.dir, libHello)
	}
	rowPeers := map[string]map[string]*target{}
	if t := peers[peerLibPT]; t != nil {
		files["lib-gen-perop-pt"][PeerLib] = filepath.Join(t.dir, libPerOp)
		pt := maps.Clone(peers)
		pt[PeerLib] = t
		rowPeers["lib-gen-perop-pt"] = pt
	}
	buf := make([]byte, 128<<10)
	for _, w := range libRows {
		if err := ctx.Err(); err != nil {
			return err
		}
		row := &Row{Workload: w.name, Title: w.title, Unit: w.unit, Engine: EngineGo, Results: map[string]*Result{}}
		rep.Rows = append(rep.Rows, row)
		switch w.name {
		case "lib-tree-catall":
			libCatAll(ctx, o, row, peers)
		case "lib-tree-rss":
			for _, p := range []string{PeerLib, PeerGoFuse} {
				if t := peers[p]; t != nil {
					rss, err := procKB(fmt.Sprintf("/proc/%d/status", t.pid), "VmRSS")
					if err != nil {
						row.Results[p] = &Result{Error: err.Error()}
						continue
					}
					v := float64(rss) / (1 << 20)
					row.Results[p] = &Result{Value: v, Min: v, Max: v, Samples: []float64{v}}
				}
			}
		default:
			rp := peers
			if p, ok := rowPeers[w.name]; ok {
				rp = p
			}
			oldest := libOpenRows(ctx, o, w, row, files[w.name], rp, buf)
			if w.name == "lib-gen-fresh" && oldest > 0 {
				row.Note = fmt.Sprintf("oldest content read: %v (bound %v, + %v for one regeneration)", oldest.Round(time.Millisecond), libBound, libAgeSlack)
				if oldest > libBound+libAgeSlack {
					note("lib-gen-fresh: a read returned content %v old, beyond the bound %v plus one regeneration", oldest.Round(time.Millisecond), libBound)
				}
			}
		}
		row.finish(w)
		if split := libSplit(row); split != "" {
			row.Note = split
		}
		logf("bench: %s", row.logLine(LibPeers))
	}
	return nil
}

// libSplit is the note of a row with a go-fuse file per open: how its
// figure divides between go-fuse and the Go runtime (go-fuse over
// hello_ll) and the library (lib over go-fuse, the same requests), as
// ratios of the same repetitions.
func libSplit(row *Row) string {
	g := row.Results[PeerGoFuse]
	gh, ok := ratio(g, row.Results[PeerHelloLL])
	if !ok {
		return ""
	}
	s := fmt.Sprintf("go-fuse %.2fx hello_ll", gh)
	if lg, ok := ratio(row.Results[PeerLib], g); ok {
		s += fmt.Sprintf(", lib %.2fx go-fuse", lg)
	}
	if g.ServerCPUPerOpUS != nil {
		s += fmt.Sprintf("; server CPU per open: go-fuse %.1f us", *g.ServerCPUPerOpUS)
		for _, p := range []string{PeerHelloLL, PeerLib} {
			if r := row.Results[p]; r.ok() && r.ServerCPUPerOpUS != nil {
				s += fmt.Sprintf(", %s %.1f us", p, *r.ServerCPUPerOpUS)
			}
		}
	}
	return s
}

// libOpenRows measures open + read to EOF + close of one file per peer,
// o.Reps times, peers taking turns, and returns the age of the oldest
// content lib-gen-fresh read (0 for the other rows).
func libOpenRows(ctx context.Context, o Options, w *workload, row *Row, files map[string]string, peers map[string]*target, buf []byte) time.Duration {
	var order []string
	for _, p := range LibPeers {
		if files[p] != "" {
			order = append(order, p)
		}
	}
	samples := map[string][]float64{}
	var cpu = map[string]float64{}
	var oldest time.Duration
	for r := range o.Reps {
		for k := range order {
			p := order[(k+r)%len(order)]
			if ctx.Err() != nil {
				return oldest
			}
			t := peers[p]
			cpu0, ok0 := t.cpu()
			ops, age, err := libOpenLoop(files[p], o.Duration, buf, w.name == "lib-gen-fresh" && p == PeerLib)
			if err != nil {
				row.Results[p] = &Result{Error: err.Error()}
				continue
			}
			oldest = max(oldest, age)
			if cpu1, ok1 := t.cpu(); ok0 && ok1 {
				cpu[p] += cpu1 - cpu0
			}
			samples[p] = append(samples[p], ops/o.Duration.Seconds()/1000)
		}
	}
	for p, ss := range samples {
		if row.Results[p] != nil {
			continue
		}
		res := &Result{Samples: ss, Value: median(ss), Min: slices.Min(ss), Max: slices.Max(ss)}
		total := 0.0
		for _, s := range ss {
			total += s * 1000 * o.Duration.Seconds()
		}
		res.OpsPerSec = total / (o.Duration.Seconds() * float64(len(ss)))
		if c, ok := cpu[p]; ok && total > 0 {
			us := 1e6 * c / total
			pct := 100 * c / (o.Duration.Seconds() * float64(len(ss)))
			res.ServerCPUPerOpUS, res.ServerCPUPercent = &us, &pct
		}
		row.Results[p] = res
	}
	return oldest
}

// libOpenLoop opens, reads to EOF and closes path for d, and returns the
// number of cycles; with checkAge, also the age of the oldest content read
// (the time its read began minus the time the content says it was made).
func libOpenLoop(path string, d time.Duration, buf []byte, checkAge bool) (ops float64, oldest time.Duration, err error) {
	end := time.Now().Add(d)
	for n := 0; ; n++ {
		start := time.Now()
		if n%64 == 0 && start.After(end) {
			return float64(n), oldest, nil
		}
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, 0, err
		}
		got := 0
		for {
			k, err := unix.Read(fd, buf[got:])
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				unix.Close(fd)
				return 0, 0, err
			}
			if k == 0 {
				break
			}
			got += k
		}
		unix.Close(fd)
		if got == 0 {
			return 0, 0, fmt.Errorf("%s: read 0 bytes", path)
		}
		if checkAge {
			f, _, _ := strings.Cut(string(buf[:got]), " ")
			ns, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("%s: content %q does not start with its time", path, buf[:min(got, 40)])
			}
			oldest = max(oldest, start.Sub(time.Unix(0, ns)))
		}
	}
}

// libCatAll times `find DIR -type f | xargs cat` over each peer's tree,
// o.Reps times, peers taking turns.
func libCatAll(ctx context.Context, o Options, row *Row, peers map[string]*target) {
	order := []string{TargetTmpfs, PeerGoFuse, PeerLib}
	samples := map[string][]float64{}
	for r := range o.Reps {
		for k := range order {
			p := order[(k+r)%len(order)]
			t := peers[p]
			if t == nil || row.Results[p] != nil {
				continue
			}
			dir := filepath.Join(t.dir, libTree)
			start := time.Now()
			cmd := exec.CommandContext(ctx, "sh", "-c", `find "$1" -type f | xargs cat > /dev/null`, "sh", dir)
			out, err := cmd.CombinedOutput()
			if err != nil {
				row.Results[p] = &Result{Error: fmt.Sprintf("find | xargs cat: %v: %s", err, lastLines(strings.TrimSpace(string(out)), 3))}
				continue
			}
			samples[p] = append(samples[p], time.Since(start).Seconds())
		}
	}
	for p, ss := range samples {
		if row.Results[p] == nil {
			row.Results[p] = &Result{Samples: ss, Value: median(ss), Min: slices.Min(ss), Max: slices.Max(ss)}
		}
	}
}

// startLibServer starts the bench's own binary in one of its library
// server modes (kind "lib" or "gofuse-tree") on a new directory.
func startLibServer(ctx context.Context, name string, command func(kind, mountpoint string, treeFiles int) *exec.Cmd, kind string, treeFiles int) (*target, error) {
	dir, err := os.MkdirTemp("", "ramproc-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	desc := fmt.Sprintf("fusebridge server, zero Options, %d bounded files in %s/ (ServeLib)", treeFiles, libTree)
	switch kind {
	case "lib-perop":
		desc = "fusebridge server, Options.PerOpenPassthrough (ServeLibPerOpen)"
	case "gofuse-tree":
		desc = fmt.Sprintf("plain go-fuse server of the same %d-file tree (fs.MemRegularFile), a file made per open asked the lib's requests, and hello_ll's file (ServeGoFuseTree)", treeFiles)
	}
	t, err := startServerWithin(ctx, name, desc, command(kind, dir, treeFiles), dir, libServerTimeout)
	if err != nil {
		os.Remove(dir)
		return nil, err
	}
	t.gen = ""
	return t, nil
}

// startHelloLL builds libfuse's hello_ll example into tmp and serves it on
// a new directory: its one file, "hello", is the fastest thing a FUSE
// server answers per open here (OPEN and one READ; its attributes are
// cached for a second).
func startHelloLL(ctx context.Context, tmp string) (*target, error) {
	if _, err := os.Stat(HelloLLSource); err != nil {
		return nil, fmt.Errorf("%s is missing: apt-get install libfuse3-dev (and gcc, pkg-config)", HelloLLSource)
	}
	flags, err := exec.CommandContext(ctx, "pkg-config", "--cflags", "--libs", "fuse3").Output()
	if err != nil {
		return nil, fmt.Errorf("pkg-config --cflags --libs fuse3: %v (apt-get install pkg-config libfuse3-dev)", err)
	}
	bin := filepath.Join(tmp, "hello_ll")
	args := append([]string{"-O2", "-o", bin, HelloLLSource}, strings.Fields(string(flags))...)
	if out, err := exec.CommandContext(ctx, "cc", args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cc %s: %v: %s", strings.Join(args, " "), err, lastLines(strings.TrimSpace(string(out)), 3))
	}
	dir, err := os.MkdirTemp("", "ramproc-bench-hello_ll-")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-f", dir)
	t := &target{name: PeerHelloLL, desc: "libfuse3 hello_ll.c, built at bench time (C; OPEN + READ per open)", dir: dir, cmd: cmd,
		stderr: &tailBuffer{max: 16 << 10}, exited: make(chan struct{}), gen: filepath.Join(dir, "hello")}
	cmd.Stdout, cmd.Stderr = t.stderr, t.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		os.Remove(dir)
		return nil, err
	}
	t.pid = cmd.Process.Pid
	go func() { t.werr = cmd.Wait(); close(t.exited) }()
	for deadline := time.Now().Add(mountTimeout); ; {
		if _, err := os.Stat(t.gen); err == nil {
			return t, nil
		}
		if err := t.alive(); err != nil {
			t.close()
			return nil, err
		}
		if time.Now().After(deadline) {
			t.close()
			return nil, fmt.Errorf("%s/hello did not appear within %v", dir, mountTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
