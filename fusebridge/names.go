package fusebridge

import "hash/maphash"

// names is a directory's children, found by name: an open-addressing hash
// table of the entries themselves, keyed by their own name (linear
// probing, deletion by backward shift, so no tombstones).
//
// Why not a map[string]*Entry: a map slot holds the name's string header
// beside the pointer, 24 bytes, where the name is already in the entry,
// and at the load a map settles at between growths a child cost 40-45
// bytes of map on each connection of a split mount (a bounded file is a
// child of both): 9 of the 100 MiB a server of a 100,000-file tree held
// (the lib-tree-rss row of ramproc bench -workloads lib). A slot here is
// one pointer, and a child costs 11-22 bytes. A lookup hashes the name
// and follows one or two entries' pointers to compare it: nanoseconds,
// against a FUSE round trip's tens of microseconds.
//
// Guarded, like the map it replaces, by the connection's Server.mu. The
// zero value is an empty table.
type names struct {
	slots []*Entry // nil, or a power of two of them
	n     int
}

// namesSeed hashes every table's names: one seed per process, not per
// table, as nothing outside the process chooses the names to collide.
var namesSeed = maphash.MakeSeed()

// minNames is the number of slots of a table's first allocation.
const minNames = 8

// slot returns the index of name's slot: where its entry is, or the empty
// slot where it would go.
func (t *names) slot(name string) int {
	mask := len(t.slots) - 1
	i := int(maphash.String(namesSeed, name)) & mask
	for e := t.slots[i]; e != nil && e.name != name; e = t.slots[i] {
		i = (i + 1) & mask
	}
	return i
}

// get returns the entry named name, or nil.
func (t *names) get(name string) *Entry {
	if t.n == 0 {
		return nil
	}
	return t.slots[t.slot(name)]
}

// set puts e under its name, in place of the entry of that name if there
// is one.
func (t *names) set(e *Entry) {
	// At most three quarters full: an unsuccessful search then probes
	// about eight slots at worst, two on average.
	if 4*(t.n+1) > 3*len(t.slots) {
		t.resize(max(minNames, 2*len(t.slots)))
	}
	i := t.slot(e.name)
	if t.slots[i] == nil {
		t.n++
	}
	t.slots[i] = e
}

// delete removes the entry named name, if there is one.
func (t *names) delete(name string) {
	if t.n == 0 {
		return
	}
	i := t.slot(name)
	if t.slots[i] == nil {
		return
	}
	t.slots[i] = nil
	t.n--
	// Move back every entry of the run after i that the gap would hide
	// from its own search (one whose home slot is not between the gap
	// and where it sits, cyclically).
	mask := len(t.slots) - 1
	for j := (i + 1) & mask; t.slots[j] != nil; j = (j + 1) & mask {
		home := int(maphash.String(namesSeed, t.slots[j].name)) & mask
		if (j-home)&mask >= (j-i)&mask {
			t.slots[i], t.slots[j] = t.slots[j], nil
			i = j
		}
	}
	// A directory that shrank (a per-caller one after a sweep) gives
	// the space back; at an eighth full, so that a few additions and
	// removals around one size never resize back and forth.
	if len(t.slots) > minNames && 8*t.n < len(t.slots) {
		t.resize(len(t.slots) / 2)
	}
}

// resize moves the entries into a table of size slots (a power of two).
func (t *names) resize(size int) {
	old := t.slots
	t.slots = make([]*Entry, size)
	for _, e := range old {
		if e != nil {
			t.slots[t.slot(e.name)] = e
		}
	}
}

// len returns the number of entries.
func (t *names) len() int { return t.n }

// all yields every entry, in no particular order. The loop must not add
// or delete entries (a deletion moves others, which would then be
// skipped or yielded twice).
func (t *names) all(yield func(*Entry) bool) {
	for _, e := range t.slots {
		if e != nil && !yield(e) {
			return
		}
	}
}

// clear empties the table and frees its slots.
func (t *names) clear() { t.slots, t.n = nil, 0 }
