package handler

import (
	"context"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Caller identifies the process on whose behalf a callback runs: the uid and
// gid it acts with (its fsuid and fsgid) and its process id, as the kernel
// reports them in every FUSE request. The pid is the one seen from the
// server's pid namespace; it is 0 for requests the kernel makes on nobody's
// behalf (writeback, readahead on another process's behalf may still name
// the process that triggered it).
type Caller struct {
	Uid uint32
	Gid uint32
	Pid uint32
}

// CallerOf returns the caller of the request that ctx belongs to. It is
// valid in every callback the bridge makes for a syscall; ok is false for a
// ctx that did not come from a FUSE request (a call from Go code, such as
// the bridge snapshotting content at Create or after Entry.Invalidate).
// It costs no allocation.
func CallerOf(ctx context.Context) (c Caller, ok bool) {
	fc, ok := fuse.FromContext(ctx)
	if !ok || fc == nil {
		return Caller{}, false
	}
	return Caller{Uid: fc.Uid, Gid: fc.Gid, Pid: fc.Pid}, true
}
