package fusebridge

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The request loop of a connection: this file reads the requests from
// /dev/fuse and writes the answers; go-fuse's ProtocolServer parses them
// and calls the file system (the same RawFileSystem go-fuse's own loop
// would call), and its Server still mounts, answers INIT, sends the
// notifications and tears the connection down.
//
// Why not go-fuse's loop (Server.Serve): on these machines (2 vCPUs of a
// VM) a FUSE round trip costs what waking threads costs, not what handling
// the request costs. go-fuse keeps two goroutines blocked in read(2) on the
// device and starts a new reader whenever none is waiting (go-fuse v2.12.1,
// fuse/fusefd.go:105-157), so both Ps sit in system calls: Go's sysmon then
// retakes them every 20 µs and wakes threads that find nothing to do. Here
// one goroutine reads at a time and answers what it read itself; before it
// sleeps it keeps asking for the next request for a moment (spinWait),
// which is when a reader that sends one request after another (open, read,
// read, close) sends the next. Measured on a file read with direct I/O
// (OPEN, a READ, a READ that finds EOF; RELEASE), the reader on one CPU, the
// same go-fuse file system served each way, in one session (2026-12-05;
// docs/bench.md, "The bridge's own request loop"), opens a second and, in
// brackets, the server's CPU per open:
//
//	                                   1 reader             4 readers
//	go-fuse Server.Serve               7.2-8.9k (67-87 µs)  15-20k (46-61 µs)
//	one reader, answering inline       10-13k (36-43 µs)    20-23k (30-34 µs)
//	... asking 20 µs before it sleeps  14-17k (50-63 µs)    30-34k (28-29 µs)
//	libfuse's multithreaded loop (C)   11-15k (30-38 µs)
//
// A request whose answer takes longer than takeoverDelay (a stream waiting
// for data, a handler that sleeps, a restart's gate) makes another
// goroutine the reader, so a slow request holds up nobody; the goroutine
// that answered it then ends. Interrupts reach such requests as before:
// the reader reads the INTERRUPT and ProtocolServer cancels the request.

// spinWait is how long a reader keeps asking for the next request before it
// sleeps in poll(2): at most this much CPU per request when requests are
// sparse, none when the connection is idle.
const spinWait = 20 * time.Microsecond

// takeoverDelay is how long a request may take before another goroutine
// reads the next one.
const takeoverDelay = 200 * time.Microsecond

// conn serves the requests of one connection.
type conn struct {
	ps  *fuse.ProtocolServer
	fd  int
	log *slog.Logger
	// readBuf is the buffer requests are read into, as large as the
	// largest request the kernel sends (a WRITE of max_write; read(2)
	// fails on a smaller one). Only the goroutine that reads touches it
	// (the reading flag hands it over). A request of up to smallIn bytes
	// is copied out of it before it is answered, so that a request that
	// blocks (a stream waiting for data, a restart's gate) holds 2*smallIn
	// bytes of buffers, not max_write twice; a larger one (a WRITE) is
	// answered from it, and the next reader takes another (big).
	readBuf []byte
	big     sync.Pool // *[]byte of readBuf's size
	outs    sync.Map  // pages -> *sync.Pool of *[]byte: answers larger than smallOut

	reading atomic.Bool // a goroutine is reading (or about to), and owns readBuf
	loops   sync.WaitGroup
	ended   sync.Once

	mu        sync.Mutex              // guards answering and over; a takeover runs under it
	answering map[*atomic.Uint64]bool // each loop's request being answered (0: none)
	over      bool                    // the connection has ended: no more loops
}

// smallIn and smallOut are the sizes of a loop's own buffers: every
// request but a WRITE (or a long BATCH_FORGET) fits smallIn (the longest
// names: a symlink's 4096-byte target and its name), and every answer but
// a READ's, a READDIR's or an extended attribute's data fits smallOut
// (go-fuse's structured answers are at most 288 bytes).
const (
	smallIn  = 8 << 10
	smallOut = 8 << 10
)

// serveConn serves srv's connection, whose device descriptor is fd, until
// the connection ends, then lets go-fuse's Server end it (Serve: it finds
// the connection gone, closes the descriptor and calls OnUnmount). fsys and
// mo are what srv was made with. A negative fd (the descriptor go-fuse uses
// is not known) leaves the connection to go-fuse's loop.
func serveConn(srv *fuse.Server, fsys fuse.RawFileSystem, mo *fuse.MountOptions, fd int, init bool, log *slog.Logger) {
	if fd < 0 {
		srv.Serve()
		return
	}
	// The poll(2) sleep and the spin need a descriptor that does not
	// block. The flag belongs to the open file description, which go-fuse
	// shares: it no longer reads it, and its writes (notifications) never
	// wait on /dev/fuse.
	if err := unix.SetNonblock(fd, true); err != nil {
		log.Warn("serving with go-fuse's loop: the device cannot be made non-blocking", "err", err)
		srv.Serve()
		return
	}
	c := &conn{
		ps:        fuse.NewProtocolServer(fsys, mo),
		fd:        fd,
		log:       log,
		answering: map[*atomic.Uint64]bool{},
	}
	readSize := max(mo.MaxWrite, 128<<10) + 8192 // a WRITE of max_write behind its headers, and room to spare
	c.big.New = func() any { b := make([]byte, readSize); return &b }
	if init {
		c.init(srv.KernelSettings())
	}
	c.reading.Store(true)
	c.loops.Add(1)
	go c.loop()
	c.loops.Wait()
	srv.Serve()
}

// The FUSE opcodes this file makes requests of, or reads the answer size
// of (include/uapi/linux/fuse.h).
const (
	opRead        = 15
	opGetxattr    = 22
	opListxattr   = 23
	opInit        = 26
	opReaddir     = 28
	opInterrupt   = 36
	opIoctl       = 39
	opReaddirplus = 44
)

// init hands the kernel's INIT, which go-fuse's Server answered, to the
// ProtocolServer too: it parses some requests by the protocol version and
// the capabilities agreed (RENAME, SETXATTR). Its answer is not sent.
func (c *conn) init(in *fuse.InitIn) {
	req := *in
	req.InHeader = fuse.InHeader{Length: uint32(unsafe.Sizeof(req)), Opcode: opInit, Unique: 1}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&req)), unsafe.Sizeof(req))
	out := make([]byte, 4096)
	if _, st := c.ps.HandleRequest([][]byte{buf}, [][]byte{out}); !st.Ok() {
		c.log.Warn("the request parser did not take the kernel's INIT", "status", st)
	}
}

// loop is one goroutine of the connection. It starts as the reader, and
// reads and answers requests until the connection ends or, after a request
// that took past takeoverDelay, another goroutine has become the reader.
func (c *conn) loop() {
	defer c.loops.Done()
	small, smallAnswer := make([]byte, smallIn), make([]byte, smallOut)
	current := new(atomic.Uint64) // the unique of the request being answered
	c.mu.Lock()
	c.answering[current] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.answering, current)
		c.mu.Unlock()
	}()
	takeover := time.AfterFunc(time.Hour, c.takeover)
	takeover.Stop()
	defer takeover.Stop()
	for {
		if c.readBuf == nil {
			c.readBuf = *c.big.Get().(*[]byte)
		}
		n, err := c.read(c.readBuf)
		var in, bigIn []byte
		if err == nil {
			if n <= len(small) {
				in = small[:copy(small, c.readBuf[:n])]
			} else {
				in, bigIn, c.readBuf = c.readBuf[:n], c.readBuf, nil
			}
		}
		c.reading.Store(false) // readBuf is the next reader's from here
		if err != nil {
			c.end(err)
			return
		}
		unique := binary.NativeEndian.Uint64(in[8:16])
		out, bigOut := smallAnswer, []byte(nil)
		if need := answerSize(in); need > len(out) {
			bigOut = c.getOut(need)
			out = bigOut
		}
		current.Store(unique)
		takeover.Reset(takeoverDelay)
		w, st := c.ps.HandleRequest([][]byte{in}, [][]byte{out})
		takeover.Stop()
		current.Store(0)
		if !st.Ok() {
			// Too short to parse, or an answer larger than out (neither
			// comes from a kernel that keeps max_read and max_write):
			// an error, so that its caller does not wait forever.
			w = putErrorAnswer(out, unique, syscall.EIO)
		}
		if w > 0 {
			c.write(out[:w])
		}
		if bigIn != nil {
			c.big.Put(&bigIn)
		}
		if bigOut != nil {
			c.putOut(bigOut)
		}
		if !c.reading.CompareAndSwap(false, true) {
			return // another goroutine reads now
		}
	}
}

// answerSize is the most bytes the answer to request in can take: its
// header, a structured answer and the data it asks for. A request too
// short for its fields is refused by ProtocolServer before it answers.
func answerSize(in []byte) int {
	const most = 16 + 288 // fuse_out_header, go-fuse's largest structured answer
	p := unsafe.Pointer(&in[0])
	switch binary.NativeEndian.Uint32(in[4:8]) {
	case opRead, opReaddir, opReaddirplus:
		if len(in) >= int(unsafe.Sizeof(fuse.ReadIn{})) {
			return most + int((*fuse.ReadIn)(p).Size)
		}
	case opGetxattr, opListxattr:
		if len(in) >= int(unsafe.Sizeof(fuse.GetXAttrIn{})) {
			return most + int((*fuse.GetXAttrIn)(p).Size)
		}
	case opIoctl:
		if len(in) >= int(unsafe.Sizeof(fuse.IoctlIn{})) {
			return most + int((*fuse.IoctlIn)(p).OutSize)
		}
	}
	return most
}

// getOut returns a buffer of at least need bytes for an answer, from a
// pool per size in pages (a READ asks for the same size again and again).
func (c *conn) getOut(need int) []byte {
	pages := (need + 4095) / 4096
	p, ok := c.outs.Load(pages)
	if !ok {
		p, _ = c.outs.LoadOrStore(pages, &sync.Pool{})
	}
	if b, ok := p.(*sync.Pool).Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, pages*4096)
}

func (c *conn) putOut(b []byte) {
	if p, ok := c.outs.Load(len(b) / 4096); ok {
		p.(*sync.Pool).Put(&b)
	}
}

// takeover runs when a request has taken takeoverDelay: another goroutine
// reads from now on, unless one already does.
func (c *conn) takeover() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.over {
		return // a timer that fired as its loop ended
	}
	if c.reading.CompareAndSwap(false, true) {
		c.loops.Add(1) // under mu: never after end, so never after Wait returned
		go c.loop()
	}
}

// read reads one request into buf. It asks again for spinWait after the
// device had none, then sleeps in poll(2) until one comes.
func (c *conn) read(buf []byte) (int, error) {
	var since time.Time
	for {
		n, err := unix.Read(c.fd, buf)
		switch err {
		case nil:
			if n < int(unsafe.Sizeof(fuse.InHeader{})) {
				return 0, errShortRequest
			}
			return n, nil
		case unix.EINTR:
		case unix.ENOENT:
			// The request was withdrawn while it was copied (interrupted
			// before it was read).
		case unix.EAGAIN:
			if since.IsZero() {
				since = time.Now()
			}
			if time.Since(since) < spinWait {
				continue
			}
			pfd := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(pfd, -1); err != nil && err != unix.EINTR {
				return 0, err
			}
			since = time.Time{}
		default:
			return 0, err
		}
	}
}

var errShortRequest = errors.New("a request shorter than its header")

// putErrorAnswer writes into out the answer to request unique that fails it
// with errno, and returns its length (struct fuse_out_header).
func putErrorAnswer(out []byte, unique uint64, errno syscall.Errno) int {
	binary.NativeEndian.PutUint32(out[0:], 16)
	binary.NativeEndian.PutUint32(out[4:], uint32(-int32(errno)))
	binary.NativeEndian.PutUint64(out[8:], unique)
	return 16
}

// write sends an answer. ENOENT: the request is gone (interrupted, or its
// caller's connection ended), which is not this server's error.
func (c *conn) write(b []byte) {
	for {
		_, err := unix.Write(c.fd, b)
		switch err {
		case nil, unix.ENOENT, unix.ENODEV, unix.ECONNABORTED:
			return
		case unix.EINTR:
			continue
		default:
			c.log.Warn("an answer could not be written to the FUSE device", "err", err)
			return
		}
	}
}

// end is called by the loop whose read failed: the connection has ended
// (ENODEV: unmounted; ECONNABORTED: aborted) or cannot be read. The
// requests other loops are still answering are interrupted, as go-fuse's
// loop does at ENODEV, so that a handler waiting on its request's
// cancellation returns.
func (c *conn) end(err error) {
	c.ended.Do(func() {
		if err != syscall.ENODEV && err != syscall.ECONNABORTED {
			c.log.Warn("reading the FUSE device failed; the connection is no longer served", "err", err)
		}
		c.mu.Lock()
		c.over = true
		var answering []uint64
		for cur := range c.answering {
			if u := cur.Load(); u != 0 {
				answering = append(answering, u)
			}
		}
		c.mu.Unlock()
		out := make([]byte, 4096)
		for _, u := range answering {
			req := fuse.InterruptIn{
				InHeader: fuse.InHeader{Length: uint32(unsafe.Sizeof(fuse.InterruptIn{})), Opcode: opInterrupt, Unique: 2},
				Unique:   u,
			}
			buf := unsafe.Slice((*byte)(unsafe.Pointer(&req)), unsafe.Sizeof(req))
			c.ps.HandleRequest([][]byte{buf}, [][]byte{out})
		}
	})
}
