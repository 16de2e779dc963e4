package fusebridge

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// A crash is a restart too. A restartable server that runs under a keeper
// of descriptors (systemd's file descriptor store, or 'ramproc supervise',
// which speaks the same protocol) gives it, once it serves, every
// descriptor a successor would need: the /dev/fuse descriptors of its
// connections, the mountpoint's claim, the program's own (Options.Handover:
// the RAM file's store) and a small memfd, the crash record, that says what
// they are and what the kernel was told that a new process cannot find out
// by itself. The keeper holds them while the server dies (a FUSE connection
// lives while one process holds its /dev/fuse descriptor, and the store's
// bytes while one holds its descriptor) and gives them to the server it
// starts next (LISTEN_FDS, LISTEN_FDNAMES). That process adopts the mount
// as a restarted one does, without a predecessor to ask:
//
//   - node IDs are inode numbers, which the record gives each published
//     path again; the lookup counts the kernel holds are unknown, so every
//     published node is looked up once and a FORGET gives the bridge at most
//     what it has (restartFS.strict); a node ID the process does not know
//     (a dynamic directory's child) answers ESTALE;
//   - a file handle the dead process issued is opened again on its first
//     request, with the open flags that READ and WRITE carry (restartFS
//     .reopen); RELEASE of one never seen is a no-op;
//   - a passthrough backing ID the kernel holds for a node is one the
//     record names: with a keeper, each node gets a backing ID of its own
//     that is never closed (keepBacking), recorded before the OPEN reply
//     that gives it to the kernel;
//   - requests the dead process read and never answered are resent by the
//     kernel (FUSE_NOTIFY_RESEND) once the new process serves. They were
//     maybe executed already: every request of the RAM file is idempotent
//     (WRITE is pwrite at the offset the kernel chose, for O_APPEND too).
//     One the kernel fails itself (EIO): a request a thread of the dying
//     process was still copying in when SIGKILL came (fs/fuse/dev.c,
//     fuse_dev_do_read; docs/restart.md).
//
// Epochs (the high half of file handles) go on counting across crashes:
// the record carries the epoch of the process that wrote it.

// Descriptor names in the keeper.
const (
	keptPrefix = "fusebridge-"
	keptRecord = keptPrefix + "record"
)

// crashFormat names the layout of the crash record.
var crashFormat = "fusebridge-crash/1"

// crashRecord is what the crash record memfd holds: the state a restart
// would hand over, without open handles and lookup counts, and the keeper's
// name of each descriptor its indexes refer to.
type crashRecord struct {
	Format string
	State  handoverState
	Names  []string
}

// Each version of the record is written whole into one of two slots of
// the memfd, alternately, after a header (sequence number, length,
// CRC-32): a process killed in the middle of a write leaves the other slot
// intact.
const (
	crashSlot   = 1 << 20
	crashHeader = 16
)

// crashLog is a server's crash record, kept up to date while it serves.
type crashLog struct {
	mu  sync.Mutex
	fd  int
	seq uint64
	rec crashRecord
	// files are the program's descriptors as Options.Handover gave them:
	// kept from the garbage collector, whose finalizer would close them.
	files []*os.File
}

func (l *crashLog) write() error {
	body, err := json.Marshal(l.rec)
	if err != nil {
		return err
	}
	if len(body) > crashSlot-crashHeader {
		return fmt.Errorf("the crash record is %d bytes, more than %d", len(body), crashSlot-crashHeader)
	}
	l.seq++
	buf := make([]byte, crashHeader, crashHeader+len(body))
	binary.LittleEndian.PutUint64(buf[0:], l.seq)
	binary.LittleEndian.PutUint32(buf[8:], uint32(len(body)))
	binary.LittleEndian.PutUint32(buf[12:], crc32.ChecksumIEEE(body))
	buf = append(buf, body...)
	_, err = unix.Pwrite(l.fd, buf, int64(l.seq%2)*crashSlot)
	return err
}

// readCrashRecord returns the newest intact version in the memfd fd.
func readCrashRecord(fd int) (*crashRecord, uint64, error) {
	var best []byte
	var bestSeq uint64
	for slot := range 2 {
		hdr := make([]byte, crashHeader)
		if n, _ := unix.Pread(fd, hdr, int64(slot)*crashSlot); n != crashHeader {
			continue
		}
		seq := binary.LittleEndian.Uint64(hdr[0:])
		n := binary.LittleEndian.Uint32(hdr[8:])
		if seq == 0 || n > crashSlot-crashHeader || seq <= bestSeq {
			continue
		}
		body := make([]byte, n)
		if m, _ := unix.Pread(fd, body, int64(slot)*crashSlot+crashHeader); m != int(n) || crc32.ChecksumIEEE(body) != binary.LittleEndian.Uint32(hdr[12:]) {
			continue
		}
		best, bestSeq = body, seq
	}
	if best == nil {
		return nil, 0, errors.New("the crash record holds no intact version")
	}
	var rec crashRecord
	if err := json.Unmarshal(best, &rec); err != nil {
		return nil, 0, err
	}
	return &rec, bestSeq, nil
}

// The keeper's side of the protocol (sd_notify(3), sd_listen_fds(3)).

// keeperPresent reports whether a keeper takes descriptors: systemd sets
// FDSTORE (v254 on) when the unit has FileDescriptorStoreMax=, and so does
// 'ramproc supervise'.
func keeperPresent() bool {
	n, _ := strconv.Atoi(os.Getenv("FDSTORE"))
	return n > 0 && os.Getenv("NOTIFY_SOCKET") != ""
}

// notifyKeeper sends one datagram to NOTIFY_SOCKET with fds attached.
func notifyKeeper(state string, fds []int) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return errors.New("NOTIFY_SOCKET is not set")
	}
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(sock)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for {
		err = unix.Sendmsg(sock, []byte(state), oob, &unix.SockaddrUnix{Name: addr}, 0)
		if err != unix.EINTR {
			return err
		}
	}
}

// keep gives fd to the keeper under name, replacing what it held under it.
// Between the two messages the keeper holds nothing under name: a process
// that died there would leave its successor without that descriptor, so
// a process started after a crash re-keeps only what the keeper does not
// hold already (keepForCrash).
func keep(name string, fd int) error {
	notifyKeeper("FDSTOREREMOVE=1\nFDNAME="+name, nil)
	return store(name, fd)
}

// store gives fd to the keeper under name, without removing what it holds
// under it: for a descriptor of a file the keeper holds under name.
func store(name string, fd int) error {
	return notifyKeeper("FDSTORE=1\nFDNAME="+name, []int{fd})
}

// sameFile reports whether descriptors a and b of this process are the
// same open file (kcmp(2) KCMP_FILE); false where that cannot be told.
func sameFile(a, b int) bool {
	pid := uintptr(os.Getpid())
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, pid, pid, 0 /* KCMP_FILE */, uintptr(a), uintptr(b), 0)
	return errno == 0 && r == 0
}

// keepPlan returns the indexes of fds the keeper must be given under
// names: those it does not hold already under the same name (held: a
// duplicate of what it holds, by name).
func keepPlan(names []string, fds []int, held map[string]int) []int {
	var out []int
	for i, name := range names {
		if d, ok := held[name]; ok && sameFile(d, fds[i]) {
			continue
		}
		out = append(out, i)
	}
	return out
}

// kept holds the descriptors the keeper gave this process, by name.
var kept struct {
	once sync.Once
	fds  map[string]int
}

// keptFds reads LISTEN_FDS and LISTEN_FDNAMES once (and unsets them: they
// are not for the programs this one starts).
func keptFds() map[string]int {
	kept.once.Do(func() {
		kept.fds = map[string]int{}
		if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
			return
		}
		n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
		names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
		for i := 0; err == nil && i < n; i++ {
			fd := 3 + i // SD_LISTEN_FDS_START
			unix.CloseOnExec(fd)
			if i < len(names) && names[i] != "" {
				kept.fds[names[i]] = fd
			}
		}
		for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
			os.Unsetenv(v)
		}
	})
	return kept.fds
}

// crashInheriting reports whether the keeper gave this process a crash
// record: Mount will adopt the mount of a server that died.
func crashInheriting() bool {
	_, ok := keptFds()[keptRecord]
	return ok
}

// crashInherited builds the inheritance of a process started after a
// crash from the keeper's descriptors; nil without a crash record.
func crashInherited() (*inheritance, error) {
	fds := keptFds()
	rfd, ok := fds[keptRecord]
	if !ok || inherit.in != nil {
		return nil, nil
	}
	rec, seq, err := readCrashRecord(rfd)
	delete(fds, keptRecord)
	if err != nil {
		unix.Close(rfd)
		return nil, fmt.Errorf("fusebridge: the descriptor keeper gave a crash record this process cannot read (%v); stop the service, unmount and start it again", err)
	}
	if rec.Format != crashFormat || rec.State.Format != handoverFormat {
		unix.Close(rfd)
		return nil, fmt.Errorf("fusebridge: the crash record is %q/%q, this binary reads %q/%q; stop the service, unmount and start it again", rec.Format, rec.State.Format, crashFormat, handoverFormat)
	}
	in := &inheritance{sock: -1, old: -1, crash: true, st: &rec.State, kept: map[string]int{}, record: rfd, recordSeq: seq}
	for _, name := range rec.Names {
		fd, ok := fds[name]
		if !ok {
			fd = -1
		}
		delete(fds, name)
		in.fds = append(in.fds, fd)
		// A duplicate to tell later whether a descriptor this process
		// keeps is the one the keeper holds (the program may close what
		// it inherited, and its number be reused).
		if fd >= 0 {
			if d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0); err == nil {
				in.kept[name] = d
			}
		}
	}
	inherit.in = in
	return in, nil
}

// crashRecordOf is the record of s as it serves now.
func (s *Server) crashRecordOf() (*crashRecord, []int, []*os.File, error) {
	st, fds, files, err := s.handoverState()
	if err != nil {
		return nil, nil, nil, err
	}
	// Handles and lookup counts change with every request; a new process
	// does without them. The published tree gives every path its node ID.
	for i, c := range s.connections() {
		cs := &st.Conns[i]
		cs.Handles, cs.Orphans, cs.Stale = nil, nil, nil
		cs.Nodes = c.publishedNodes()
	}
	rec := &crashRecord{Format: crashFormat, State: *st}
	for i := range fds {
		rec.Names = append(rec.Names, fmt.Sprintf("%sfd-%d", keptPrefix, i))
	}
	return rec, fds, files, nil
}

// publishedNodes lists every published entry with its node ID.
func (c *Server) publishedNodes() []nodeState {
	var out []nodeState
	var walk func(d *Dir, parent uint64)
	walk = func(d *Dir, parent uint64) {
		for _, e := range d.sortedChildren() {
			out = append(out, nodeState{ID: e.ino, Parent: parent, Name: e.name})
			if e.dir != nil {
				walk(e.dir, e.ino)
			}
		}
	}
	walk(c.rootDir, fuse.FUSE_ROOT_ID)
	return out
}

// keepForCrash gives the keeper, if there is one, what a successor needs
// after a crash of this process. Called once the server serves its tree
// (Ready); in is what a process started after a crash inherited (nil
// otherwise).
func (s *Server) keepForCrash(in *inheritance) {
	if !s.opts.Restartable || !keeperPresent() || s.rs.rfs == nil {
		return
	}
	held, record, seq := map[string]int(nil), -1, uint64(0)
	if in != nil && in.crash {
		held, record, seq = in.kept, in.record, in.recordSeq
		in.kept, in.record = nil, -1
		defer func() {
			for _, d := range held {
				unix.Close(d)
			}
		}()
	}
	rec, fds, files, err := s.crashRecordOf()
	var l *crashLog
	if err == nil {
		l, err = keepRecord(rec, fds, files, held, record, seq)
	} else if record >= 0 {
		unix.Close(record)
	}
	if err != nil {
		s.log.Warn("the descriptor keeper does not hold this mount; a crash would lose it", "err", err)
		return
	}
	s.rs.rfs.mu.Lock()
	s.rs.rfs.crash = l
	s.rs.rfs.mu.Unlock()
	s.log.Info("the descriptor keeper holds the mount: a crash is survived", "descriptors", len(fds)+1)
}

// keepRecord gives the keeper the descriptors rec names that it does not
// hold already (held: a duplicate of each it gave, by name), then writes
// rec. After a crash the keeper holds the dead process's record (the
// memfd record, whose newest version is seq): the new version goes into
// it, in the slot the newest does not use, so that at no moment does the
// keeper hold less than a successor needs. Otherwise (record < 0) rec
// goes into a new memfd, given to the keeper last: a record the keeper
// holds names descriptors it holds.
func keepRecord(rec *crashRecord, fds []int, files []*os.File, held map[string]int, record int, seq uint64) (*crashLog, error) {
	l := &crashLog{fd: record, seq: seq, rec: *rec, files: files}
	err := func() error {
		for _, i := range keepPlan(rec.Names, fds, held) {
			if err := keep(rec.Names[i], fds[i]); err != nil {
				return err
			}
		}
		if record >= 0 {
			if err := l.write(); err != nil {
				return err
			}
			// Given again without FDSTOREREMOVE: systemd ignores a
			// descriptor of a file it holds, 'ramproc supervise'
			// replaces its own in one step, and either way the keeper
			// hears that this process serves (supervise counts a
			// server that gave its record as serving, which a crash of
			// it then restarts).
			return store(keptRecord, record)
		}
		fd, err := unix.MemfdCreate("fusebridge-crash-record", unix.MFD_CLOEXEC)
		if err != nil {
			return err
		}
		l.fd = fd
		if err := l.write(); err != nil {
			return err
		}
		return keep(keptRecord, fd)
	}()
	if err != nil {
		if l.fd >= 0 {
			unix.Close(l.fd)
		}
		return nil, err
	}
	return l, nil
}

// keepBacking gives node a passthrough backing ID of its own, for fd, the
// first time the bridge registers a backing file for it on a connection
// with a keeper. The kernel gets that ID for every open of node from then
// on (restartFS.opened), and it stays registered for the connection's
// life: the bridge closes its own IDs when a node's last handle is
// released, which a new process after a crash could not know.
func (r *restartFS) keepBacking(node uint64, fd int) {
	if !r.keepIDs {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.backing[node]; ok {
		return
	}
	id, errno := adoptCallbacks{fd: r.devFd}.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
	if errno != 0 {
		return // the bridge's own registration reports it
	}
	r.backing[node] = id
	if l := r.crash; l != nil {
		l.mu.Lock()
		c := &l.rec.State.Conns[0]
		if c.Backing == nil {
			c.Backing = map[uint64]int32{}
		}
		c.Backing[node] = id
		l.write()
		l.mu.Unlock()
	}
}

// replayCrash makes the bridge of an adopted connection hold every
// published node once, as the kernel may hold each of them, and serves
// handles the dead process issued by opening them again (strict).
func (c *Server) replayCrash(epoch uint64) {
	r, cs := c.rs.rfs, c.rs.adopt
	r.epoch = epoch
	r.strict = true
	for node, id := range cs.Backing {
		r.backing[node] = id
	}
	hdr := fuse.InHeader{Caller: fuse.Caller{Pid: uint32(os.Getpid())}}
	var walk func(d *Dir, parent uint64)
	walk = func(d *Dir, parent uint64) {
		for _, e := range d.sortedChildren() {
			h := hdr
			h.NodeId = parent
			var out fuse.EntryOut
			if st := r.RawFileSystem.Lookup(nil, &h, e.name, &out); st != fuse.OK || out.NodeId == 0 {
				continue
			}
			r.nodes[out.NodeId] = &nodeRec{parent: parent, name: e.name, n: 1}
			if e.dir != nil {
				walk(e.dir, out.NodeId)
			}
		}
	}
	walk(c.rootDir, fuse.FUSE_ROOT_ID)
}

// reopen opens again, for a strict connection, a handle kfh of the dead
// process on its first request, with the open flags the request carries
// (READ and WRITE do; for others they are unknown and read-only is
// assumed, which no handler needs more of to flush, sync or seek).
func (r *restartFS) reopen(node uint64, flags uint32, dir bool, kfh uint64) (uint64, bool) {
	r.reopenMu.Lock()
	defer r.reopenMu.Unlock()
	if fh, ok := r.bridgeFh(kfh); ok {
		return fh, true
	}
	if node == 0 || r.stale(node) {
		return 0, false
	}
	in := fuse.OpenIn{
		InHeader: fuse.InHeader{NodeId: node, Caller: fuse.Caller{Pid: uint32(os.Getpid())}},
		Flags:    flags &^ uint32(syscall.O_CREAT|syscall.O_EXCL|syscall.O_TRUNC),
	}
	var out fuse.OpenOut
	var st fuse.Status
	if dir {
		st = r.RawFileSystem.OpenDir(nil, &in, &out)
	} else {
		st = r.RawFileSystem.Open(nil, &in, &out)
	}
	if st != fuse.OK {
		return 0, false
	}
	r.mu.Lock()
	h := &handleRec{node: node, flags: flags, dir: dir}
	if out.BackingID != 0 {
		h.backing = out.BackingID
		if id, ok := r.backing[node]; ok && id != out.BackingID {
			h.own, h.backing = out.BackingID, id
		}
	}
	r.handles[kfh] = h
	r.inherited[kfh] = out.Fh
	r.mu.Unlock()
	return out.Fh, true
}

// readyAfterCrash is Ready on a server that adopted the mount of a
// process that died: no predecessor to agree with.
func (s *Server) readyAfterCrash(in *inheritance) error {
	conns := s.connections()
	for _, c := range conns {
		c.replayCrash(in.st.Epoch + 1)
	}
	s.rs.in = nil
	s.claim.retake()
	// Recorded before the first request of the new epoch is answered.
	s.keepForCrash(in)
	// The dead process answers nothing: what it read is sent again.
	// Before this process reads anything: the kernel resends every
	// request read and not answered, by whichever process, and one this
	// process was serving would run twice (a RELEASE twice is a panic in
	// go-fuse's bridge, answered EIO).
	resendAll(conns, s.log)
	return s.serveAdoptedConns(conns, "serving the mount of a process that died")
}
