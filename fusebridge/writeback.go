package fusebridge

import (
	"context"

	"github.com/ramproc/ramproc/handler"
)

// writebackFailed is called when a WRITE fails. A WRITE on nobody's behalf
// (pid 0) is the kernel writing back its cached pages (a store through a
// shared mapping, without passthrough): when it fails, the kernel records the
// error for msync(2) and fsync(2) but keeps the pages, so read(2) would go on
// returning bytes the handler never stored. Dropping the kernel's cached
// pages makes the next read ask the handler. It must not happen inside the
// WRITE callback: the kernel holds the written pages under writeback until
// the reply, and the invalidation waits for them; so it runs in a goroutine
// and completes right after the reply. The whole file is dropped, because a
// handler may also have given up pages outside the write's range (ramfile
// does, to keep what it holds independent of writeback order).
func (n *fileNode) writebackFailed(ctx context.Context) {
	if c, ok := handler.CallerOf(ctx); !ok || c.Tid != 0 {
		return
	}
	go n.NotifyContent(0, 0)
}
