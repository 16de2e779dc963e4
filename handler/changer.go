package handler

// Changer is implemented by handlers whose content can change without a
// write through the mount: a knob set from Go code, a generated file that
// knows when its source changed. The bridge calls Changed once when it
// publishes the handler, with a notify function that tells the kernel and
// any watchers (inotify IN_MODIFY; see fusebridge.Entry.Notify) that the
// content changed, and calls stop when the entry is removed. The handler
// calls notify after each change, from any goroutine, never while holding
// a lock that its own callbacks take.
type Changer interface {
	Changed(notify func()) (stop func())
}
