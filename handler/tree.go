package handler

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"syscall"
)

// This file holds the node kinds of a /proc-style tree besides regular
// files: per-caller content, symbolic links and dynamic directories. A
// bridge (package fusebridge) publishes them with Dir.Create, like files.

// PerCaller is implemented by handlers whose content depends on who reads
// it (CallerOf). A bridge never serves such a file's content from a cache
// that another caller could hit: every open(2) reaches the handler, and the
// bytes it produced for one caller are never handed to another (an
// OpenFile.Caching set by its Open is ignored). Handlers that do not
// implement it, or return false, may be cached (the default). The answer is
// taken once, when the handler is published. On a DirHandler it says that
// each caller has its own children, so one caller's miss retires no child
// (see DirHandler).
type PerCaller interface{ PerCaller() bool }

// PerCallerGenerated is Generated whose content depends on the caller
// (CallerOf(ctx)): the function runs once per open(2), with the opening
// caller's context, and that descriptor reads that snapshot only.
type PerCallerGenerated func(ctx context.Context) ([]byte, error)

var (
	_ Opener    = PerCallerGenerated(nil)
	_ Reader    = PerCallerGenerated(nil)
	_ Releaser  = PerCallerGenerated(nil)
	_ PerCaller = PerCallerGenerated(nil)
)

// Open takes the opening caller's snapshot, as Generated does.
func (g PerCallerGenerated) Open(ctx context.Context, f *OpenFile) error {
	return Generated(g).Open(ctx, f)
}

// Read serves the snapshot taken at open; a read from offset 0 after an
// earlier read takes a new one for the reading caller, as for Generated.
func (g PerCallerGenerated) Read(ctx context.Context, f *OpenFile, dst []byte, off int64) (int, error) {
	return Generated(g).Read(ctx, f, dst, off)
}

// Release drops the snapshot, as Generated does.
func (g PerCallerGenerated) Release(ctx context.Context, f *OpenFile) {
	Generated(g).Release(ctx, f)
}

// PerCaller reports true: the content is the caller's own.
func (g PerCallerGenerated) PerCaller() bool { return true }

// Symlinker is a symbolic link's handler: Readlink returns the target for
// the caller of ctx (CallerOf), so one link may point somewhere different
// for every reader, as /proc/self does. An error is the errno readlink(2)
// and path resolution get.
type Symlinker interface {
	Readlink(ctx context.Context) (string, error)
}

// Link is a symbolic link with a fixed target.
type Link string

// Readlink returns the target.
func (l Link) Readlink(ctx context.Context) (string, error) { return string(l), nil }

// LinkFunc is a symbolic link whose target is computed for each reader,
// e.g. the caller's pid for a "self" link.
type LinkFunc func(ctx context.Context) (string, error)

// Readlink calls the function.
func (f LinkFunc) Readlink(ctx context.Context) (string, error) { return f(ctx) }

// SelfLink is a symbolic link to the calling process's id, as /proc/self:
// "1234" for a reader in process 1234 (a relative target, so that it
// resolves to a sibling directory such as a dynamic <pid> one).
var SelfLink Symlinker = LinkFunc(func(ctx context.Context) (string, error) {
	c, ok := CallerOf(ctx)
	if !ok {
		return "", syscall.ENOENT
	}
	pid, err := c.Pid()
	if err != nil {
		return "", err
	}
	return strconv.FormatUint(uint64(pid), 10), nil
})

// ProcessOf returns the process id (the thread group id) of thread tid. The
// kernel names the calling thread in a request (Caller.Tid), which in a
// multi-threaded process is often not the process; /proc/self names the
// process. It reads /proc/<tid>/status of the server's pid namespace, the
// one Caller.Tid is in; an exited thread is ENOENT.
func ProcessOf(tid uint32) (uint32, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tid))
	if err != nil {
		return 0, err
	}
	_, rest, ok := bytes.Cut(b, []byte("\nTgid:"))
	if !ok {
		return 0, fmt.Errorf("handler: no Tgid in /proc/%d/status: %w", tid, syscall.EIO)
	}
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	pid, err := strconv.ParseUint(string(bytes.TrimSpace(line)), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("handler: bad Tgid in /proc/%d/status: %w", tid, syscall.EIO)
	}
	return uint32(pid), nil
}

// DirHandler is a dynamic directory: its children are produced on demand,
// as /proc produces /proc/<pid>, so they need no registration each.
//
// Lookup returns the child called name, or an error that is (or wraps)
// syscall.ENOENT if there is none. List returns every child, in any order;
// names must be unique. Both may be called concurrently, with the caller's
// ctx (CallerOf). A child keeps its identity (its inode number, its open
// descriptors, the Node given when it was first seen) for as long as it
// exists; when it has vanished, an open gets ENOENT (also one racing the
// vanishing), descriptors opened on it get EIO from reads and writes, and a
// child of that name seen later is a new one (a new inode number). What
// tells the bridge that a child has vanished depends on whether the
// answers depend on the caller:
//
//   - A DirHandler that does not implement PerCaller (or returns false)
//     gives every caller the same answers, so a child is gone as soon as
//     one Lookup or List does not show it under the same name.
//   - A DirHandler whose PerCaller returns true (as /proc in a pid
//     namespace, where each caller sees its own pids) may show a child to
//     one caller and not to another: a miss is then only "not for this
//     caller" and retires nothing. A child has vanished when a Lookup
//     returns an error that is (or wraps) ErrVanished, which only the
//     handler can know; and the bridge forgets by itself a child that no
//     caller's answer has shown for a while and that the kernel no longer
//     holds (no descriptor, working directory or cached entry), so that
//     children nobody sees do not accumulate. Such a child shown again
//     later gets a new inode number, as a /proc/<pid> whose inode the
//     kernel evicted does.
type DirHandler interface {
	Lookup(ctx context.Context, name string) (Child, error)
	List(ctx context.Context) ([]Child, error)
}

// ErrVanished is the error a per-caller DirHandler's Lookup returns (or
// wraps) for a child that no longer exists for any caller, as opposed to
// plain syscall.ENOENT, "not visible to this caller": the bridge then
// retires the child at once (descriptors on it get EIO). The caller's
// errno is ENOENT. In a directory that is not per-caller it means the same
// as ENOENT.
var ErrVanished = fmt.Errorf("handler: the child has vanished for every caller: %w", syscall.ENOENT)

// Child is one child of a dynamic directory. Node is a file handler (any
// value implementing the file interfaces of this package), a Symlinker or
// a DirHandler.
type Child struct {
	Name string
	Mode fs.FileMode // permission bits
	Node any
	// Gen, if not zero, tells successive children of one name apart (for
	// a pid, the process's start time): a child shown with another Gen
	// than the one the bridge holds under that name is a new child (a new
	// inode number), and the old one is retired, its descriptors get EIO.
	// Without it the bridge can tell a name that vanished and came back
	// only if an answer in between did not show it (or, in a per-caller
	// directory, said ErrVanished). Every caller's answers must agree on it.
	// (fusebridge's Example_childGen shows a pid reused.)
	Gen uint64
	// Fixed marks a name that is there as long as the directory is, with
	// the same Node (/proc's meminfo beside its <pid> directories): the
	// kernel then keeps its name and attributes cached as a static file's,
	// so a path walk to it asks the handler nothing, where every other
	// child of a dynamic directory is looked up at each walk. Should an
	// answer stop showing it after all, the bridge drops the cached name.
	Fixed bool
}
