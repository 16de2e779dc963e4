package handler

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Caller identifies the thread on whose behalf a callback runs: the uid and
// gid it acts with (its fsuid and fsgid) and its thread id, as the kernel
// reports them in every FUSE request (the field the FUSE protocol calls
// pid holds the calling thread's id: in a multi-threaded program, such as
// any Go program, it is often not the process id). The id is the one seen
// from the server's pid namespace; it is 0 for requests the kernel makes
// on nobody's behalf (writeback; readahead on another process's behalf may
// still name the thread that triggered it) and for callers outside that
// namespace.
type Caller struct {
	Uid uint32
	Gid uint32
	// Tid is the calling thread's id. Its /proc/<tid> holds what is per
	// thread (credentials, cgroup); Pid gives the process id.
	Tid uint32
}

// Pid returns the calling process's id (the thread group id of Tid), as
// /proc/self and getpid(2) name it. It is not in the request: it costs a
// read of /proc/<tid>/status (ProcessOf), so it is resolved only when
// asked for. It fails with ENOENT for Tid 0 and for a thread that exited.
func (c Caller) Pid() (uint32, error) {
	if c.Tid == 0 {
		return 0, syscall.ENOENT
	}
	return ProcessOf(c.Tid)
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
	return Caller{Uid: fc.Uid, Gid: fc.Gid, Tid: fc.Pid}, true
}
