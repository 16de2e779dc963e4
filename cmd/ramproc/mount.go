package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/service"
	"github.com/ramproc/ramproc/ramfile"
)

const mountSynopsis = `usage: ramproc mount [flags] MOUNTPOINT [flags]
       ramproc SOURCE MOUNTPOINT -o OPTIONS   (as mount(8) runs it: mount -t fuse.ramproc)

Serves a RAM-backed file in MOUNTPOINT until Ctrl-C, SIGTERM or SIGHUP and
prints the file's path on stdout. 'ramproc mount' stays in the foreground;
the mount-helper form (SOURCE is ignored) returns once the file is served
and leaves the server in the background, unless -f is given.`

func runMount(args []string) int { return mountMain(args, false) }

// runHelper is the argv mount.fuse3 uses: ramproc SOURCE MOUNTPOINT -o ...
func runHelper(args []string) int { return mountMain(args, true) }

func mountMain(args []string, helper bool) int {
	fl := flag.NewFlagSet("ramproc mount", flag.ContinueOnError)
	fl.SetOutput(io.Discard) // errors are reported in one line below
	name := fl.String("name", "ramfile", "name of the RAM file in the mount")
	modeStr := fl.String("mode", "0666", "permission bits of the RAM file, in octal")
	maxSizeStr := fl.String("max-size", "50%", "capacity of the RAM file: bytes with an optional k/m/g/t suffix (powers of 1024), a percentage of physical RAM, or 0 for no limit; the default is tmpfs's")
	// As root the file is meant for every local user, as /proc files are;
	// unprivileged mounts need user_allow_other in /etc/fuse.conf for it.
	allowOther := fl.Bool("allow-other", fusebridge.DefaultAllowOther(), "let other users reach the file (the allow_other mount option; default on when root)")
	ptStr := fl.String("passthrough", "auto", "FUSE passthrough: auto (when root on Linux >= 6.9), on (fail without it) or off (forward every read and write through this process)")
	noOpen := fl.Bool("no-open", false, "answer OPEN with ENOSYS: the kernel then sends no OPEN/RELEASE and caches every file across opens (open+read+close near tmpfs speed); implies -passthrough off")
	stats := fl.Bool("stats", false, "also publish a read-only 'stats' file: the server's metrics in the Prometheus text format (generated at each open, and notified once a second, which wakes inotify watchers of it)")
	readOnly := fl.Bool("read-only", false, "mount read-only (-o ro): writes fail with EROFS")
	metricsAddr := fl.String("metrics-addr", "", "serve the metrics of the stats file over HTTP on ADDR (host:port) at /metrics, for a Prometheus scrape")
	logFormat := fl.String("log-format", "text", "format of every line the server logs on stderr: text or json (log/slog)")
	debug := fl.Bool("debug", false, "log every FUSE request to stderr")
	foreground := fl.Bool("f", false, "stay in the foreground (the mount-helper form otherwise returns once the file is served)")
	var opts optList
	fl.Var(&opts, "o", "mount options, comma-separated, libfuse style: allow_other, ro, rw, max_size=64m, mode=0600, name=N, passthrough=auto|on|off, noopen, stats, debug, metrics_addr=ADDR, log_format=json; generic ones (dev, suid, exec, auto, noauto, user, nofail, _netdev, x-systemd.*) are ignored")
	fl.Usage = func() {} // flag calls it on every error; help is printed below
	pos, err := parseInterleaved(fl, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(fl, mountSynopsis)
			return 0
		}
		return usageError("mount", err.Error())
	}
	given, err := applyOptions(fl, opts)
	if err != nil {
		return usageError("mount", err.Error())
	}
	// spelled names a flag as the user gave it: "-o max_size" or "-max-size".
	spelled := func(flag string) string {
		if g, ok := given[flag]; ok {
			return g
		}
		return "-" + flag
	}
	if helper {
		// SOURCE is what fstab's first field and mount's device argument
		// carry; a RAM file has none, as tmpfs has none.
		if len(pos) != 2 {
			return usageError("mount", "as a mount helper give SOURCE and MOUNTPOINT, e.g. ramproc ramproc /mnt/ram -o max_size=64m")
		}
		pos = pos[1:]
	}
	if len(pos) != 1 {
		return usageError("mount", fmt.Sprintf("give exactly one MOUNTPOINT directory (got %d arguments: %q), e.g. ramproc mount /tmp/ramproc", len(pos), pos))
	}
	mountpoint := pos[0]
	if mountpoint == "" {
		return usageError("mount", "the MOUNTPOINT argument is empty; give a directory, e.g. ramproc mount /tmp/ramproc")
	}
	if err := validName(*name); err != nil {
		return usageError("mount", fmt.Sprintf("%s %q: %v", spelled("name"), *name, err))
	}
	if *stats && *name == "stats" {
		return usageError("mount", spelled("name")+" stats is the name of the -stats file; choose another name")
	}
	mode, err := strconv.ParseUint(*modeStr, 8, 32)
	if err != nil || mode > 0o7777 {
		return usageError("mount", fmt.Sprintf("%s %q is not an octal permission such as 0666", spelled("mode"), *modeStr))
	}
	capacity, err := parseSize(*maxSizeStr)
	if err != nil {
		return usageError("mount", fmt.Sprintf("%s: %v", spelled("max-size"), err))
	}
	var pt fusebridge.Passthrough
	if *noOpen && *ptStr == "auto" {
		*ptStr = "off"
	}
	switch *ptStr {
	case "auto":
		pt = fusebridge.PassthroughAuto
	case "on":
		pt = fusebridge.PassthroughRequired
	case "off":
		pt = fusebridge.PassthroughOff
	default:
		return usageError("mount", fmt.Sprintf("%s %q: use auto, on or off", spelled("passthrough"), *ptStr))
	}
	if *noOpen && pt == fusebridge.PassthroughRequired {
		return usageError("mount", "-passthrough on cannot be combined with -no-open (passthrough is set up when a file is opened, and a -no-open mount never sees an open); drop one of them")
	}
	if msg := checkMountpoint(mountpoint); msg != "" {
		return usageError("mount", msg)
	}
	if *logFormat != "text" && *logFormat != "json" {
		return usageError("mount", fmt.Sprintf("%s %q: use text or json", spelled("log-format"), *logFormat))
	}

	ready, isChild := backgroundChild()
	// A process started by a restart (restart.go) serves in the foreground
	// of its predecessor.
	inheriting := fusebridge.Inheriting()
	if helper && !*foreground && !isChild && !inheriting {
		return runInBackground()
	}

	// Catch the signals before anything is mounted, so that a signal
	// arriving at any point from here on unmounts cleanly. SIGHUP too: a
	// closed terminal or a service manager's reload must not leave a dead
	// mount behind.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	// One format for every line: the bridge's own log (warnings, or every
	// request with -debug) and this command's.
	level := slog.LevelWarn
	if *debug {
		level = slog.LevelDebug
	}
	logger := slog.New(logHandler(*logFormat, level))
	say := slog.New(logHandler(*logFormat, min(level, slog.LevelInfo)))
	fail := func(msg string, args ...any) int {
		say.Error(msg, args...)
		return 1
	}

	// Bound before mounting: an address in use must fail while there is
	// nothing to undo.
	var metricsLn net.Listener
	if *metricsAddr != "" && !inheriting {
		if metricsLn, err = net.Listen("tcp", *metricsAddr); err != nil {
			return usageError("mount", fmt.Sprintf("%s %q: %v; give a free host:port such as 127.0.0.1:9475", spelled("metrics-addr"), *metricsAddr, err))
		}
		defer metricsLn.Close()
	}

	// A restarted server adopts its predecessor's store below.
	var store *bytestore.Store
	if !inheriting {
		if store, err = bytestore.New(bytestore.Options{Capacity: capacity}); err != nil {
			return fail("cannot allocate the RAM file", "err", err)
		}
	}
	defer func() { store.Close() }()

	srv, err := fusebridge.Mount(mountpoint, fusebridge.Options{
		AllowOther:  *allowOther,
		OwnerOnly:   !*allowOther,
		Passthrough: pt,
		Logger:      logger,
		Debug:       *debug,
		NoOpen:      *noOpen,
		ReadOnly:    *readOnly,
		// No NoOpenHandlers: the stats file is fine at one request per
		// open, and without a bind mount a plain umount (or fusermount3
		// -u) stops the server.
		Space: func() fusebridge.Space {
			st, _ := store.Stat()
			return fusebridge.Space{Capacity: capacity, Used: st.Blocks * 512}
		},
		// 'ramproc restart' and SIGUSR2 (restart.go).
		Restartable: true,
		Handover:    restartHandover(*name, capacity, &store, &metricsLn),
	})
	if err != nil {
		// One line, as for every other mistake: these are about the
		// mountpoint the user gave.
		fmt.Fprintf(os.Stderr, "ramproc mount: %s\n", strings.TrimSuffix(err.Error(), ": "+fusebridge.ErrMountpointBusy.Error()))
		return exitUsage
	}
	if inheriting {
		if store, metricsLn, err = adoptStore(srv, *name, capacity, *metricsAddr); err != nil {
			say.Error(err.Error())
			return 1
		}
		if metricsLn != nil {
			defer metricsLn.Close()
		}
	}
	serving := make(chan struct{})
	file := ramfile.New(store)
	if _, err := srv.Create(*name, handler.ModeFromUnix(uint32(mode)), file); err != nil {
		srv.Unmount()
		return fail("cannot publish the RAM file", "name", *name, "err", err)
	}
	reg := newRegistry(&serverCollector{srv: srv, store: store, capacity: capacity, start: time.Now()})
	if *stats {
		se, err := srv.Create("stats", 0o444, statsHandler(reg))
		if err != nil {
			srv.Unmount()
			return fail("cannot publish the stats file", "err", err)
		}
		// The content changes every second (uptime): drop the kernel's
		// cached copy and wake inotify watchers of the file, in every mode.
		go func() {
			<-serving // after a restart, Notify talks to the kernel from Ready on
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					se.Notify()
				}
			}
		}()
	}
	if metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(metricsLn)
		defer hs.Close()
	}

	// Listening before Ready: the next 'ramproc restart' may come as soon
	// as the predecessor reports this process; it is acted on from Ready
	// on.
	startRestarts, stopRestarts := service.ServeRestarts(srv, "ramproc", say)
	defer stopRestarts()
	if err := srv.Ready(); err != nil { // a restart's: serve from here on
		say.Error(err.Error())
		return 1
	}
	startRestarts()
	close(serving)

	path := filepath.Join(srv.Mountpoint(), *name)
	// The log line first: the path on stdout is what scripts wait for,
	// so by the time it appears everything else has been said.
	if inheriting {
		say.Info("serving the RAM file after a restart", "path", path, "pid", os.Getpid())
	} else if !helper {
		say.Info("serving the RAM file; Ctrl-C unmounts", "path", path, "mode", fmt.Sprintf("%04o", mode),
			"max_size", describeSize(capacity), "io", ioPath(srv), "metrics", metricsURL(metricsLn))
		fmt.Println(path)
	}
	// Ready: for systemd (Type=notify) and for the mount helper's caller.
	// After a restart the predecessor has named this process MAINPID.
	if err := service.Notify("READY=1"); err != nil {
		say.Warn("cannot tell the service manager that the file is served", "err", err)
	}
	if isChild {
		reportReady(ready)
	}

	gone := make(chan struct{})
	go func() { srv.Wait(); close(gone) }()
	select {
	case <-ctx.Done():
	case <-gone:
		if srv.Restarted() {
			// The new process serves the mount: leave it mounted, once
			// 'ramproc restart' has its answer.
			stopRestarts()
			return 0
		}
		say.Info("unmounted from outside; stopping", "mountpoint", srv.Mountpoint())
	}
	service.Notify("STOPPING=1")
	if err := srv.Unmount(); err != nil {
		return fail("unmount failed", "err", err)
	}
	return 0
}

// logHandler is slog's text or JSON handler on stderr.
func logHandler(format string, level slog.Level) slog.Handler {
	o := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.NewJSONHandler(os.Stderr, o)
	}
	return slog.NewTextHandler(os.Stderr, o)
}

func metricsURL(ln net.Listener) string {
	if ln == nil {
		return "off"
	}
	return "http://" + ln.Addr().String() + "/metrics"
}

// validName accepts a file name that prints on one line and is one path
// component: no control characters, no '/', not "." or "..", at most 255
// bytes (NAME_MAX).
func validName(name string) error {
	switch {
	case name == "":
		return errors.New("the file name is empty; give a name such as ramfile")
	case name == "." || name == "..":
		return errors.New("is not a file name; give a name such as ramfile")
	case len(name) > 255:
		return fmt.Errorf("is %d bytes long; file names are at most 255 bytes", len(name))
	case strings.Contains(name, "/"):
		return errors.New("contains '/'; the file lives directly in MOUNTPOINT, give a plain name")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return errors.New("contains a control character; give a name that prints on one line")
		}
	}
	return nil
}

func ioPath(srv *fusebridge.Server) string {
	if srv.Passthrough() {
		return "kernel passthrough"
	}
	return "I/O forwarded through this process"
}

// printHelp prints a command's synopsis and its flags to stderr.
func printHelp(fl *flag.FlagSet, synopsis string) {
	fmt.Fprintf(os.Stderr, "%s\n\nflags:\n", synopsis)
	fl.SetOutput(os.Stderr)
	fl.PrintDefaults()
	fl.SetOutput(io.Discard)
}

// checkMountpoint says what is wrong with a mountpoint that cannot serve,
// before anything is set up: a file that is not a directory, or a place in
// /proc or /sys, where no directory can be created and a mount would hide
// the kernel's own files. "" when nothing is.
//
// It must not ask a FUSE server: the mountpoint may be this very mount, held
// by a keeper while its server is dead (a crash restart, crash.go in
// fusebridge), where stat(2) or statfs(2) would wait for an answer that only
// this process can give. So the type comes from the attributes the kernel
// has cached (AT_STATX_DONT_SYNC) and the file system from mountinfo.
func checkMountpoint(mnt string) string {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, mnt, unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE, &st); err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		what := "is not a directory"
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			what = "is a regular file, not a directory"
		}
		return fmt.Sprintf("MOUNTPOINT %s %s; give a directory (it is created if missing), e.g. ramproc mount /tmp/ramproc", mnt, what)
	}
	switch fsTypeOf(mnt) {
	case "proc", "sysfs":
		return fmt.Sprintf("MOUNTPOINT %s is in /proc or /sys, the kernel's own files, where a mount would hide them; give a directory elsewhere, e.g. ramproc mount /tmp/ramproc", mnt)
	}
	return ""
}

// fsTypeOf is the type of the file system that holds path (or would hold
// it, when it is to be created) by /proc/self/mountinfo: the mount whose
// mount point is the longest leading part of path. "" when unknown.
func fsTypeOf(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return ""
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	best, typ := -1, ""
	for _, line := range strings.Split(string(b), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 1 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if (abs == mp || mp == "/" || strings.HasPrefix(abs, mp+"/")) && len(mp) >= best {
			best, typ = len(mp), g[0]
		}
	}
	return typ
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				out.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}

// usageError prints a one-line error that says what to do and returns the
// usage exit status.
func usageError(cmd, msg string) int {
	fmt.Fprintf(os.Stderr, "ramproc %s: %s (run 'ramproc %s -h' for help)\n", cmd, msg, cmd)
	return exitUsage
}
