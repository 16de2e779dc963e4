package fusebridge

import (
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
)

// This file keeps the children of a per-caller dynamic directory (one
// whose handler.DirHandler implements handler.PerCaller): there a Lookup
// or List that does not show a child says only that this caller does not
// see it, so no miss retires a child, as one would in a directory whose
// answers are everyone's (tree.go). What the bridge cannot learn from the
// answers it learns from the kernel: a child is forgotten when no answer
// has shown it since the last sweep and the kernel holds no inode for it.
// An open descriptor or a working directory keeps the inode, and with it
// the Entry and its inode number; a cached dentry would keep it too, for
// as long as the kernel pleases, so a sweep drops the dentries of the
// children that no answer showed since the sweep before (the kernel asks
// for every name of a dynamic directory anyway, its entries have no
// timeout), and once the kernel has forgotten them the next sweep forgets
// them. Children that no caller sees any more thus cannot accumulate under
// pid churn. The handler retires a child at once with handler.ErrVanished.
//
// A sweep costs a pass over the children, made by the adoption that
// reaches the limit (the dentry invalidations it asks for are sent in the
// background): it starts once half as many children as the last one found
// in use (shown since the sweep before, or held by the kernel since an
// earlier one; at least sweepMin) have been added since, so the map holds
// about twice the children that are shown or held plus a few sweeps' worth
// of new ones, and sweeping costs O(1) per child added.

// sweepMin is the smallest number of children that triggers a sweep.
const sweepMin = 128

// The values of Entry.mark.
const (
	markNone     uint32 = iota // not shown since the last sweep
	markSeen                   // shown since the last sweep
	markNotified               // not shown, and its dentry dropped by a sweep
	markSwept                  // forgotten by a sweep (no longer in the map)
)

// sweepLimitLocked is the number of children at which d sweeps next;
// srv.mu held.
func (d *Dir) sweepLimitLocked() int {
	if d.sweepAt < sweepMin {
		return sweepMin
	}
	return d.sweepAt
}

// sweep forgets the children of the per-caller dynamic directory d that no
// answer has shown since the last sweep and that the kernel does not hold,
// has the kernel drop its dentries of those it holds, and gives the others
// a new chance (clears their mark). A forgotten child is only unlinked, not
// killed: nothing can be using it, and if a listing taken before still
// returns it, relink puts it back. One sweep runs at a time; one that
// would start meanwhile is skipped (the next adoption starts it).
func (d *Dir) sweep() {
	if !d.sweeping.CompareAndSwap(false, true) {
		return
	}
	defer d.sweeping.Store(false)
	s := d.srv
	var candidates []*Entry
	// inUse counts the children found in use: shown since the last
	// sweep, or held by the kernel since an earlier one.
	inUse := 0
	s.mu.Lock()
	if d.removed {
		s.mu.Unlock()
		return
	}
	for e := range d.children.all {
		// An entry shown since the last sweep survives this one: a
		// lookup that just adopted it may not have handed its inode to
		// the kernel yet.
		if e.mark.CompareAndSwap(markSeen, markNone) {
			inUse++
		} else {
			candidates = append(candidates, e)
		}
	}
	s.mu.Unlock()

	// The kernel's inodes are go-fuse's tree, which drops a node once the
	// kernel has forgotten it; read outside s.mu, which no go-fuse lock
	// may wait for.
	var gone []*Entry
	var drop []string
	p := d.inode()
	for _, e := range candidates {
		if p != nil {
			if c := p.GetChild(e.name); c != nil && c.StableAttr().Ino == e.ino {
				// Asked once per child: if something other than its
				// dentry holds it (a descriptor, a working directory),
				// asking again is no use.
				if e.mark.CompareAndSwap(markNone, markNotified) {
					drop = append(drop, e.name)
				} else {
					inUse++ // held since an earlier sweep asked
				}
				continue
			}
		}
		gone = append(gone, e)
	}
	if len(drop) > 0 {
		// In the background: the kernel serves an entry invalidation only
		// once the lookups in flight in d are answered, and this may run
		// in one.
		go d.dropDentries(p, drop)
	}

	s.mu.Lock()
	for _, e := range gone {
		if d.children.get(e.name) != e {
			continue
		}
		// Not if shown again meanwhile: a lookup may be handing it over.
		if e.mark.CompareAndSwap(markNone, markSwept) || e.mark.CompareAndSwap(markNotified, markSwept) {
			d.children.delete(e.name)
		}
	}
	if !d.removed {
		// Half as many additions as children in use: O(1) sweeping per
		// child added for any size of the live set. Not half the
		// children kept: those include the ones whose dentries this
		// sweep asked the kernel to drop, which it forgets in its own
		// time, and a limit that grew with them would never shrink back
		// (the map settles at twice the additions between sweeps, any
		// number of them), so every time the kernel lagged under load
		// the map would keep a larger size for good.
		d.sweepAt = d.children.len() + max(inUse/2, sweepMin)
	}
	s.mu.Unlock()
}

// dropDentries has the kernel drop its dentries of the names in p, d's
// inode, so that it forgets the inodes that nothing else holds.
func (d *Dir) dropDentries(p *fs.Inode, names []string) {
	if h := dropDentriesHook.Load(); h != nil {
		(*h)()
	}
	for _, name := range names {
		if errno := p.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
			d.srv.log.Debug("entry invalidation failed", "name", d.entryPath(name), "errno", errno)
			if errno == syscall.ENOTCONN || errno == syscall.ENODEV {
				return // unmounted
			}
		}
	}
}

// dropDentriesHook, set by tests, runs before a sweep's dentry
// invalidations are sent: it stands for a kernel slow to serve them.
var dropDentriesHook atomic.Pointer[func()]

// relink returns e, a child of a per-caller dynamic directory that a
// listing returns, linked again if a sweep forgot it meanwhile (a slow
// reader's listing outlived two sweeps); nil if it was retired, or its
// name now belongs to another child.
func (d *Dir) relink(e *Entry) *Entry {
	s := d.srv
	s.mu.RLock()
	cur, removed := d.children.get(e.name), d.removed
	s.mu.RUnlock()
	if cur == e && !removed {
		return e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if d.removed {
		return nil
	}
	switch d.children.get(e.name) {
	case e:
		return e
	case nil:
		if e.mark.CompareAndSwap(markSwept, markSeen) {
			d.children.set(e)
			return e
		}
	}
	return nil
}
