// Package kept reads kernel files (procfs, cgroupfs, sysfs) through
// descriptors it keeps open, with pread(2) at offset 0: the kernel
// generates such a file afresh at every read from offset 0, so the content
// is as new as with open+read+close, without the path walk and the file's
// setup and teardown at each read.
//
// A kept descriptor of a file that has since been removed (a cgroup
// removed, perhaps recreated under the same name) fails with ENODEV (or
// ESTALE, ENOENT); it is then closed and the path opened anew, so a read
// never returns the content of a removed file as that of the path's new
// one. The number of kept descriptors is bounded: past the bound the
// oldest is closed.
package kept

import (
	"errors"
	"io"
	"os"
	"sync"
	"syscall"
)

// Files keeps descriptors; the zero Files keeps up to 1024.
type Files struct {
	// Max bounds the descriptors kept (1024 when zero).
	Max int

	mu    sync.Mutex
	open  map[string]*kept
	order []string // oldest first, for eviction
}

// kept is one kept descriptor. Its reads are serialized: a file longer than
// one read takes several preads, and another reader's pread from offset 0
// between them would make the kernel generate the file anew, so that the
// pieces would come from two generations.
type kept struct {
	mu sync.Mutex
	f  *os.File
}

// ReadFile returns the content of path, as os.ReadFile does.
func (k *Files) ReadFile(path string) ([]byte, error) {
	e, err := k.get(path)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	data, err := pread(e.f)
	e.mu.Unlock()
	if err == nil {
		return data, nil
	}
	// Removed since it was opened (or evicted meanwhile): forget the
	// descriptor and read the path as it is now.
	k.drop(path, e)
	if errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ESTALE) || errors.Is(err, syscall.ENOENT) || errors.Is(err, os.ErrClosed) {
		return os.ReadFile(path)
	}
	return nil, &os.PathError{Op: "read", Path: path, Err: err}
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
	k.open[path] = e
	k.order = append(k.order, path)
	return e, nil
}

func (e *kept) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.f.Close()
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
}

// pread reads the whole file from offset 0.
func pread(f *os.File) ([]byte, error) {
	buf := make([]byte, 0, 4096)
	for {
		n, err := f.ReadAt(buf[len(buf):cap(buf)], int64(len(buf)))
		buf = buf[:len(buf)+n]
		if err != nil {
			if errors.Is(err, io.EOF) {
				return buf, nil
			}
			return nil, err
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
	}
}
