package filecheck

import (
	"fmt"
	"math/rand/v2"
	"time"

	"golang.org/x/sys/unix"
)

// The randomized check, in the manner of fsx: a seeded sequence of
// operations on both files, with the offsets and the contents compared after
// every one. A failure is reported with its seed and operation number (the
// shortest failing prefix of the sequence), then shrunk by deleting
// operations while the sequence still fails, each candidate replayed on
// freshly emptied files.

const (
	randMaxOff = 256 << 10 // offsets and sizes are drawn below this
	randMaxLen = 64 << 10  // lengths are drawn below this
	maxReplays = 400       // shrinking gives up after this many replays
)

// rop is one random operation. It is drawn without looking at the files'
// state, so that any subsequence is a valid sequence too.
type rop struct {
	kind   string
	off    int64
	n      int64
	whence int
	mode   uint32
	flags  int
	seed   uint64
}

func (o rop) String() string {
	switch o.kind {
	case "read":
		return fmt.Sprintf("read(fd, %d)", o.n)
	case "write":
		return fmt.Sprintf("write(fd, %d bytes #%d)", o.n, o.seed)
	case "pread":
		return fmt.Sprintf("pread(fd, %d, %d)", o.n, o.off)
	case "pwrite":
		return fmt.Sprintf("pwrite(fd, %d bytes #%d, %d)", o.n, o.seed, o.off)
	case "lseek":
		return fmt.Sprintf("lseek(fd, %d, %s)", o.off, whenceString(o.whence))
	case "ftruncate":
		return fmt.Sprintf("ftruncate(fd, %d)", o.off)
	case "fallocate":
		return fmt.Sprintf("fallocate(fd, %s, %d, %d)", fallocString(o.mode), o.off, o.n)
	case "open":
		return fmt.Sprintf("close(fd); fd = open(PATH, %s)", flagString(o.flags))
	case "mapread":
		return fmt.Sprintf("mmap MAP_SHARED, load up to %d bytes of data at or after %d, munmap", o.n, o.off)
	case "mapwrite":
		return fmt.Sprintf("mmap MAP_SHARED, store up to %d bytes #%d at %d (not past EOF), munmap", o.n, o.seed, o.off)
	}
	return o.kind
}

// randomData is n printable bytes drawn from seed.
func randomData(seed uint64, n int64) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, n)
	var x uint64
	for i := range b {
		if i%8 == 0 {
			x = rng.Uint64()
		}
		b[i] = 'a' + byte(x%26)
		x >>= 8
	}
	return b
}

// genOps draws the sequence for a seed.
func genOps(seed int64, count int) []rop {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15))
	length := func() int64 {
		switch rng.IntN(4) {
		case 0:
			return rng.Int64N(16)
		case 1:
			return 1 + rng.Int64N(4096)
		}
		return 1 + rng.Int64N(randMaxLen)
	}
	offset := func() int64 {
		if rng.IntN(4) == 0 { // near a page boundary
			return max(0, rng.Int64N(randMaxOff/4096+1)*4096+rng.Int64N(3)-1)
		}
		return rng.Int64N(randMaxOff)
	}
	type kind struct {
		name   string
		weight int
	}
	kinds := []kind{
		{"read", 10}, {"write", 10}, {"pread", 10}, {"pwrite", 14}, {"lseek", 10},
		{"ftruncate", 6}, {"fallocate", 6}, {"open", 3}, {"mapread", 2}, {"mapwrite", 2},
	}
	total := 0
	for _, k := range kinds {
		total += k.weight
	}
	ops := make([]rop, count)
	for i := range ops {
		w := rng.IntN(total)
		var name string
		for _, k := range kinds {
			if w < k.weight {
				name = k.name
				break
			}
			w -= k.weight
		}
		o := rop{kind: name, seed: rng.Uint64() >> 16}
		switch name {
		case "read", "mapread":
			o.n, o.off = length(), offset()
		case "write", "pread", "pwrite", "mapwrite":
			o.n, o.off = length(), offset()
		case "lseek":
			o.whence = []int{unix.SEEK_SET, unix.SEEK_CUR, unix.SEEK_END, unix.SEEK_DATA, unix.SEEK_HOLE}[rng.IntN(5)]
			switch o.whence {
			case unix.SEEK_CUR:
				o.off = rng.Int64N(2*randMaxLen) - randMaxLen
			case unix.SEEK_END:
				o.off = rng.Int64N(randMaxLen+16<<10) - randMaxLen
			default:
				o.off = offset()
			}
		case "ftruncate":
			o.off = offset()
		case "fallocate":
			o.mode = []uint32{0, unix.FALLOC_FL_KEEP_SIZE, unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE}[rng.IntN(3)]
			o.off, o.n = offset(), max(1, length())
		case "open":
			o.flags = []int{rdwr, rdwr | unix.O_APPEND, rdwr | unix.O_TRUNC, rdwr | unix.O_SYNC}[rng.IntN(4)]
		}
		ops[i] = o
	}
	return ops
}

// exec runs one operation on both files through handle cur and returns the
// handle to use next.
func (o rop) exec(p *pair, cur fdh) fdh {
	switch o.kind {
	case "read":
		p.read(cur, int(o.n))
	case "write":
		p.write(cur, randomData(o.seed, o.n))
	case "pread":
		p.pread(cur, int(o.n), o.off)
	case "pwrite":
		p.pwrite(cur, randomData(o.seed, o.n), o.off)
	case "lseek":
		p.lseek(cur, o.off, o.whence)
	case "ftruncate":
		p.ftruncate(cur, o.off)
	case "fallocate":
		p.fallocate(cur, o.mode, o.off, o.n)
	case "open":
		p.close(cur)
		return p.open(o.flags, 0)
	case "mapread":
		// Only over data the oracle has: a load from a hole makes tmpfs
		// allocate the page (it turns into data for SEEK_DATA), which a
		// FUSE server cannot tell from a read(2).
		ofd := p.s[oracleSide].vfd
		d, err := unix.Seek(ofd, o.off, unix.SEEK_DATA)
		if err != nil {
			return cur
		}
		e, err := unix.Seek(ofd, d, unix.SEEK_HOLE)
		if err != nil || e <= d {
			return cur
		}
		p.mapOnce(d, min(o.n, e-d), nil)
	case "mapwrite":
		// Only below EOF: stores past EOF are lost on tmpfs in ways a FUSE
		// server never sees.
		var st unix.Stat_t
		if err := unix.Fstat(p.s[oracleSide].vfd, &st); err != nil || o.off >= st.Size {
			return cur
		}
		p.mapOnce(o.off, 0, randomData(o.seed, min(o.n, st.Size-o.off)))
	}
	return cur
}

// replayResult is the outcome of running a sequence.
type replayResult struct {
	failed int // index of the failing operation, -1 if none
	diff   *Diff
	reason string
	skip   string
}

// replay runs ops on freshly emptied files, comparing offsets and contents
// after each.
func (r *runner) replay(ops []rop, progress bool) (res replayResult, err error) {
	res.failed = -1
	p, err := r.newPair("random")
	if err != nil {
		return res, err
	}
	defer p.release()
	i := -1
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		switch x := v.(type) {
		case *stepFailure:
			d := x.diff
			d.Step = i + 1
			if i >= 0 {
				d.Call = fmt.Sprintf("op %d %s: %s", i+1, ops[i], d.Call)
			}
			res.failed, res.diff, res.reason = max(i, 0), &d, d.String()
		case *checkFailure:
			res.failed, res.reason = max(i, 0), x.reason
		case *checkSkip:
			res.skip = x.reason
		default:
			panic(v)
		}
	}()
	cur := p.open(rdwr, 0)
	for i = 0; i < len(ops); i++ {
		if progress && i%50 == 0 {
			r.progressf("random: op %d/%d (seed %d)", i, len(ops), r.cfg.Seed)
		}
		cur = ops[i].exec(p, cur)
		p.pos(cur)
		p.contents()
	}
	return res, nil
}

func runRandom(r *runner, c *check) (res Result) {
	res.Name = c.name
	ops := genOps(r.cfg.Seed, r.cfg.Ops)
	first, err := r.replay(ops, true)
	switch {
	case err != nil:
		res.Status, res.Reason = Fail, err.Error()
		return res
	case first.skip != "":
		res.Status, res.Reason = Skip, first.skip
		return res
	case first.failed < 0:
		res.Status, res.Reason = Pass, fmt.Sprintf("%d ops, seed %d", len(ops), r.cfg.Seed)
		return res
	}

	// Shrink the failing prefix by deleting chunks of operations.
	seq := ops[:first.failed+1]
	last := first
	deadline := time.Now().Add(r.cfg.ShrinkTimeout)
	replays := 0
	for chunk := max(len(seq)/2, 1); chunk >= 1; {
		removed := false
		for start := 0; start < len(seq); {
			if time.Now().After(deadline) || replays >= maxReplays || r.ctx.Err() != nil {
				chunk = 0
				break
			}
			r.progressf("random: shrinking, %d ops left (chunk %d)", len(seq), chunk)
			cand := append(append([]rop{}, seq[:start]...), seq[min(start+chunk, len(seq)):]...)
			replays++
			got, err := r.replay(cand, false)
			if err == nil && got.failed >= 0 {
				seq, last, removed = cand[:got.failed+1], got, true
			} else {
				start += chunk
			}
		}
		if chunk == 0 {
			break
		}
		if !removed {
			chunk /= 2
		}
	}

	res.Status = Fail
	res.FirstDiff = first.diff
	res.Reason = fmt.Sprintf("seed %d: the first %d of %d ops are the shortest failing prefix (%s); shrunk to %d ops; rerun with --run '^random$' --seed %d --ops %d",
		r.cfg.Seed, first.failed+1, len(ops), first.reason, len(seq), r.cfg.Seed, first.failed+1)
	res.Details = append(res.Details, fmt.Sprintf("shrunk sequence (%d replays), from an empty file opened O_RDWR:", replays))
	for i, o := range seq {
		res.Details = append(res.Details, fmt.Sprintf("  %d. %s", i+1, o))
	}
	res.Details = append(res.Details, "then: "+last.reason)
	return res
}
