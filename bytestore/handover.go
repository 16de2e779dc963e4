package bytestore

import (
	"encoding/json"
	"fmt"

	"golang.org/x/sys/unix"
)

// A store outlives its process when its descriptor is handed to another:
// the bytes are the kernel's, in shmem. Handover and Adopt are the two
// ends, for a server that restarts without a trace (fusebridge's
// Options.Restartable).

// handoverVersion names the layout of Handover's description.
const handoverVersion = "bytestore/1"

// storeState is what a new process needs besides the descriptor: the
// capacity the store enforces and, for an emulated capacity, the pages the
// kernel cannot list.
type storeState struct {
	Version  string
	Kind     Kind
	Capacity int64
	Page     int64
	Falloc   [][2]int64 `json:",omitempty"`
	Stale    [][2]int64 `json:",omitempty"`
}

// Handover returns the store's descriptor and a description of the store,
// which Adopt takes in another process (the descriptor passed with
// SCM_RIGHTS). The store goes on working here; a caller that hands it over
// must change nothing through it afterwards.
func (s *Store) Handover() (fd int, state []byte, err error) {
	st := storeState{Version: handoverVersion, Kind: s.kind, Capacity: s.capacity, Page: s.page}
	if s.emulate {
		s.mu.Lock()
		st.Falloc = runsOf(&s.falloc)
		st.Stale = runsOf(&s.stale)
		s.mu.Unlock()
	}
	state, err = json.Marshal(st)
	return s.fd, state, err
}

// Capacity returns the capacity the store was created with (0: none).
func (s *Store) Capacity() int64 { return s.capacity }

// Adopt makes a Store of a descriptor another process handed over with
// the description from its Handover. The store owns fd from then on. A
// description it does not understand, or of another page size, is an
// error, and fd is left to the caller.
func Adopt(fd int, state []byte) (*Store, error) {
	var st storeState
	if err := json.Unmarshal(state, &st); err != nil {
		return nil, fmt.Errorf("bytestore: adopt: the description is not understood: %w", err)
	}
	if st.Version != handoverVersion {
		return nil, fmt.Errorf("bytestore: adopt: the store is described as %q, this program reads %q", st.Version, handoverVersion)
	}
	if st.Kind != PrivateTmpfs && st.Kind != Memfd {
		return nil, fmt.Errorf("bytestore: adopt: unknown kind %v", st.Kind)
	}
	if page := int64(unix.Getpagesize()); st.Page != page {
		return nil, fmt.Errorf("bytestore: adopt: page size %d, this system has %d", st.Page, page)
	}
	s, err := setupStore(fd, st.Kind, st.Capacity)
	if err != nil {
		return nil, err
	}
	for _, r := range st.Falloc {
		s.falloc.add(r[0], r[1])
	}
	for _, r := range st.Stale {
		s.stale.add(r[0], r[1])
	}
	return s, nil
}

func runsOf(p *pageSet) [][2]int64 {
	out := make([][2]int64, 0, len(p.runs))
	for _, r := range p.runs {
		out = append(out, [2]int64{r.lo, r.hi})
	}
	return out
}
