// Package kept reads kernel files (procfs, cgroupfs, sysfs) through
// descriptors it keeps open, with pread(2) at offset 0: the kernel
// generates such a file afresh at every read from offset 0, so the content
// is as new as with open+read+close, without the path walk and the file's
// setup and teardown at each read.
//
// A kept descriptor of a file that has since been removed (a cgroup
// removed, perhaps recreated under the same name) fails with ENODEV (or
// ESTALE, ENOENT); one of a process's procfs file (/proc/PID/cgroup) fails
// with ESRCH once that process has exited, for the descriptor holds the
// process, not its number. It is then closed and the path opened anew, so
// a read never returns the content of a removed file, or of an exited
// process, as that of the path's new one (a cgroup made under the old
// name, a process that reuses the pid). The number of kept descriptors is
// bounded: past the bound the oldest is closed. A descriptor not read for
// Idle is closed too: a cgroup (or a reading thread) no longer read keeps
// nothing open, neither our descriptor nor the kernel's page-sized
// buffer behind it.
package kept

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Files keeps descriptors; the zero Files keeps up to 1024, each until it
// has not been read for DefaultIdle.
type Files struct {
	// Max bounds the descriptors kept (1024 when zero).
	Max int
	// Idle is how long a descriptor is kept without a read
	// (DefaultIdle when zero).
	Idle time.Duration

	mu    sync.Mutex
	open  map[string]*kept
	order []string    // oldest first, for eviction
	sweep *time.Timer // closes the idle descriptors; nil while none is kept
}

// DefaultIdle is how long a descriptor is kept without a read when
// Files.Idle is zero.
const DefaultIdle = 10 * time.Second

// kept is one kept descriptor. Its reads are serialized: a file longer than
// one read takes several preads, and another reader's pread from offset 0
// between them would make the kernel generate the file anew, so that the
// pieces would come from two generations.
type kept struct {
	mu   sync.Mutex
	f    *os.File
	size int          // of the last read: the next one's buffer
	used atomic.Int64 // when it was last read (Unix nanoseconds)
}

// ReadFile returns the content of path, as os.ReadFile does.
func (k *Files) ReadFile(path string) ([]byte, error) {
	return k.Read(path, nil)
}

// Read appends the content of path to buf and returns it, as ReadFile
// does: a caller that only parses the content may pass a buffer of its
// own to read into. Without one, the buffer is sized after the file's
// last read.
func (k *Files) Read(path string, buf []byte) ([]byte, error) {
	return k.read(path, buf, false)
}

// ReadRecord is Read for a file that the kernel generates as one record
// (seq_file's single_open: /proc/meminfo, stat, uptime, loadavg,
// /proc/PID/cgroup and stat, sysfs attributes, and the cgroup control
// files but for the lists cgroup.procs and tasks): its read from offset 0
// returns the whole file, or as much as fits, so a read that fills less
// than its room has reached the end, and the pread that would return
// nothing is spared. Never for a file of several records (cpuinfo,
// diskstats, swaps, slabinfo, cgroup.procs): their reads stop at the end
// of the seq_file's page, before the end of the file.
func (k *Files) ReadRecord(path string, buf []byte) ([]byte, error) {
	return k.read(path, buf, true)
}

func (k *Files) read(path string, buf []byte, oneRecord bool) ([]byte, error) {
	e, err := k.get(path)
	if err != nil {
		return nil, err
	}
	e.used.Store(time.Now().UnixNano())
	e.mu.Lock()
	if buf == nil {
		// Room for the last size and a little growth: one pread, and
		// (but for one record) the one that says EOF.
		buf = make([]byte, 0, e.size+e.size/8+64)
	}
	var data []byte
	err = os.ErrClosed // closed by an eviction since get
	if e.f != nil {
		data, err = pread(e.f, buf, oneRecord)
	}
	if err == nil {
		e.size = len(data) - len(buf)
	}
	e.mu.Unlock()
	if err == nil {
		return data, nil
	}
	// Removed since it was opened, its process gone (or evicted
	// meanwhile): forget the descriptor and read the path as it is now.
	k.drop(path, e)
	if gone(err) {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		return append(buf, data...), nil
	}
	return nil, &os.PathError{Op: "read", Path: path, Err: err}
}

// gone tells the errors of a descriptor whose file is no longer the
// path's: removed (ENODEV, ESTALE, ENOENT), of an exited process (ESRCH),
// or closed by an eviction.
func gone(err error) bool {
	for _, e := range []error{syscall.ENODEV, syscall.ESTALE, syscall.ENOENT, syscall.ESRCH, os.ErrClosed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// get returns the kept descriptor of path, opening it if there is none.
func (k *Files) get(path string) (*kept, error) {
	k.mu.Lock()
	if e, ok := k.open[path]; ok {
		k.mu.Unlock()
		return e, nil
	}
	k.mu.Unlock()
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if other, ok := k.open[path]; ok {
		f.Close() // opened meanwhile by another reader
		return other, nil
	}
	if k.open == nil {
		k.open = map[string]*kept{}
	}
	max := k.Max
	if max <= 0 {
		max = 1024
	}
	for len(k.order) >= max {
		old := k.order[0]
		k.order = k.order[1:]
		if e, ok := k.open[old]; ok {
			delete(k.open, old)
			go e.close() // after a read in progress
		}
	}
	e := &kept{f: f}
	e.used.Store(time.Now().UnixNano())
	k.open[path] = e
	k.order = append(k.order, path)
	if k.sweep == nil {
		k.sweep = time.AfterFunc(k.idle(), k.closeIdle)
	}
	return e, nil
}

func (k *Files) idle() time.Duration {
	if k.Idle > 0 {
		return k.Idle
	}
	return DefaultIdle
}

// closeIdle closes the descriptors not read for Idle, and comes back
// while any is kept.
func (k *Files) closeIdle() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.sweep == nil {
		return // Close
	}
	idle := k.idle()
	cut := time.Now().Add(-idle).UnixNano()
	stay := k.order[:0]
	for _, path := range k.order {
		e := k.open[path]
		if e == nil {
			continue
		}
		if e.used.Load() < cut {
			delete(k.open, path)
			go e.close() // after a read in progress
			continue
		}
		stay = append(stay, path)
	}
	clear(k.order[len(stay):])
	k.order = stay
	if len(k.order) == 0 {
		k.sweep = nil
		return
	}
	k.sweep.Reset(idle / 2)
}

func (e *kept) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.f != nil {
		e.f.Close()
		e.f = nil
	}
}

// drop forgets e as path's descriptor, and closes it.
func (k *Files) drop(path string, e *kept) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.open[path] == e {
		go e.close()
		delete(k.open, path)
		for i, p := range k.order {
			if p == path {
				k.order = append(k.order[:i], k.order[i+1:]...)
				break
			}
		}
	}
}

// Close closes every kept descriptor.
func (k *Files) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, e := range k.open {
		e.close()
	}
	k.open, k.order = nil, nil
	if k.sweep != nil {
		k.sweep.Stop()
		k.sweep = nil
	}
}

// pread appends the whole file, read from offset 0, to buf. With
// oneRecord, a read that fills less than the room it was given is the
// last (see ReadRecord); else the last is the one that reads nothing.
func pread(f *os.File, buf []byte, oneRecord bool) ([]byte, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	base := len(buf)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		room := buf[len(buf):cap(buf)]
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			for {
				n, rerr = syscall.Pread(int(fd), room, int64(len(buf)-base))
				if rerr != syscall.EINTR {
					return true
				}
			}
		}); err != nil {
			return nil, err
		}
		if rerr != nil {
			return nil, rerr
		}
		buf = buf[:len(buf)+n]
		if n == 0 || (oneRecord && n < len(room)) {
			return buf, nil
		}
	}
}
