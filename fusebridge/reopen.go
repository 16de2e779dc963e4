package fusebridge

import (
	"context"
	"os"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// reopening reports whether an open is a restarted server's own, opening
// again a descriptor its predecessor had (handover.go's replay), so that
// the handler takes its snapshot at the first read, for the reader
// (handler.OpenFile.Reopened). In a process started by a restart, those
// opens are made in the process's own id, which no reader has but the
// process's main thread (for which a snapshot taken at the first read is
// as right). inherit is written only before the mount is served.
func reopening(ctx context.Context) bool {
	if inherit.in == nil {
		return false
	}
	c, ok := fuse.FromContext(ctx)
	return ok && c != nil && c.Pid == selfPid
}

var selfPid = uint32(os.Getpid())
