package filecheck

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The concurrency checks run several child processes (see MaybeRunChild)
// against one file at once: first against the file under test, then against
// the oracle.

const concProcs = 4

// parallel sends one request to each of n child processes at once and
// collects their answers.
func (p *pair) parallel(n int, mk func(i int, startAt int64) request) []response {
	ws := make([]*worker, n)
	for i := range ws {
		w, err := p.r.worker(i)
		if err != nil {
			p.failf("%v", err)
		}
		ws[i] = w
	}
	startAt := time.Now().Add(50 * time.Millisecond).UnixNano()
	for i, w := range ws {
		if err := w.send(mk(i, startAt)); err != nil {
			p.failf("child process %d: %v", i, err)
		}
	}
	out := make([]response, n)
	var errs []string
	for i, w := range ws {
		r, err := w.recv(p.r.cfg.CommandTimeout)
		if err != nil {
			errs = append(errs, fmt.Sprintf("child process %d: %v", i, err))
		}
		out[i] = r
	}
	if len(errs) > 0 {
		p.failf("%s", strings.Join(errs, "; "))
	}
	return out
}

// writeErrors summarizes failed writes reported by children.
func writeErrors(rs []response) string {
	total := map[string]int{}
	for _, r := range rs {
		if r.Errno != 0 {
			total[r.Msg+" "+errnoName(unix.Errno(r.Errno))]++
		}
		for k, v := range r.Counts {
			total[k] += v
		}
	}
	if len(total) == 0 {
		return ""
	}
	var parts []string
	for k, v := range total {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// concAppend has several processes append records with O_APPEND at the
// same time; every record must end up in the file once and intact.
func concAppend(p *pair) {
	const count = 150
	p.do(fmt.Sprintf("%d processes, each open(O_WRONLY|O_APPEND) and %d write(record), at once; then parse the file", concProcs, count), func(s *side) outcome {
		rs := p.parallel(concProcs, func(i int, at int64) request {
			return request{Op: "append", Path: s.path, Proc: i, Count: count, StartAt: at}
		})
		if e := writeErrors(rs); e != "" {
			return outcome{n: -1, info: "failed writes: " + e}
		}
		data, err := readAll(s.vfd, 64<<20)
		if err != nil {
			return errOut(err)
		}
		return outcome{hideN: true, info: recordsVerdict(data, concProcs, count)}
	})
	p.size()
}

// concPwrite has several processes pwrite interleaved stripes (not aligned
// to pages, so neighbours share pages) at the same time; the file must hold
// every stripe.
func concPwrite(p *pair) {
	const count, size = 48, 3001
	p.do(fmt.Sprintf("%d processes, each pwrite %d stripes of %d bytes (stripe j at j*%d, j ≡ process mod %d), at once", concProcs, count, size, size, concProcs), func(s *side) outcome {
		rs := p.parallel(concProcs, func(i int, at int64) request {
			return request{Op: "stripes", Path: s.path, Proc: i, Procs: concProcs, Count: count, Size: size, StartAt: at}
		})
		if e := writeErrors(rs); e != "" {
			return outcome{n: -1, info: "failed writes: " + e}
		}
		data, err := readAll(s.vfd, 64<<20)
		if err != nil {
			return errOut(err)
		}
		stripes := count * concProcs
		if len(data) != stripes*size {
			return outcome{hideN: true, info: fmt.Sprintf("file holds %d bytes, want %d", len(data), stripes*size)}
		}
		for j := 0; j < stripes; j++ {
			want := stripe(j, size)
			got := data[j*size : (j+1)*size]
			if string(got) != string(want) {
				k := 0
				for got[k] == want[k] {
					k++
				}
				return outcome{hideN: true, info: fmt.Sprintf("stripe %d is wrong from byte %d: %s, want %s", j, j*size+k, summarize(got[k:], 40), summarize(want[k:], 40))}
			}
		}
		return outcome{hideN: true, info: fmt.Sprintf("all %d stripes intact", stripes)}
	})
	p.contents()
}
