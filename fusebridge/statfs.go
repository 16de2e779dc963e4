package fusebridge

import (
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Space is what statfs(2) (and so df) reports for a mount, in bytes, as a
// tmpfs mounted with size= reports it.
type Space struct {
	// Capacity is the most the mount's files may hold; 0 means no limit,
	// which is reported as tmpfs reports size=0: no block counts at all.
	Capacity int64
	// Used is what the files hold now (their allocated pages, not their
	// sizes: a sparse file's holes cost nothing).
	Used int64
}

// statfsPage is tmpfs's block size: its capacity and use are in pages.
const statfsPage = 4096

// defaultInodes is the inode count tmpfs gives a mount without nr_inodes=:
// half the machine's pages of RAM. Computed once; RAM does not change.
var defaultInodes = sync.OnceValue(func() uint64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return uint64(si.Totalram) * uint64(si.Unit) / statfsPage / 2
})

// fillStatfs answers STATFS as tmpfs would for the same capacity, use and
// number of files. The kernel fills in f_fsid and f_flags itself.
func (s *Server) fillStatfs(out *fuse.StatfsOut) {
	var sp Space
	if s.opts.Space != nil {
		sp = s.opts.Space()
	}
	*out = fuse.StatfsOut{}
	out.Bsize = statfsPage
	out.Frsize = statfsPage
	out.NameLen = 255
	if sp.Capacity > 0 {
		// tmpfs rounds size= up to whole pages, and counts use in pages.
		blocks := uint64((sp.Capacity + statfsPage - 1) / statfsPage)
		used := uint64((max(sp.Used, 0) + statfsPage - 1) / statfsPage)
		out.Blocks = blocks
		out.Bfree = blocks - min(used, blocks)
		out.Bavail = out.Bfree
	}
	if files := defaultInodes(); files > 0 {
		// The root directory is an inode too, as on tmpfs.
		inUse := uint64(s.Published()) + 1
		out.Files = files
		out.Ffree = files - min(inUse, files)
	}
}

// Published returns the number of entries published on the mount: files,
// directories and symbolic links made by Create and Mkdir, at any depth
// (the children a dynamic directory produces on demand are not counted).
func (s *Server) Published() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rootDir.countLocked()
}

// countLocked counts d's published entries and those below it.
func (d *Dir) countLocked() int {
	if d.dyn != nil {
		return 0
	}
	n := d.children.len()
	for c := range d.children.all {
		if c.dir != nil {
			n += c.dir.countLocked()
		}
	}
	return n
}
