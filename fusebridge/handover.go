package fusebridge

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// This file restarts a server without a trace (Options.Restartable): the
// running process starts the binary that is on disk now and hands it every
// FUSE connection, what the kernel holds of each (restartfs.go), the
// mountpoint's claim and the program's own state; the new process serves
// the same mount, and the old one exits. A FUSE connection lives as long as
// one process holds its /dev/fuse descriptor, and requests wait in the
// kernel while nobody reads them, so no reader or writer notices.
//
// The exchange, over a socket pair the old process gives the new one as
// handoverEnv:
//
//	new -> old  hello                   the new process runs
//	            (old: the gate of every connection closes: requests in
//	            the bridge finish, new ones are held unanswered)
//	old -> new  state + descriptors     connections, nodes, handles, claim,
//	                                    the program's state (Options.Handover)
//	            (new: Mount adopts the connections, the program publishes
//	            its tree, Ready opens every node and handle again)
//	new -> old  accept | refuse REASON  a refusal reopens the old gates:
//	                                    the old process goes on serving
//	old -> new  go
//	new -> old  taken                   the new process holds the claim:
//	                                    the old Server's Wait returns and
//	                                    its program exits
//	            (new: serves; once the old process has exited, it asks the
//	            kernel to resend what the old one read and never answered,
//	            FUSE_NOTIFY_RESEND)
//
// Nothing is answered twice: the old process answers nothing it reads
// once its gates are closed, and the new one is sent again exactly those
// requests.

// handoverFormat names the layout of the handed-over state. A new process
// refuses a state of another format. A variable, not a constant, so that a
// test can build a binary that speaks another one (-ldflags -X).
var handoverFormat = "fusebridge-handover/1"

// handoverEnv names the descriptor of the handover socket in a process
// started by Restart.
const handoverEnv = "FUSEBRIDGE_HANDOVER_FD"

// handoverTimeout bounds each wait of the exchange: a new process that
// says nothing for this long is killed and the old one goes on.
const handoverTimeout = 60 * time.Second

// quiesceTimeout bounds the wait for the requests in the bridge to finish
// (a blocking stream read may never finish by itself): the restart then
// fails and the old process goes on serving.
const quiesceTimeout = 5 * time.Second

// restartState is a Server's part in restarts.
type restartState struct {
	rfs   *restartFS // the connection's gate and tables; nil unless Restartable
	devFd int        // the connection's /dev/fuse descriptor; -1 if unknown
	// minor is the FUSE protocol minor the kernel spoke at INIT (go-fuse
	// does not know it in a process that adopted the connection).
	minor uint32

	mu         sync.Mutex // one restart at a time
	handedOver chan struct{}
	done       bool

	// Set while a new process adopts the connection (before Ready).
	in    *inheritance
	adopt *connState
	mo    fuse.MountOptions
	inos  map[string]uint64 // path -> inode number the kernel knows it by
	binds map[string]bool   // paths the old process had bound (split.go)
}

// handoverMsg is one message of the exchange.
type handoverMsg struct {
	Kind   string // hello, state, accept, refuse, go
	Pid    int    `json:",omitempty"`
	Reason string `json:",omitempty"`
	State  *handoverState
}

// handoverState is what the new process is given.
type handoverState struct {
	Format      string
	Mountpoint  string
	Settings    string // settingsOf: what the connections were set up with
	Epoch       uint64
	NextIno     uint64
	Passthrough bool
	KernelMinor uint32 // FUSE protocol minor of the kernel's INIT
	Claim       int    // index of the claim's descriptor, or -1
	Conns       []connState
	Bound       []string
	Program     []byte
	Files       []int // indexes of the program's descriptors
	// Strict: the connection was adopted after a crash, and the kernel
	// may hold more lookups than the tables count (crash.go).
	Strict bool `json:",omitempty"`
}

// connState is one connection: its descriptors (indexes into the
// descriptors sent) and what the kernel holds of it.
type connState struct {
	Fd       int
	MountFd  int
	ConnID   uint32
	MaxWrite int
	Nodes    []nodeState
	Orphans  map[uint64]uint64 `json:",omitempty"`
	Handles  []handleState
	Backing  map[uint64]int32 `json:",omitempty"`
	Stale    []int32          `json:",omitempty"` // backing IDs no descriptor uses
}

type nodeState struct {
	ID, Parent uint64
	Name       string
	N          uint64
}

type handleState struct {
	Fh, Node uint64
	Flags    uint32
	Dir      bool `json:",omitempty"`
	Backing  int32
	Orphan   bool `json:",omitempty"`
	// PerOpen: Backing is this descriptor's own (perop.go), not its node's.
	PerOpen bool `json:",omitempty"`
}

// settingsOf names the options a connection was set up with; a new process
// must be given the same to serve it.
func settingsOf(o Options) string {
	return fmt.Sprintf("noopen=%v noopen_handlers=%v passthrough=%d ro=%v allow_other=%v attr_timeout=%v maxwrite=%d",
		o.NoOpen, o.NoOpenHandlers, o.Passthrough, o.ReadOnly, o.AllowOther, o.AttrTimeout, o.maxWrite())
}

// Inheriting reports whether this process was started by a restart and
// will adopt a mount (Mount with Options.Restartable) instead of making
// one. A program that keeps state across restarts checks it before it
// builds that state afresh.
func Inheriting() bool {
	return os.Getenv(handoverEnv) != "" || inherit.in != nil || crashInheriting()
}

// Restart hands the mount over to a new process running the binary that is
// on disk now, with the same arguments, and returns its pid once it
// serves; the caller's program then exits (Wait returns; Unmount must not
// be called). On any error, including a refusal by the new process, this
// server goes on serving as before.
func (s *Server) Restart() (pid int, err error) {
	if !s.opts.Restartable {
		return 0, errors.New("fusebridge: the mount was not made with Options.Restartable")
	}
	s.rs.mu.Lock()
	defer s.rs.mu.Unlock()
	if s.rs.done {
		return 0, errors.New("fusebridge: the mount has already been handed over")
	}
	if s.rs.adopt != nil {
		return 0, errors.New("fusebridge: the server does not serve yet (Ready has not returned)")
	}
	if s.rs.minor < 40 {
		return 0, fmt.Errorf("fusebridge: a restart needs the kernel to resend what the old process read (FUSE_NOTIFY_RESEND, protocol 7.40, Linux >= 6.9); this kernel speaks 7.%d", s.rs.minor)
	}
	conns := s.connections()
	for _, c := range conns {
		if c.rs.rfs == nil || c.rs.devFd < 0 {
			return 0, errors.New("fusebridge: this server cannot tell which /dev/fuse descriptor serves its mount (several mounts were being made at once); it cannot be restarted")
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("fusebridge: restart: cannot find the program: %w", err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("fusebridge: restart: %w", err)
	}
	sock := pair[0]
	defer unix.Close(sock)
	setTimeout(sock)
	peer := os.NewFile(uintptr(pair[1]), "handover")
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), handoverEnv+"=3")
	cmd.ExtraFiles = []*os.File{peer}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Start()
	peer.Close()
	if err != nil {
		return 0, fmt.Errorf("fusebridge: restart: start %s: %w", exe, err)
	}
	committed := false
	defer func() {
		if !committed {
			cmd.Process.Kill()
		}
		go cmd.Wait() // reaps a refused child; outlives a committed one
	}()
	var hello handoverMsg
	if _, err := recvMsg(sock, &hello); err != nil || hello.Kind != "hello" {
		return 0, fmt.Errorf("fusebridge: restart: the new process (%s) did not start: %v", exe, errOr(err, hello))
	}

	// The clean point: nothing in the bridge, everything else held.
	unlock, err := quiesce(conns)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	st, fds, keep, err := s.handoverState()
	if err == nil {
		err = sendMsg(sock, handoverMsg{Kind: "state", State: st}, fds)
	}
	runtime.KeepAlive(keep) // the program's descriptors, until sent
	var reply handoverMsg
	if err == nil {
		_, err = recvMsg(sock, &reply)
	}
	if err == nil && reply.Kind != "accept" {
		err = fmt.Errorf("the new process refused the state: %s", reply.Reason)
	}
	if err == nil {
		err = sendMsg(sock, handoverMsg{Kind: "go"}, nil)
	}
	if err != nil {
		unlock()
		s.log.Warn("restart failed; still serving", "err", err, "held", time.Since(start))
		return 0, fmt.Errorf("fusebridge: restart: %w", err)
	}
	committed = true
	// The new process has taken the claim once it says so: from then on
	// ServerPID names it.
	var taken handoverMsg
	if _, err := recvMsg(sock, &taken); err != nil || taken.Kind != "taken" {
		s.log.Warn("the new process did not confirm that it took the mount over", "err", errOr(err, taken))
	}
	for _, c := range conns {
		c.rs.done = true
		close(c.rs.handedOver)
	}
	s.log.Info("handed over", "pid", cmd.Process.Pid, "held", time.Since(start))
	return cmd.Process.Pid, nil
}

func errOr(err error, m handoverMsg) any {
	if err != nil {
		return err
	}
	if m.Kind == "refuse" {
		return m.Reason
	}
	return "unexpected message " + m.Kind
}

// Restarted reports whether the server was handed over to a new process.
func (s *Server) Restarted() bool {
	select {
	case <-s.rs.handedOver:
		return true
	default:
		return false
	}
}

// connections lists s's connections, the main one first.
func (s *Server) connections() []*Server {
	if s.companion != nil {
		return []*Server{s, s.companion}
	}
	return []*Server{s}
}

// quiesce closes the gate of every connection, waiting for the requests in
// the bridge to finish, and returns the function that opens them again.
func quiesce(conns []*Server) (unlock func(), err error) {
	var locked []*restartFS
	unlock = func() {
		for _, r := range locked {
			r.gate.Unlock()
		}
	}
	for _, c := range conns {
		r := c.rs.rfs
		got := make(chan struct{})
		go func() { r.gate.Lock(); close(got) }()
		select {
		case <-got:
			locked = append(locked, r)
		case <-time.After(quiesceTimeout):
			go func() { <-got; r.gate.Unlock() }()
			unlock()
			return nil, fmt.Errorf("fusebridge: restart: a request has been running for %v (a blocking read?); not restarting", quiesceTimeout)
		}
	}
	return unlock, nil
}

// handoverState takes the state, with the gates closed, and the descriptors
// that go with it.
func (s *Server) handoverState() (*handoverState, []int, []*os.File, error) {
	var fds []int
	add := func(fd int) int { fds = append(fds, fd); return len(fds) - 1 }
	s.mu.RLock()
	st := &handoverState{
		Format:      handoverFormat,
		Mountpoint:  s.mnt,
		Settings:    settingsOf(s.opts),
		Epoch:       s.rs.rfs.epoch,
		NextIno:     s.nextIno,
		Passthrough: s.passthrough.Load(),
		KernelMinor: s.rs.minor,
		Claim:       -1,
		Strict:      s.rs.rfs.strict,
	}
	s.mu.RUnlock()
	if s.companion != nil {
		s.companion.mu.RLock()
		st.NextIno = max(st.NextIno, s.companion.nextIno)
		s.companion.mu.RUnlock()
	}
	for _, c := range s.connections() {
		cs := c.rs.rfs.snapshot()
		cs.Fd = add(c.rs.devFd)
		cs.MountFd = -1
		if c.mountFd >= 0 {
			cs.MountFd = add(c.mountFd)
		}
		cs.ConnID = c.connID
		cs.MaxWrite = c.opts.maxWrite()
		st.Conns = append(st.Conns, cs)
	}
	if s.claim != nil && s.claim.fd >= 0 {
		st.Claim = add(s.claim.fd)
	}
	st.Bound = s.boundPaths()
	if s.opts.Handover != nil {
		data, files, err := s.opts.Handover()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("the program's state: %w", err)
		}
		st.Program = data
		for _, f := range files {
			st.Files = append(st.Files, add(int(f.Fd())))
		}
		return st, fds, files, nil
	}
	return st, fds, nil, nil
}

// boundPaths lists the entries bind-mounted from the companion.
func (s *Server) boundPaths() []string {
	s.bindMu.Lock()
	defer s.bindMu.Unlock()
	var out []string
	var walk func(*Dir)
	walk = func(d *Dir) {
		for _, c := range d.sortedChildren() {
			if c.bound {
				out = append(out, c.Path())
			}
			if c.dir != nil {
				walk(c.dir)
			}
		}
	}
	walk(s.rootDir)
	return out
}

// snapshot lists what the kernel holds of the connection.
func (r *restartFS) snapshot() connState {
	r.mu.Lock()
	defer r.mu.Unlock()
	cs := connState{Orphans: map[uint64]uint64{}, Backing: map[uint64]int32{}}
	for id, n := range r.nodes {
		cs.Nodes = append(cs.Nodes, nodeState{ID: id, Parent: n.parent, Name: n.name, N: n.n})
	}
	for id, n := range r.orphans {
		cs.Orphans[id] = n
	}
	for id, b := range r.backing {
		cs.Backing[id] = b
	}
	stale := map[int32]bool{}
	for fh, h := range r.handles {
		cs.Handles = append(cs.Handles, handleState{Fh: fh, Node: h.node, Flags: h.flags, Dir: h.dir, Backing: h.backing, Orphan: h.orphan, PerOpen: h.perOpen})
		if h.backing != 0 && !h.perOpen {
			if _, ok := cs.Backing[h.node]; !ok {
				cs.Backing[h.node] = h.backing
			}
		}
		if h.own != 0 {
			stale[h.own] = true
		}
	}
	for id := range stale {
		cs.Stale = append(cs.Stale, id)
	}
	return cs
}

// inheritance is the new process's side of the exchange.
type inheritance struct {
	sock  int
	st    *handoverState
	fds   []int
	old   int // pidfd of the old process, or -1
	taken bool
	crash bool // the old process died: no exchange (crash.go)
	// kept is, after a crash, what the keeper holds: a duplicate of each
	// descriptor it gave, by its name, and its crash record (the memfd,
	// and the sequence number of its newest version) or -1. The new
	// process re-keeps none of those it still uses (keepForCrash).
	kept      map[string]int
	record    int
	recordSeq uint64
}

// inherit holds the state this process was started with, once read.
var inherit struct {
	once sync.Once
	in   *inheritance
	err  error
}

// inherited receives the state, once per process; nil when the process was
// not started by a restart.
func inherited() (*inheritance, error) {
	inherit.once.Do(func() {
		v := os.Getenv(handoverEnv)
		if v == "" {
			return
		}
		os.Unsetenv(handoverEnv) // not for the programs it starts
		fd, err := strconv.Atoi(v)
		if err != nil {
			inherit.err = fmt.Errorf("fusebridge: %s=%q is not a descriptor", handoverEnv, v)
			return
		}
		unix.CloseOnExec(fd)
		setTimeout(fd)
		in := &inheritance{sock: fd, old: -1}
		// Opened now, while the old process is certainly alive: its pid
		// cannot have been reused.
		if pfd, err := unix.PidfdOpen(os.Getppid(), 0); err == nil {
			in.old = pfd
		}
		if err := sendMsg(fd, handoverMsg{Kind: "hello", Pid: os.Getpid()}, nil); err != nil {
			inherit.err = fmt.Errorf("fusebridge: handover: %w", err)
			return
		}
		var m handoverMsg
		fds, err := recvMsg(fd, &m)
		if err != nil || m.Kind != "state" || m.State == nil {
			inherit.err = fmt.Errorf("fusebridge: handover: no state from the old process: %v", errOr(err, m))
			return
		}
		in.st, in.fds = m.State, fds
		inherit.in = in
		if m.State.Format != handoverFormat {
			inherit.err = in.refuse(fmt.Errorf("the running server hands over %q, which this binary does not understand (it reads %q); stop the old server and mount afresh", m.State.Format, handoverFormat))
			inherit.in = nil
		}
	})
	return inherit.in, inherit.err
}

// refuse tells the old process that the state is not taken, closes every
// descriptor received, and returns the reason as the error to report.
func (in *inheritance) refuse(reason error) error {
	sendMsg(in.sock, handoverMsg{Kind: "refuse", Reason: reason.Error()}, nil)
	unix.Close(in.sock)
	for _, fd := range in.fds {
		unix.Close(fd)
	}
	in.fds = nil
	return fmt.Errorf("fusebridge: refusing the handover: %w", reason)
}

// adoptMount is Mount in a process started by a restart: it takes the
// connections over instead of mounting. They are served from Ready on.
func adoptMount(mnt string, opts Options, in *inheritance) (*Server, error) {
	st := in.st
	if in.taken {
		return nil, errors.New("fusebridge: this process already adopted its mount; only one restartable mount per process")
	}
	in.taken = true
	if st.Mountpoint != mnt {
		return nil, in.refuse(fmt.Errorf("the running server serves %s, this one was asked to mount %s", st.Mountpoint, mnt))
	}
	// The kernel agreed on the largest write with the first process: its
	// successors keep it, whatever they were given (a new version's
	// default may differ).
	if len(st.Conns) > 0 && st.Conns[0].MaxWrite > 0 {
		opts.MaxWrite = st.Conns[0].MaxWrite
	}
	if got := settingsOf(opts); got != st.Settings {
		return nil, in.refuse(fmt.Errorf("the running server's mount is set up as %q, this one would be %q", st.Settings, got))
	}
	fd := func(i int) int {
		if i < 0 || i >= len(in.fds) {
			return -1
		}
		return in.fds[i]
	}
	s := newServer(mnt, opts)
	s.nextIno = st.NextIno
	s.rs.minor = st.KernelMinor
	s.passthrough.Store(st.Passthrough)
	s.claim = &claim{fd: fd(st.Claim)}
	s.rs.in = in
	s.rs.inos = map[string]uint64{}
	s.rs.binds = map[string]bool{}
	for _, p := range st.Bound {
		s.rs.binds[p] = true
	}
	conns := []*Server{s}
	if len(st.Conns) > 1 {
		copts := companionOptions(s)
		if st.Conns[1].MaxWrite > 0 {
			// As the first connection's: what the kernel agreed on.
			copts.MaxWrite = st.Conns[1].MaxWrite
		}
		c := newServer(mnt, copts)
		c.mountFd = fd(st.Conns[1].MountFd)
		s.setCompanion(c)
		conns = append(conns, c)
	}
	for i, c := range conns {
		cs := &st.Conns[i]
		c.connID = cs.ConnID
		c.rs.adopt = cs
		c.rs.devFd = fd(cs.Fd)
		if c.rs.devFd < 0 {
			return nil, in.refuse(errors.New("the state names a connection but no descriptor came with it"))
		}
		// The same path gets the same inode number, which is the node ID
		// the kernel holds.
		for p, ino := range cs.paths() {
			s.rs.inos[p] = ino
		}
		if err := c.start("/dev/fd/"+strconv.Itoa(c.rs.devFd), false); err != nil {
			return nil, in.refuse(err)
		}
	}
	return s, nil
}

// paths returns the path of every node the kernel holds, by its chain of
// lookups from the root.
func (cs *connState) paths() map[string]uint64 {
	byID := map[uint64]nodeState{}
	for _, n := range cs.Nodes {
		byID[n.ID] = n
	}
	out := map[string]uint64{}
	for _, n := range cs.Nodes {
		if p, ok := pathOf(byID, n.ID); ok {
			out[p] = n.ID
		}
	}
	return out
}

func pathOf(byID map[uint64]nodeState, id uint64) (string, bool) {
	var parts []string
	for i := 0; id != fuse.FUSE_ROOT_ID; i++ {
		n, ok := byID[id]
		if !ok || i > len(byID) {
			return "", false
		}
		parts = append(parts, n.Name)
		id = n.Parent
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, "/"), true
}

// companionMaxWrite is the largest request of the second connection of
// the default layout (companionOptions).
const companionMaxWrite = 128 << 10

// companionOptions are the options of s's second connection (split.go).
func companionOptions(s *Server) Options {
	opts := s.opts
	opts.NoOpen = !s.opts.NoOpen
	opts.NoOpenHandlers = false
	opts.Passthrough = PassthroughOff
	if s.freshOnly() {
		// It serves only files with a freshness bound: snapshots read
		// whole, a page or a few at a time, and written (where they
		// can be) in stores of a page (see Options.NoOpen), so no request
		// of it needs more. Each of its request buffers is then 128 KiB,
		// not 1 MiB: about 4 MiB less (issue 14's footprint).
		opts.MaxWrite = min(opts.maxWrite(), companionMaxWrite)
	}
	if opts.NoOpen {
		opts.Logger = s.log.With("connection", "no-open")
	} else {
		opts.Logger = s.log.With("connection", "open")
	}
	return opts
}

// inheritedIno returns the inode number the kernel knows path by, or 0.
// Called with s.mu held.
func (s *Server) inheritedIno(path string) uint64 {
	if s.rs.inos == nil {
		return 0
	}
	return s.rs.inos[path]
}

// adoptedBind reports whether e's path was bind-mounted by the old process
// (the bind is still there), and marks e bound if so.
func (s *Server) adoptedBind(e *Entry) bool {
	if s.rs.binds == nil || !s.rs.binds[e.Path()] {
		return false
	}
	delete(s.rs.binds, e.Path())
	e.bound = true
	return true
}

// Inherited returns the program's state and descriptors handed over by the
// process this one replaces (Options.Handover); ok is false in a process
// that was not started by a restart.
func (s *Server) Inherited() (state []byte, files []*os.File, ok bool) {
	in := s.rs.in
	if in == nil {
		return nil, nil, false
	}
	for _, i := range in.st.Files {
		if i >= 0 && i < len(in.fds) {
			files = append(files, os.NewFile(uintptr(in.fds[i]), "inherited"))
		}
	}
	return in.st.Program, files, true
}

// Refuse tells the process this one replaces that its state is not taken
// (reason says why, in one line): that process goes on serving, and this
// one must exit without serving.
func (s *Server) Refuse(reason error) error {
	in := s.rs.in
	if in == nil {
		return reason
	}
	s.rs.in = nil
	return in.refuse(reason)
}

// adoptCallbacks stand in for go-fuse's server while a new process opens
// the handed-over handles again, before go-fuse reads a request: the
// bridge registers passthrough backing files through them.
type adoptCallbacks struct{ fd int }

func (a adoptCallbacks) DeleteNotify(parent, child uint64, name string) fuse.Status { return fuse.OK }
func (a adoptCallbacks) EntryNotify(parent uint64, name string) fuse.Status         { return fuse.OK }
func (a adoptCallbacks) InodeNotify(node uint64, off, length int64) fuse.Status     { return fuse.OK }
func (a adoptCallbacks) InodeRetrieveCache(node uint64, off int64, dest []byte) (int, fuse.Status) {
	return 0, fuse.ENOSYS
}
func (a adoptCallbacks) InodeNotifyStoreCache(node uint64, off int64, data []byte) fuse.Status {
	return fuse.ENOSYS
}

// FUSE_DEV_IOC_BACKING_OPEN and _CLOSE (linux/fuse.h).
const (
	iocBackingOpen  = 0x4010e501
	iocBackingClose = 0x4004e502
)

func (a adoptCallbacks) RegisterBackingFd(m *fuse.BackingMap) (int32, syscall.Errno) {
	id, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(a.fd), iocBackingOpen, uintptr(unsafe.Pointer(m)))
	return int32(id), errno
}

func (a adoptCallbacks) UnregisterBackingFd(id int32) syscall.Errno {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(a.fd), iocBackingClose, uintptr(unsafe.Pointer(&id)))
	return errno
}

// serverCallbacks returns what go-fuse's bridge talks to the kernel through
// before go-fuse's server exists: nil (go-fuse's server) unless adopting.
func (s *Server) serverCallbacks() gofs.ServerCallbacks {
	if s.rs.adopt == nil {
		return nil
	}
	return adoptCallbacks{fd: s.rs.devFd}
}

// Ready is called once the program has published its tree. On a server
// that adopted a mount from the process it replaces, it opens again every
// node and handle the kernel holds, tells the old process, and starts
// serving: requests that waited meanwhile are answered from here on. On
// any other server it does nothing. An error means the old process goes on
// serving and this one must exit.
func (s *Server) Ready() error {
	in := s.rs.in
	if in == nil || s.rs.adopt == nil {
		s.keepForCrash(nil)
		return nil
	}
	if in.crash {
		return s.readyAfterCrash(in)
	}
	conns := s.connections()
	for _, c := range conns {
		c.rs.rfs.strict = in.st.Strict
		if err := c.replay(in.st.Epoch + 1); err != nil {
			s.rs.in = nil
			return in.refuse(err)
		}
	}
	if err := sendMsg(in.sock, handoverMsg{Kind: "accept"}, nil); err != nil {
		return fmt.Errorf("fusebridge: handover: %w", err)
	}
	var m handoverMsg
	if _, err := recvMsg(in.sock, &m); err != nil || m.Kind != "go" {
		return fmt.Errorf("fusebridge: handover: the old process did not let go: %v", errOr(err, m))
	}
	s.rs.in = nil
	// Committed: this process serves the mount.
	for i, c := range conns {
		for _, id := range in.st.Conns[i].Stale {
			adoptCallbacks{fd: c.rs.devFd}.UnregisterBackingFd(id)
		}
	}
	s.claim.retake()
	sendMsg(in.sock, handoverMsg{Kind: "taken"}, nil)
	unix.Close(in.sock)
	s.keepForCrash(nil) // before the new epoch answers anything

	// Before this process reads anything, as after a crash (crash.go):
	// the kernel resends every request read and not answered, this
	// process's own too, which would then run twice (an OPEN twice leaks
	// a handle, and a per-open passthrough claim with it; a RELEASE twice
	// panics go-fuse's bridge). So the resend waits for the old process to
	// exit (its readers may take requests until then, and hold them
	// unanswered), and requests wait in the kernel meanwhile: the old
	// process exits right after Restart returns. One that outlives
	// resendGrace is resent from then on while this process serves.
	exited := waitExit(in.old, resendGrace)
	resendAll(conns, s.log)
	if exited {
		if in.old >= 0 {
			unix.Close(in.old)
		}
	} else {
		go resendHeld(in.old, conns, s.log)
	}
	return s.serveAdoptedConns(conns, "serving the adopted mount")
}

// serveAdoptedConns starts serving the adopted connections, once the
// kernel has been asked to resend what earlier processes left unanswered,
// and drops what only the adoption needed.
func (s *Server) serveAdoptedConns(conns []*Server, msg string) error {
	for _, c := range conns {
		if err := c.serveAdopted(); err != nil {
			return err
		}
	}
	for _, c := range conns {
		c.rs.adopt = nil
	}
	s.rs.inos, s.rs.binds = nil, nil
	s.log.Info(msg, "mountpoint", s.mnt, "passthrough", s.passthrough.Load())
	return nil
}

// replay makes the bridge hold what the kernel holds: every node looked up
// as often as the kernel did, every handle opened again. A node that is not
// found again under its name with its node ID becomes an orphan: requests
// on it fail with ESTALE.
func (c *Server) replay(epoch uint64) error {
	r, cs := c.rs.rfs, c.rs.adopt
	r.epoch = epoch
	inner := r.RawFileSystem
	hdr := func(node uint64) fuse.InHeader {
		return fuse.InHeader{NodeId: node, Caller: fuse.Caller{Pid: uint32(os.Getpid())}}
	}
	byID := map[uint64]nodeState{}
	for _, n := range cs.Nodes {
		byID[n.ID] = n
	}
	depth := func(id uint64) int {
		d := 0
		for ; id != fuse.FUSE_ROOT_ID && d <= len(byID); d++ {
			id = byID[id].Parent
		}
		return d
	}
	nodes := append([]nodeState(nil), cs.Nodes...)
	sort.Slice(nodes, func(i, j int) bool { return depth(nodes[i].ID) < depth(nodes[j].ID) })
	for id, n := range cs.Orphans {
		r.orphans[id] = n
	}
	for _, n := range nodes {
		ok := n.Parent == fuse.FUSE_ROOT_ID || r.nodes[n.Parent] != nil
		var done uint64
		for ; ok && done < n.N; done++ {
			h := hdr(n.Parent)
			var out fuse.EntryOut
			st := inner.Lookup(nil, &h, n.Name, &out)
			if st != fuse.OK || out.NodeId != n.ID {
				if st == fuse.OK && out.NodeId != 0 {
					inner.Forget(out.NodeId, 1)
				}
				ok = false
			}
		}
		if !ok {
			if done > 1 {
				inner.Forget(n.ID, done-1)
			}
			r.orphans[n.ID] = n.N
			c.log.Info("a node the kernel holds is not there again; requests on it fail with ESTALE", "name", n.Name, "node", n.ID)
			continue
		}
		r.nodes[n.ID] = &nodeRec{parent: n.Parent, name: n.Name, n: n.N}
	}
	for node, id := range cs.Backing {
		r.backing[node] = id
	}
	for _, h := range cs.Handles {
		rec := &handleRec{node: h.Node, flags: h.Flags, dir: h.Dir, backing: h.Backing, orphan: h.Orphan, perOpen: h.PerOpen}
		if _, gone := r.orphans[h.Node]; gone || h.Orphan {
			rec.orphan = true
			r.handles[h.Fh] = rec
			continue
		}
		in := fuse.OpenIn{InHeader: hdr(h.Node), Flags: h.Flags &^ uint32(syscall.O_CREAT|syscall.O_EXCL|syscall.O_TRUNC)}
		var out fuse.OpenOut
		var st fuse.Status
		if h.Dir {
			st = inner.OpenDir(nil, &in, &out)
		} else {
			if h.PerOpen && r.perop != nil {
				// The kernel serves the descriptor with this backing file
				// until its close: its entry's claim (perop.go).
				r.perop.inheriting = h.Backing
			}
			st = inner.Open(nil, &in, &out)
			if r.perop != nil {
				r.perop.inheriting = 0
			}
		}
		if st != fuse.OK {
			rec.orphan = true
			c.log.Info("a descriptor cannot be opened again; its requests fail with EIO", "node", h.Node, "err", st)
		} else {
			r.inherited[h.Fh] = out.Fh
			if out.BackingID != 0 && out.BackingID != h.Backing {
				rec.own = out.BackingID
			}
		}
		r.handles[h.Fh] = rec
	}
	return nil
}

// serveAdopted starts go-fuse's server on the adopted connection. go-fuse
// serves a /dev/fd/N descriptor, and reads the first request inside
// NewServer whatever it is: a request is provoked (a statfs of the mount),
// so that NewServer returns even on an idle mount. go-fuse closes
// the descriptor it is given if that first answer fails (the request was
// interrupted): it is given a duplicate, and tried again.
func (c *Server) serveAdopted() error {
	// Again until it is served: a request still waiting in the kernel
	// when a signal reaches the caller (the Go runtime's preemption
	// signal, say) is withdrawn, and the statfs fails with EINTR.
	var up atomic.Bool
	poked := make(chan struct{})
	go func() {
		defer close(poked)
		for !up.Load() {
			var sfs unix.Statfs_t
			var err error
			if c.mountFd >= 0 {
				err = unix.Fstatfs(c.mountFd, &sfs)
			} else {
				err = unix.Statfs(c.mnt, &sfs)
			}
			if err != nil && err != unix.EINTR {
				time.Sleep(10 * time.Millisecond)
			}
		}
	}()
	var srv *fuse.Server
	var err error
	var dup int
	mo := c.rs.mo
	for range 3 {
		var derr error
		dup, derr = unix.FcntlInt(uintptr(c.rs.devFd), unix.F_DUPFD_CLOEXEC, 3)
		if derr != nil {
			return fmt.Errorf("fusebridge: handover: dup: %w", derr)
		}
		mo = c.rs.mo
		// The description may be non-blocking (the first process's
		// request loop, conn.go): go-fuse reads its first request with a
		// read(2) that must wait for it.
		unix.SetNonblock(dup, false)
		if srv, err = fuse.NewServer(c.rs.rfs, "/dev/fd/"+strconv.Itoa(dup), &mo); err == nil {
			break
		}
		c.log.Warn("serving the adopted connection failed; trying again", "err", err)
	}
	up.Store(true)
	if err != nil {
		return fmt.Errorf("fusebridge: handover: serve the adopted connection: %w", err)
	}
	c.fuse = srv
	go func() {
		// The adopted connection's INIT was answered by the first
		// process: the request parser keeps go-fuse's defaults.
		serveConn(srv, c.rs.rfs, &mo, dup, false, c.log)
		close(c.served)
	}()
	<-poked
	return nil
}

// notifyResend writes FUSE_NOTIFY_RESEND (code 7, protocol 7.40) to the
// connection: the kernel queues again every request that was read and not
// answered, with bit 63 of its unique set. go-fuse has no sender for it.
func notifyResend(fd int) error {
	var b [16]byte // struct fuse_out_header: len, error (the code), unique 0
	binary.NativeEndian.PutUint32(b[0:], 16)
	binary.NativeEndian.PutUint32(b[4:], 7)
	_, err := unix.Write(fd, b[:])
	return err
}

// resendGrace is how long the old process gets to exit before this one
// serves and has the held requests resent anyway, and again each time it
// passes while the old process lives (its readers may take requests until
// it exits). The old process answers nothing once its gates are closed;
// a resend while this process serves makes it run its own unanswered
// requests twice, which only an old process that outlives this grace
// causes (Ready resends before serving otherwise).
const resendGrace = 2 * time.Second

// resendHeld has the kernel resend, once the old process (pidfd) has
// exited, every request that process read and never answered: with it gone
// nothing else reads them.
func resendHeld(pidfd int, conns []*Server, log *slog.Logger) {
	if pidfd >= 0 {
		defer unix.Close(pidfd)
	}
	for {
		exited := waitExit(pidfd, resendGrace)
		if !resendAll(conns, log) {
			return
		}
		if exited {
			return
		}
		log.Warn("the old process has not exited; resending what it holds again", "after", resendGrace)
	}
}

// resendAll has the kernel resend, on each connection, every request read
// and not answered; false if it cannot.
func resendAll(conns []*Server, log *slog.Logger) bool {
	for _, c := range conns {
		if err := notifyResend(c.rs.devFd); err != nil {
			log.Warn("cannot have the kernel resend the requests an earlier process read; they wait until the mount ends", "err", err)
			return false
		}
	}
	return true
}

// waitExit waits at most d until the process of pidfd has exited, and
// with it every reader of the connection it had.
func waitExit(pidfd int, d time.Duration) bool {
	if pidfd < 0 {
		time.Sleep(d) // no pidfd (Linux < 5.3): give it time
		return true
	}
	deadline := time.Now().Add(d)
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, int(max(time.Until(deadline), 0).Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		return n > 0 || err != nil
	}
}

// fuseFds lists this process's descriptors open on /dev/fuse.
func fuseFds() map[int]bool {
	out := map[int]bool{}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return out
	}
	for _, ent := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + ent.Name()); err == nil && target == "/dev/fuse" {
			if fd, err := strconv.Atoi(ent.Name()); err == nil {
				out[fd] = true
			}
		}
	}
	return out
}

// devScanMu makes the /dev/fuse descriptor a mount opened the only new one
// in the process while it is looked for.
var devScanMu sync.Mutex

// newTrackedServer is newFuseServer that also learns which /dev/fuse
// descriptor go-fuse serves (go-fuse does not say): the request loop
// reads it (conn.go), and a restartable mount hands it over. -1 if it
// cannot be told.
func (s *Server) newTrackedServer(fsys fuse.RawFileSystem, mountpoint string, mo *fuse.MountOptions, direct bool) (*fuse.Server, int, error) {
	fd := -1
	if rest, ok := strings.CutPrefix(mountpoint, "/dev/fd/"); ok {
		fd, _ = strconv.Atoi(rest)
		unix.SetNonblock(fd, false) // as in serveAdopted
		srv, err := newFuseServer(fsys, mountpoint, mo, direct)
		return srv, fd, err
	}
	devScanMu.Lock()
	defer devScanMu.Unlock()
	before := fuseFds()
	srv, err := newFuseServer(fsys, mountpoint, mo, direct)
	if err != nil {
		return nil, -1, err
	}
	var fresh []int
	for fd := range fuseFds() {
		if !before[fd] {
			fresh = append(fresh, fd)
		}
	}
	if len(fresh) == 1 {
		fd = fresh[0]
	}
	return srv, fd, nil
}

// retake takes the claim again in this process's name, so that /proc/locks
// (claimHolder) names the process that serves the mount now.
func (c *claim) retake() {
	if c == nil || c.fd < 0 {
		return
	}
	unix.Flock(c.fd, unix.LOCK_UN)
	unix.Flock(c.fd, unix.LOCK_EX|unix.LOCK_NB)
}

// ServerPID returns the pid of the process serving the mount on
// mountpoint (the holder of its claim), 0 if none is known.
func ServerPID(mountpoint string) int { return claimHolder(mountpoint) }

// The wire: each message is a 4-byte length and JSON; descriptors travel
// with its first byte (SCM_RIGHTS).

func setTimeout(fd int) {
	tv := unix.NsecToTimeval(handoverTimeout.Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
}

func sendMsg(sock int, m handoverMsg, fds []int) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	buf := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	buf = append(buf, body...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, err := sendmsgRetry(sock, buf, oob)
	if err != nil {
		return err
	}
	for n < len(buf) {
		m, err := unix.Write(sock, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		n += m
	}
	return nil
}

func sendmsgRetry(sock int, buf, oob []byte) (int, error) {
	for {
		n, err := unix.SendmsgN(sock, buf, oob, nil, 0)
		if err != unix.EINTR {
			return n, err
		}
	}
}

func recvMsg(sock int, m *handoverMsg) ([]int, error) {
	var hdr [4]byte
	oob := make([]byte, unix.CmsgSpace(4*256))
	var n, oobn int
	var err error
	for {
		n, oobn, _, _, err = unix.Recvmsg(sock, hdr[:], oob, unix.MSG_CMSG_CLOEXEC)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, io.EOF
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, err
		}
		for _, cm := range msgs {
			if r, err := unix.ParseUnixRights(&cm); err == nil {
				fds = append(fds, r...)
			}
		}
	}
	if _, err := io.ReadFull(noClose{sock}, hdr[n:]); err != nil {
		return fds, err
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(noClose{sock}, body); err != nil {
		return fds, err
	}
	return fds, json.Unmarshal(body, m)
}

// noClose reads a raw descriptor.
type noClose struct{ fd int }

func (r noClose) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(r.fd, p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}
