// Package bench measures ramproc against tmpfs, the file it must be as good
// as, and against go-fuse's fs.MemRegularFile, what a go-fuse user would
// write without ramproc. It is the engine of "ramproc bench".
//
// # Running it
//
// As root (it mounts file systems itself), on an otherwise quiet machine:
//
//	go build -o /tmp/ramproc ./cmd/ramproc
//	/tmp/ramproc bench                   # under 3 minutes (2.7 here): the table
//	/tmp/ramproc bench -json > run.json  # the same, machine-readable
//	/tmp/ramproc bench -quick            # a ~20 s smoke run; noisy figures
//	/tmp/ramproc bench -workloads rand-read-4k,stat -reps 5 -duration 2s
//
// Flags: -engine fio|go|auto (auto: fio when installed; apt-get install fio),
// -duration (one run, default 500ms), -reps (default 3), -targets,
// -workloads, -file-size (default 64M), -mem-size (default 256M),
// -mem-deadline, -ramproc (the binary to measure; default the running one),
// -quiet. Progress goes to stderr, the report to stdout. The exit status is
// 0 when every target was mounted and every run succeeded, whether or not
// the goals are met (a benchmark measures; it does not judge), 1 when
// something failed (the report's notes say what), 2 for bad flags.
//
// The bench mounts, each on its own temporary directory:
//
//	tmpfs         a private tmpfs: the reference every ratio divides by
//	ramproc       "ramproc mount -stats -passthrough on" (auto if on fails):
//	              the RAM file by passthrough, the stats file generated
//	              per open
//	ramproc-nopt  "ramproc mount -stats -passthrough off": every read and
//	              write goes through the server, as in an unprivileged mount
//	ramproc-noopen "ramproc mount -stats -no-open": the kernel sends no OPEN
//	              or RELEASE and serves every file from its page cache
//	memfile       a go-fuse server of fs.MemRegularFile (ServeBaseline), run
//	              as "ramproc bench --serve-baseline MOUNTPOINT", an internal
//	              mode of the same binary
//
// The servers are child processes, so their CPU time can be read from
// /proc/PID/stat around every run. Each target's data file is filled to
// -file-size first (truncate, then 1 MiB writes).
//
// # Workloads
//
// All workloads run on the one data file except where said:
//
//	seq-write-4k/128k/1m   pwrite in order over the file, wrapping around
//	seq-read-4k/128k/1m    pread in order
//	rand-read-4k[-2j]      pread at random 4 KiB-aligned offsets, 1 or 2 jobs
//	rand-write-4k[-2j]     pwrite likewise
//	direct-rand-read-4k    random pread on an O_DIRECT descriptor
//	open-read100-close     open, read(100 bytes), close: what cat does
//	open-read100-close-gen the same on the generated file: ramproc's "stats"
//	                       (-stats), the baseline's raw go-fuse equivalent,
//	                       a 100-byte file on tmpfs
//	stat                   stat(2) of the data file's path
//	append-4k              write on an O_APPEND descriptor of the emptied
//	                       file (emptied again, off the clock, every 256 MiB)
//	memory                 see below
//
// The data workloads run under fio (psync engine, time based, no cache
// invalidation) when the engine is fio: one fio invocation per repetition,
// with one stonewalled job per target, because fio's start-up (0.25 s idle,
// seconds on a loaded machine) would otherwise dominate the run time. Each
// server's CPU time is read around that whole invocation, which is fair
// since a FUSE server sits idle while the other targets' jobs run.
// Everything else, and everything with -engine go, runs under the built-in
// generator: one goroutine per job,
// locked to an OS thread, calling pread/pwrite/open/stat through
// golang.org/x/sys/unix on preallocated, page-aligned buffers (so O_DIRECT
// works), and reading the clock only every few operations. The engine
// column says which one produced each row.
//
// Every workload runs -reps times on every target, and the targets take
// turns within each repetition (tmpfs, ramproc, ramproc-nopt, memfile, then
// ramproc, ramproc-nopt, memfile, tmpfs, ...), so that a noisy neighbour
// slows all of them alike rather than one column. The figure is the median
// of the repetitions.
//
// The memory workload writes -mem-size bytes into the emptied file in 1 MiB
// writes, fsyncs, and counts the RAM spent on them as the sum of three
// changes: the target's shmem files (for tmpfs the data file itself; for a
// server every tmpfs or memfd file it holds open, found through
// /proc/PID/fd, which is where ramproc keeps its bytes), each measured with
// cachestat(2); the server's RssAnon (its Go heap); and the FUSE data
// file's own page cache, also by cachestat(2) (the kernel's cached copy of
// the server's data; none in passthrough mode, where the page cache is the
// backing file's). The figure is that sum divided by the bytes stored. The
// system-wide Shmem change of /proc/meminfo is shown next to it as a
// cross-check: it also catches shared memory that no descriptor leads to,
// but every other process on the machine moves it too, so it is not part
// of the figure. MemRegularFile copies its whole slice each time the file
// grows, so its run stops at -mem-deadline and is marked with '*'; its Go
// heap also holds the garbage of those copies until the collector runs,
// which the figure includes: that is RAM the system spends.
//
// # Reading the table
//
//	workload        unit   tmpfs        ramproc  ramproc-nopt      memfile  spread  engine  target          met
//	seq-write-4k   MiB/s    2213    1676 (0.76)  57.99 (0.03)  56.71 (0.03)     9%     fio  >=0.9 np>=3xmf  NO 0.76, NO 1.02
//
// Each cell is the median figure in the row's unit (MiB/s, thousands of
// I/Os per second, thousands of operations per second, or for memory bytes
// of RAM per byte stored) followed by its ratio to tmpfs in the same run:
// the median of the ratios of each repetition, whose runs on the targets
// follow each other, so that a machine that is slow for a while is slow for
// both sides of a ratio.
// Higher is better except for memory. "spread" is the widest
// (max-min)/median among the targets: when it is large, rerun with more
// -reps or a longer -duration before believing a ratio near a goal.
//
// "target" lists the goals of the row and "met" whether each is met, with
// the measured value:
//
//	>=0.9      ramproc >= 0.9 x tmpfs: sequential and random reads and writes,
//	           O_APPEND, stat
//	np>=3xmf   ramproc-nopt >= 3 x memfile: every data workload
//	no>=0.5    ramproc-noopen >= 0.5 x tmpfs: the same on the -no-open mount
//	<=1.05     memory: ramproc spends at most 1.05 bytes of RAM per byte
//
// The second table is the servers' CPU time (user + system, all threads, from
// /proc/PID/stat at 10 ms resolution) per operation, and as a share of one
// core while the workload ran. In passthrough mode the data path costs the
// server nothing; without it every request costs a round trip through
// /dev/fuse, which is what ramproc-nopt's column shows. The memory table
// splits the memory row into its parts. "goals met" counts the goals;
// "notes" lists whatever failed.
//
// Figures from -quick, from a loaded machine or from a run with a large
// spread are indications, not measurements. Tests never assert timings;
// they only check that every row has a positive figure for every target.
//
// # The library section
//
// "-workloads lib" (not in the default set; it may be combined with
// others) measures what a program built on package fusebridge gets for its
// generated files, after the targets above are unmounted, against tmpfs
// and libfuse's hello_ll example (the fastest thing a FUSE server does per
// open here: OPEN and one READ), which the bench builds from
// /usr/share/doc/libfuse3-dev/examples/hello_ll.c with cc and pkg-config
// (apt-get install libfuse3-dev gcc pkg-config; never copied into the
// repository). The library's server (ServeLib) and a plain go-fuse server
// of the same tree (ServeGoFuseTree) run as "ramproc bench --serve-lib"
// children. In the per-open rows the go-fuse column is a plain go-fuse
// file asked the library's requests (made per open, read with direct
// I/O, nothing at close), and each such row's note splits the gap to
// hello_ll: go-fuse over hello_ll is what Go and go-fuse cost, lib over
// go-fuse what the bridge does, with the server CPU per open of each.
// Rows, each the median of -reps runs with the peers taking turns:
//
//	lib-gen-fresh    open+read+close of a Generated with a 100 ms bound, on
//	                 the layout the library chooses: >= 0.5 x tmpfs; the
//	                 note gives the oldest content read (its embedded time
//	                 against the start of the read), and content older
//	                 than the bound + 50 ms is a failure
//	lib-gen-perop    the same file generated per open: >= 1.0 x hello_ll
//	lib-gen-perop-pt the same, served by a server with
//	                 fusebridge.Options.PerOpenPassthrough (ServeLibPerOpen:
//	                 read from a backing file made at OPEN, no READ); no
//	                 goal: the default page cache reaches lib-gen-perop's
//	lib-percaller    a PerCallerGenerated file: >= 0.6 x hello_ll
//	lib-gofuse-hello hello_ll's file served by the go-fuse server (OPEN
//	                 and one READ through the page cache; no goal)
//	lib-tree-catall  find -type f | xargs cat over a tree of
//	                 -lib-tree-files (100,000) files with a 1 s bound, in
//	                 100 directories: <= 2 x tmpfs's time
//	lib-tree-rss     the server's RSS after that: <= 1.5 x the go-fuse
//	                 server's on the same tree
//
// # The handler API's own cost
//
// BenchmarkHandlerVsRaw (in this package's tests) serves the same work twice
// in-process, once through ramproc's handler API (fusebridge) and once as a
// raw go-fuse node mounted with the same options, and reports ns/op of
// open+read+close of a generated file and of 4 KiB pread and pwrite going
// through the server:
//
//	go test -run '^$' -bench HandlerVsRaw -benchtime 2s ./bench/
package bench
