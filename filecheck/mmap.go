package filecheck

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// The mapping steps run in child process 0 (see MaybeRunChild): the
// mappings live there, and the parent only sends orders.

func (p *pair) child() *worker {
	w, err := p.r.worker(0)
	if err != nil {
		p.failf("%v", err)
	}
	return w
}

// childOut turns a child's answer into an outcome.
func (p *pair) childOut(resp response, err error, data bool) outcome {
	if err != nil {
		p.failf("child process: %v", err)
	}
	switch {
	case resp.Fault != "":
		return outcome{n: -1, fault: resp.Fault}
	case resp.Errno != 0:
		return outcome{n: -1, err: unix.Errno(resp.Errno), info: resp.Msg}
	case resp.Msg != "":
		return outcome{n: resp.N, info: resp.Msg}
	case data:
		return outcome{n: resp.N, data: append([]byte{}, resp.Data...), hasData: true}
	}
	return outcome{n: resp.N}
}

func protString(prot int) string {
	var parts []string
	if prot&unix.PROT_READ != 0 {
		parts = append(parts, "PROT_READ")
	}
	if prot&unix.PROT_WRITE != 0 {
		parts = append(parts, "PROT_WRITE")
	}
	if len(parts) == 0 {
		return "PROT_NONE"
	}
	return strings.Join(parts, "|")
}

func mapFlagString(f int) string {
	switch f {
	case unix.MAP_SHARED:
		return "MAP_SHARED"
	case unix.MAP_PRIVATE:
		return "MAP_PRIVATE"
	}
	return fmt.Sprintf("%#x", f)
}

// mmap opens the file with openFlags in the child and maps length bytes
// from file offset off.
func (p *pair) mmap(openFlags int, off, length int64, prot, flags int) maph {
	m := maph(len(p.s[0].maps))
	w := p.child()
	call := fmt.Sprintf("mmap(NULL, %d, %s, %s, open(PATH, %s), %d) = %s", length, protString(prot), mapFlagString(flags), flagString(openFlags), off, m)
	p.do(call, func(s *side) outcome {
		resp, err := w.call(request{Op: "map", Path: s.path, Flags: openFlags, Off: off, Len: length, Prot: prot, MapFlags: flags}, p.r.cfg.CommandTimeout)
		o := p.childOut(resp, err, false)
		if o.err != 0 || o.fault != "" || o.info != "" {
			s.maps = append(s.maps, -1)
			return o
		}
		s.maps = append(s.maps, int(resp.N))
		return outcome{hideN: true, info: "ok"}
	})
	return m
}

func (s *side) mapID(m maph) int {
	if int(m) < 0 || int(m) >= len(s.maps) {
		return -1
	}
	return s.maps[m]
}

// mread reads n bytes at offset off of a mapping, in the child.
func (p *pair) mread(m maph, off, n int64) [2]outcome {
	w := p.child()
	return p.do(fmt.Sprintf("load %s[%d:%d]", m, off, off+n), func(s *side) outcome {
		id := s.mapID(m)
		if id < 0 {
			return outcome{n: -1, info: "no mapping"}
		}
		resp, err := w.call(request{Op: "mread", ID: id, Off: off, Len: n}, p.r.cfg.CommandTimeout)
		return p.childOut(resp, err, true)
	})
}

// mwrite stores data at offset off of a mapping, in the child.
func (p *pair) mwrite(m maph, off int64, data []byte) [2]outcome {
	w := p.child()
	return p.do(fmt.Sprintf("store %s[%d:%d] = %s", m, off, off+int64(len(data)), dataArg(data)), func(s *side) outcome {
		id := s.mapID(m)
		if id < 0 {
			return outcome{n: -1, info: "no mapping"}
		}
		resp, err := w.call(request{Op: "mwrite", ID: id, Off: off, Data: data}, p.r.cfg.CommandTimeout)
		return p.childOut(resp, err, false)
	})
}

func (p *pair) msync(m maph, flags int) [2]outcome {
	w := p.child()
	return p.do(fmt.Sprintf("msync(%s, MS_SYNC)", m), func(s *side) outcome {
		id := s.mapID(m)
		if id < 0 {
			return outcome{n: -1, info: "no mapping"}
		}
		resp, err := w.call(request{Op: "msync", ID: id, Flags: flags}, p.r.cfg.CommandTimeout)
		return p.childOut(resp, err, false)
	})
}

func (p *pair) munmap(m maph) [2]outcome {
	w := p.child()
	return p.do(fmt.Sprintf("munmap(%s)", m), func(s *side) outcome {
		id := s.mapID(m)
		if id < 0 {
			return outcome{n: -1, info: "no mapping"}
		}
		s.maps[m] = -1
		resp, err := w.call(request{Op: "munmap", ID: id}, p.r.cfg.CommandTimeout)
		return p.childOut(resp, err, false)
	})
}

// mapOnce maps the file in the child, loads n bytes at off (data nil) or
// stores data there, and unmaps it again.
func (p *pair) mapOnce(off int64, n int64, data []byte) [2]outcome {
	w := p.child()
	call := fmt.Sprintf("mmap(PATH, MAP_SHARED) and load [%d:%d], munmap", off, off+n)
	if data != nil {
		call = fmt.Sprintf("mmap(PATH, MAP_SHARED) and store [%d:%d] = %s, munmap", off, off+int64(len(data)), dataArg(data))
	}
	return p.do(call, func(s *side) outcome {
		resp, err := w.call(request{Op: "mapop", Path: s.path, Off: off, Len: n, Data: data}, p.r.cfg.CommandTimeout)
		return p.childOut(resp, err, data == nil)
	})
}

// semMmap checks that MAP_SHARED mappings and read(2)/write(2) see each
// other's changes, and the faults and errors at and past the end.
func semMmap(p *pair) {
	const pg = 4096
	h := p.open(unix.O_RDWR, 0)
	a := pattern(10000, 1)
	p.write(h, a)
	m := p.mmap(unix.O_RDWR, 0, 3*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	p.mread(m, 0, 10000)
	p.mread(m, 10000, 3*pg-10000) // the tail of the last page reads zeros
	p.pwrite(h, []byte("hello"), 5000)
	p.mread(m, 4990, 20) // write(2) is visible through the mapping
	p.mwrite(m, 7000, []byte("WORLD"))
	p.pread(h, 10, 6998) // and a store is visible to read(2)
	p.fstat(h, stSize)
	p.mwrite(m, 0, []byte("first page"))
	p.contents()

	big := p.mmap(unix.O_RDWR, 0, 4*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	p.mread(big, 3*pg, 1) // a page wholly past EOF: SIGBUS
	p.mwrite(big, 3*pg+10, []byte("x"))
	p.fstat(h, stSize)

	p.ftruncate(h, 4000)
	p.mread(m, 3990, 106) // past the new EOF in its page: zeros
	p.mread(m, 5000, 1)   // a page past the new EOF: SIGBUS
	p.ftruncate(h, 10000)
	p.mread(m, 3990, 1100) // the truncated tail came back as zeros
	p.pwrite(h, []byte("after regrow"), 6000)
	p.mread(m, 5990, 30)
	p.mwrite(m, 100, []byte("MMAP"))
	p.msync(m, unix.MS_SYNC)
	p.fsync(h)
	p.pread(h, 10, 98)
	p.contents()

	// A private mapping keeps its stores to itself.
	priv := p.mmap(unix.O_RDONLY, 0, 2*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	p.mwrite(priv, 0, []byte("PRIVATE"))
	p.mread(priv, 0, 10)
	p.pread(h, 10, 0)
	p.pwrite(h, []byte("shared!"), 2000)
	p.mread(priv, 1995, 15) // the copied page does not follow the file
	p.pwrite(h, []byte("shared!"), 5000)
	p.mread(priv, 4995, 15) // an untouched page does, on Linux
	p.munmap(priv)

	// Mappings the access mode does not allow, and bad arguments.
	p.mmap(unix.O_RDONLY, 0, pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	p.mmap(unix.O_WRONLY, 0, pg, unix.PROT_READ, unix.MAP_SHARED)
	ro := p.mmap(unix.O_RDONLY, 0, pg, unix.PROT_READ, unix.MAP_SHARED)
	p.mread(ro, 0, 20)
	p.mmap(unix.O_RDWR, 100, pg, unix.PROT_READ, unix.MAP_SHARED) // unaligned offset
	p.mmap(unix.O_RDWR, 0, 0, unix.PROT_READ, unix.MAP_SHARED)    // zero length
	off := p.mmap(unix.O_RDWR, pg, pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	p.mread(off, 0, 20)

	p.munmap(m)
	p.munmap(big)
	p.munmap(ro)
	p.munmap(off)
	p.contents()
}
