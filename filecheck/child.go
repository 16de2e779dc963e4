package filecheck

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// childEnv is the environment variable that makes a process a filecheck
// child; its value names the role.
const childEnv = "FILECHECK_CHILD"

func init() { MaybeRunChild() }

// MaybeRunChild turns the process into a filecheck child process and exits
// when it was started as one (by Run, through os.Executable() with the
// environment variable FILECHECK_CHILD set); otherwise it returns at once.
//
// The package's init function already calls it, so importing filecheck is
// enough for a program, or a test binary, to serve as its own child. It is
// exported so that a main or TestMain can call it first thing and make the
// dependency visible; calling it more than once is harmless.
func MaybeRunChild() {
	if os.Getenv(childEnv) != "worker" {
		return
	}
	if as := os.Getenv(childAsEnv); as != "" {
		if err := dropTo(as); err != nil {
			fmt.Fprintf(os.Stderr, "filecheck child: cannot become %s: %v\n", as, err)
			os.Exit(3)
		}
	}
	os.Exit(workerMain(os.Stdin, os.Stdout))
}

// request is one order to a child process, sent as a JSON line.
type request struct {
	Op       string `json:"op"`
	Path     string `json:"path,omitempty"`
	Flags    int    `json:"flags,omitempty"`
	Off      int64  `json:"off,omitempty"`
	Len      int64  `json:"len,omitempty"`
	Data     []byte `json:"data,omitempty"`
	ID       int    `json:"id,omitempty"`
	Prot     int    `json:"prot,omitempty"`
	MapFlags int    `json:"map_flags,omitempty"`
	Proc     int    `json:"proc,omitempty"`
	Procs    int    `json:"procs,omitempty"`
	Count    int    `json:"count,omitempty"`
	Size     int64  `json:"size,omitempty"`
	StartAt  int64  `json:"start_at,omitempty"` // wall clock, Unix nanoseconds
}

// response is a child's answer, a JSON line.
type response struct {
	N      int64          `json:"n"`
	Errno  int            `json:"errno,omitempty"`
	Fault  string         `json:"fault,omitempty"`
	Data   []byte         `json:"data,omitempty"`
	Counts map[string]int `json:"counts,omitempty"`
	Msg    string         `json:"msg,omitempty"`
}

func errnoOf(err error) int {
	var e unix.Errno
	if errors.As(err, &e) {
		return int(e)
	}
	return int(unix.EIO)
}

// workerMain serves requests from in until it closes.
func workerMain(in io.Reader, out io.Writer) int {
	var stop atomic.Bool
	reqs := make(chan request)
	go func() {
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 1<<20), 1<<30)
		for sc.Scan() {
			var req request
			if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
				fmt.Fprintf(os.Stderr, "filecheck child: bad request: %v\n", err)
				os.Exit(3)
			}
			if req.Op == "stop" {
				stop.Store(true)
				continue
			}
			stop.Store(false) // a stop applies to the requests before it
			reqs <- req
		}
		close(reqs)
	}()
	w := &childWorker{maps: map[int][]byte{}, stop: &stop}
	enc := json.NewEncoder(out)
	for req := range reqs {
		resp := w.serve(req)
		if err := enc.Encode(resp); err != nil {
			return 3
		}
	}
	return 0
}

type childWorker struct {
	maps   map[int][]byte
	nextID int
	stop   *atomic.Bool
}

func (w *childWorker) serve(req request) response {
	switch req.Op {
	case "ping":
		return response{N: int64(os.Getpid())}
	case "map":
		fd, err := unix.Open(req.Path, req.Flags|unix.O_CLOEXEC, 0)
		if err != nil {
			return response{N: -1, Errno: errnoOf(err), Msg: "open"}
		}
		defer unix.Close(fd)
		m, err := unix.Mmap(fd, req.Off, int(req.Len), req.Prot, req.MapFlags)
		if err != nil {
			return response{N: -1, Errno: errnoOf(err), Msg: "mmap"}
		}
		w.nextID++
		w.maps[w.nextID] = m
		return response{N: int64(w.nextID)}
	case "mread":
		m, ok := w.maps[req.ID]
		if !ok || req.Off < 0 || req.Off+req.Len > int64(len(m)) {
			return response{N: -1, Msg: "bad mapping range"}
		}
		buf := make([]byte, req.Len)
		if f := guard(func() { copy(buf, m[req.Off:req.Off+req.Len]) }); f != "" {
			return response{N: -1, Fault: f}
		}
		return response{N: req.Len, Data: buf}
	case "mwrite":
		m, ok := w.maps[req.ID]
		if !ok || req.Off < 0 || req.Off+int64(len(req.Data)) > int64(len(m)) {
			return response{N: -1, Msg: "bad mapping range"}
		}
		if f := guard(func() { copy(m[req.Off:], req.Data) }); f != "" {
			return response{N: -1, Fault: f}
		}
		return response{N: int64(len(req.Data))}
	case "msync":
		m, ok := w.maps[req.ID]
		if !ok {
			return response{N: -1, Msg: "bad mapping"}
		}
		if err := unix.Msync(m, req.Flags); err != nil {
			return response{N: -1, Errno: errnoOf(err)}
		}
		return response{}
	case "munmap":
		m, ok := w.maps[req.ID]
		if !ok {
			return response{N: -1, Msg: "bad mapping"}
		}
		delete(w.maps, req.ID)
		if err := unix.Munmap(m); err != nil {
			return response{N: -1, Errno: errnoOf(err)}
		}
		return response{}
	case "mapop":
		return w.mapOnce(req)
	case "append":
		return w.appendRecords(req)
	case "stripes":
		return w.writeStripes(req)
	case "writeloop":
		return w.writeLoop(req)
	case "writekeep":
		return w.writeKeep(req)
	case "mapfill":
		return mapFill(req)
	case "userop":
		return userOp(req)
	case "roundtrip":
		return roundTrip(req.Path, req.Data)
	}
	return response{N: -1, Msg: "unknown request " + req.Op}
}

// guard runs f, turning a memory fault (SIGBUS past the end of a mapped
// file, SIGSEGV) into a description instead of a crash.
func guard(f func()) (fault string) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if v := recover(); v != nil {
			if _, ok := v.(interface{ Addr() uintptr }); ok {
				fault = "memory fault (SIGBUS)"
				return
			}
			panic(v)
		}
	}()
	f()
	return ""
}

// mapOnce maps a range of a file, reads it (Data empty) or writes Data to
// it, and unmaps it again. Off is the file offset; the mapping starts at
// the page below it.
func (w *childWorker) mapOnce(req request) response {
	page := int64(os.Getpagesize())
	base := req.Off &^ (page - 1)
	n := req.Len
	if req.Data != nil {
		n = int64(len(req.Data))
	}
	fd, err := unix.Open(req.Path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return response{N: -1, Errno: errnoOf(err), Msg: "open"}
	}
	defer unix.Close(fd)
	m, err := unix.Mmap(fd, base, int(req.Off-base+n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return response{N: -1, Errno: errnoOf(err), Msg: "mmap"}
	}
	defer unix.Munmap(m)
	rel := req.Off - base
	if req.Data != nil {
		if f := guard(func() { copy(m[rel:], req.Data) }); f != "" {
			return response{N: -1, Fault: f}
		}
		return response{N: n}
	}
	buf := make([]byte, n)
	if f := guard(func() { copy(buf, m[rel:rel+n]) }); f != "" {
		return response{N: -1, Fault: f}
	}
	return response{N: n, Data: buf}
}

// waitUntil sleeps until the wall clock reaches t (Unix nanoseconds), so
// that children told to start together do.
func waitUntil(t int64) {
	if d := time.Until(time.Unix(0, t)); d > 0 {
		time.Sleep(d)
	}
}

// appendRecords writes Count records of process Proc with O_APPEND, one
// write(2) each.
func (w *childWorker) appendRecords(req request) response {
	fd, err := unix.Open(req.Path, unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0)
	if err != nil {
		return response{N: -1, Errno: errnoOf(err), Msg: "open"}
	}
	defer unix.Close(fd)
	waitUntil(req.StartAt)
	counts := map[string]int{}
	var done int64
	for seq := 0; seq < req.Count; seq++ {
		rec := record(req.Proc, seq)
		n, err := unix.Write(fd, rec)
		switch {
		case err != nil:
			counts[errnoName(unix.Errno(errnoOf(err)))]++
		case n != len(rec):
			counts["short write"]++
		default:
			done++
		}
	}
	return response{N: done, Counts: counts}
}

// writeStripes pwrites the stripes j ≡ Proc (mod Procs), j < Count*Procs,
// of Size bytes each, in a shuffled order.
func (w *childWorker) writeStripes(req request) response {
	fd, err := unix.Open(req.Path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return response{N: -1, Errno: errnoOf(err), Msg: "open"}
	}
	defer unix.Close(fd)
	order := rand.New(rand.NewPCG(uint64(req.Proc), 7)).Perm(req.Count)
	waitUntil(req.StartAt)
	counts := map[string]int{}
	var done int64
	for _, k := range order {
		j := k*req.Procs + req.Proc
		data := stripe(j, int(req.Size))
		n, err := unix.Pwrite(fd, data, int64(j)*req.Size)
		switch {
		case err != nil:
			counts[errnoName(unix.Errno(errnoOf(err)))]++
		case n != len(data):
			counts["short write"]++
		default:
			done++
		}
	}
	return response{N: done, Counts: counts}
}

// writeLoop opens Path, appends Data and closes it again, over and over,
// until told to stop (or Len milliseconds passed), counting the outcomes.
func (w *childWorker) writeLoop(req request) response {
	counts := map[string]int{}
	deadline := time.Now().Add(time.Duration(req.Len) * time.Millisecond)
	for !w.stop.Load() && time.Now().Before(deadline) {
		fd, err := unix.Open(req.Path, unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0)
		if err != nil {
			counts["open "+errnoName(unix.Errno(errnoOf(err)))]++
			time.Sleep(2 * time.Millisecond)
			continue
		}
		countWrite(counts, fd, req.Data)
		if err := unix.Close(fd); err != nil {
			counts["close "+errnoName(unix.Errno(errnoOf(err)))]++
		}
		time.Sleep(2 * time.Millisecond)
	}
	return response{Counts: counts}
}

// writeKeep is writeLoop through one descriptor, opened once: the restart
// mode of seed/reload, where descriptors must keep working.
func (w *childWorker) writeKeep(req request) response {
	counts := map[string]int{}
	fd, err := unix.Open(req.Path, unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0)
	if err != nil {
		counts["open "+errnoName(unix.Errno(errnoOf(err)))]++
		return response{Counts: counts}
	}
	deadline := time.Now().Add(time.Duration(req.Len) * time.Millisecond)
	for !w.stop.Load() && time.Now().Before(deadline) {
		countWrite(counts, fd, req.Data)
		time.Sleep(2 * time.Millisecond)
	}
	if err := unix.Close(fd); err != nil {
		counts["close "+errnoName(unix.Errno(errnoOf(err)))]++
	}
	return response{Counts: counts}
}

// countWrite writes data to fd and counts the outcome.
func countWrite(counts map[string]int, fd int, data []byte) {
	n, err := unix.Write(fd, data)
	switch {
	case err != nil:
		counts["write "+errnoName(unix.Errno(errnoOf(err)))]++
	case n != len(data):
		counts["write short"]++
	default:
		counts["write ok"]++
	}
}

// roundTrip empties path, writes data and reads it back.
func roundTrip(path string, data []byte) response {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return response{N: -1, Errno: errnoOf(err), Msg: "open(O_RDWR)"}
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 0); err != nil {
		return response{N: -1, Errno: errnoOf(err), Msg: "ftruncate(0)"}
	}
	if n, err := unix.Pwrite(fd, data, 0); err != nil || n != len(data) {
		return response{N: -1, Errno: errnoOf(err), Msg: fmt.Sprintf("pwrite(%d bytes, 0) = %d", len(data), n)}
	}
	buf := make([]byte, len(data)+10)
	n, err := unix.Pread(fd, buf, 0)
	if err != nil {
		return response{N: -1, Errno: errnoOf(err), Msg: "pread"}
	}
	if !bytes.Equal(buf[:n], data) {
		return response{N: -1, Msg: fmt.Sprintf("pread returned %d bytes %s after writing %s", n, summarize(buf[:n], 40), summarize(data, 40))}
	}
	unix.Ftruncate(fd, 0)
	return response{N: int64(n)}
}

// record is the seq'th record of process proc for the append checks: a
// self-describing header, a filler that depends on both, and a newline.
// Lengths vary from a few bytes to more than two pages.
func record(proc, seq int) []byte {
	h := uint32(proc*1000003+seq*7919) * 2654435761
	n := 24 + int(h>>8)%400
	if h%8 == 0 {
		n = 4000 + int(h>>8)%5000
	}
	b := make([]byte, n)
	hdr := fmt.Sprintf("<%d:%d:%d|", proc, seq, n)
	copy(b, hdr)
	for i := len(hdr); i < n-2; i++ {
		b[i] = 'a' + byte((proc*7+seq*13+i)%26)
	}
	b[n-2], b[n-1] = '>', '\n'
	return b
}

// parseRecords checks that data is a sequence of whole records and counts
// them by (proc, seq). It returns at most a few problems.
func parseRecords(data []byte) (found map[[2]int]int, problems []string) {
	found = map[[2]int]int{}
	add := func(format string, args ...any) {
		if len(problems) < 5 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	at := func(i int) (key [2]int, n int, ok bool) {
		var proc, seq int
		if _, err := fmt.Sscanf(string(data[i:min(len(data), i+40)]), "<%d:%d:%d|", &proc, &seq, &n); err != nil {
			return key, 0, false
		}
		if n <= 0 || i+n > len(data) || proc < 0 || seq < 0 || !bytes.Equal(data[i:i+n], record(proc, seq)) {
			return key, 0, false
		}
		return [2]int{proc, seq}, n, true
	}
	for i := 0; i < len(data); {
		if key, n, ok := at(i); ok {
			found[key]++
			i += n
			continue
		}
		// Resynchronise at the next whole record.
		j := i + 1
		for ; j < len(data); j++ {
			if data[j] == '<' {
				if _, _, ok := at(j); ok {
					break
				}
			}
		}
		add("bytes %d..%d are not whole records: %s", i, j, summarize(data[i:min(j, i+40)], 50))
		i = j
	}
	return found, problems
}

// stripe is the contents of stripe j of the pwrite checks.
func stripe(j, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte('A' + (j*31+i/64)%26)
	}
	b[0] = byte('0' + j%10)
	return b
}

// worker is the parent's end of a child process.
type worker struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	enc    *json.Encoder
	resps  chan response
	stderr *lockedBuffer
	dead   atomic.Bool
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 64<<10 {
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startWorker starts a child process and waits for it to answer.
func startWorker(timeout time.Duration) (*worker, error) {
	return startWorkerWith(timeout, nil, nil)
}

// startWorkerWith starts a child process with extra environment variables
// and extra descriptors (3, 4, ... in the child).
func startWorkerWith(timeout time.Duration, env []string, extra []*os.File) (*worker, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("cannot find this program to start a child process: %v", err)
	}
	cmd := exec.Command(exe, "filecheck-child")
	cmd.Env = append(os.Environ(), childEnv+"=worker")
	// A binary built with -race sleeps a second at exit unless told not to.
	race := "atexit_sleep_ms=0"
	if g := os.Getenv("GORACE"); g != "" {
		race = g + " " + race
	}
	cmd.Env = append(cmd.Env, "GORACE="+race)
	cmd.Env = append(cmd.Env, env...)
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	w := &worker{cmd: cmd, resps: make(chan response, 1), stderr: &lockedBuffer{}}
	cmd.Stderr = w.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start a child process (%s): %v", exe, err)
	}
	w.stdin, w.enc = stdin, json.NewEncoder(stdin)
	go func() {
		dec := json.NewDecoder(stdout)
		for {
			var r response
			if err := dec.Decode(&r); err != nil {
				close(w.resps)
				return
			}
			w.resps <- r
		}
	}()
	if _, err := w.call(request{Op: "ping"}, timeout); err != nil {
		w.kill()
		return nil, fmt.Errorf("child process %s did not answer: %v (a program that runs filecheck must import it, so that its init turns the child into a worker)", exe, err)
	}
	return w, nil
}

// send writes a request without waiting for the answer.
func (w *worker) send(req request) error {
	if w.dead.Load() {
		return errors.New("child process is gone")
	}
	return w.enc.Encode(req)
}

// recv waits at most timeout for the next answer; on timeout it kills the
// child.
func (w *worker) recv(timeout time.Duration) (response, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r, ok := <-w.resps:
		if !ok {
			w.kill()
			return response{}, fmt.Errorf("child process died: %s", lastLine(w.stderr.String()))
		}
		return r, nil
	case <-t.C:
		w.kill()
		return response{}, fmt.Errorf("child process did not answer within %v and was killed (a system call on the file hung?)", timeout.Round(time.Millisecond))
	}
}

// call sends a request and waits for its answer.
func (w *worker) call(req request, timeout time.Duration) (response, error) {
	if err := w.send(req); err != nil {
		return response{}, err
	}
	return w.recv(timeout)
}

// kill ends the child process.
func (w *worker) kill() {
	if w.dead.Swap(true) {
		return
	}
	w.cmd.Process.Kill()
	go w.cmd.Wait()
}

// close asks the child to exit and waits a little for it.
func (w *worker) close() {
	if w.dead.Swap(true) {
		return
	}
	w.stdin.Close()
	done := make(chan struct{})
	go func() { w.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		w.cmd.Process.Kill()
	}
}

func lastLine(s string) string {
	s = string(bytes.TrimSpace([]byte(s)))
	if i := bytes.LastIndexByte([]byte(s), '\n'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return "no message"
	}
	return s
}

// worker returns child process i, starting it if needed.
func (r *runner) worker(i int) (*worker, error) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	for len(r.workers) <= i {
		r.workers = append(r.workers, nil)
	}
	if w := r.workers[i]; w != nil && !w.dead.Load() {
		return w, nil
	}
	w, err := startWorker(r.cfg.CommandTimeout)
	if err != nil {
		return nil, err
	}
	r.workers[i] = w
	return w, nil
}

func (r *runner) closeWorkers() {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	var wg sync.WaitGroup
	for _, w := range r.workers {
		if w != nil {
			wg.Add(1)
			go func() { defer wg.Done(); w.close() }()
		}
	}
	wg.Wait()
	r.workers = nil
}

// unmapQuiet removes a mapping of worker 0, ignoring errors.
func (r *runner) unmapQuiet(id int) {
	r.wmu.Lock()
	var w *worker
	if len(r.workers) > 0 {
		w = r.workers[0]
	}
	r.wmu.Unlock()
	if w != nil && !w.dead.Load() {
		w.call(request{Op: "munmap", ID: id}, r.cfg.CommandTimeout)
	}
}
