package handler

import "context"

// Changer is implemented by handlers whose content can change without a
// write through the mount: a knob set from Go code, a generated file that
// knows when its source changed. The bridge calls Changed once when it
// publishes the handler, with a notify function that tells the kernel and
// any watchers (inotify IN_MODIFY; see fusebridge.Entry.Notify) that the
// content changed, and calls stop when the entry is removed. The handler
// calls notify after each change, from any goroutine, never while holding
// a lock that its own callbacks take.
//
// The rule for events, as on /sys: a change made from Go raises one event
// (notify), and only if it changed what a reader sees (a Set of the value
// a knob already has raises none); a write(2) through the mount raises
// the kernel's own events only (one for an O_TRUNC open, one per write),
// so a handler does not call the notify of the file written through (see
// SourceChanger), only those of other paths that publish it.
type Changer interface {
	Changed(notify func()) (stop func())
}

// SourceChanger is a Changer that can tell which of its notify functions
// belongs to the file a write came through, so that a write through the
// mount raises no event of the bridge's on top of the kernel's own. The
// bridge registers with ChangedFrom, giving a src of its own (any
// comparable value) for the file, and marks the context of each WRITE to
// that file with WithWriteSource(ctx, src); on a change made by that
// write, the handler calls every notify function but those registered
// with src. Knob and Value implement it; a type that embeds one of them
// and overrides Changed must override ChangedFrom too, which is what the
// bridge calls.
type SourceChanger interface {
	Changer
	ChangedFrom(src any, notify func()) (stop func())
}

type writeSourceKey struct{}

// WithWriteSource returns ctx marked as the context of a write through the
// file whose notify functions were registered with src (SourceChanger).
func WithWriteSource(ctx context.Context, src any) context.Context {
	return context.WithValue(ctx, writeSourceKey{}, src)
}

// WriteSource returns the src of WithWriteSource, or nil.
func WriteSource(ctx context.Context) any { return ctx.Value(writeSourceKey{}) }
