package handler

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Knob is a typed /sys attribute: a value of type T that a reader sees
// formatted as text and a writer sets by writing text, like a sysfs
// attribute with show() and store(), and that Go code reads with Get, sets
// with Set and observes with OnChange, without parsing bytes.
//
// The ready-made kinds are NewInt, NewBool, NewEnum and NewString; NewKnob
// makes one of any type from a Codec.
//
// Semantics, as sysfs has them for an attribute:
//
//   - each write(2) is one store: its bytes are parsed as a whole, the
//     offset is ignored, and the count is returned on success, so
//     `echo 3 > knob` and `printf 3 > knob` both work (O_TRUNC is ignored,
//     as on /sys);
//   - a write larger than 4096 bytes (sysfs's PAGE_SIZE limit) fails with
//     E2BIG, and a value the codec or a Validate function rejects fails
//     with its errno (EINVAL for a bad spelling or a value out of bounds);
//     either way the value is unchanged and no reader ever sees a partial
//     one;
//   - a read shows the value as it was at open(2) (sysfs generates the
//     text once per open, at the first read), so reading in small pieces
//     never mixes two values.
//   - a read that starts after a write(2) returned shows the new value, in
//     every mount mode: where the kernel caches the text across opens (a
//     no-open connection), the bridge drops the cached pages before it
//     answers the write. A read running while the write is in flight may
//     see the old text, the new one, or there the written bytes over the
//     old text (sysfs shows old or new).
//
// Changes are serialized: Validate and OnChange functions run one change
// at a time, in the order the changes take effect, and must not call Set
// on the same knob (that would wait for itself). Get never waits for them.
// A Knob implements Changer, so a bridge tells the kernel and any watcher
// about changes made by Set as well as by writes through the mount.
type Knob[T any] struct {
	codec Codec[T]

	// cur holds the current value; readers load it without a lock.
	cur atomic.Pointer[T]

	// change serializes changes and guards the function lists below.
	change   sync.Mutex
	validate []func(T) error
	onChange []func(old, new T)

	notifiers
}

// Codec turns a knob's value into text and back, and says which values
// are allowed.
type Codec[T any] interface {
	// Parse reads the bytes of one write(2). It returns an error wrapping
	// a syscall.Errno (usually EINVAL) for a spelling it rejects.
	Parse(b []byte) (T, error)
	// Check rejects a well-spelled value that is not allowed (out of
	// bounds, not a choice, too long), usually with EINVAL. It is applied
	// to every write and every Set.
	Check(v T) error
	// Format returns the text a read shows, usually ending in "\n".
	Format(v T) []byte
}

// maxStore is the largest write a sysfs attribute takes: kernfs sets
// atomic_write_len to PAGE_SIZE and refuses longer writes with E2BIG.
const maxStore = 4096

var (
	_ Opener        = (*Knob[int64])(nil)
	_ Reader        = (*Knob[int64])(nil)
	_ Writer        = (*Knob[int64])(nil)
	_ SnapshotSizer = (*Knob[int64])(nil)
	_ SourceChanger = (*Knob[int64])(nil)
)

// NewKnob returns a knob holding initial, shown and parsed by codec. The
// initial value is not validated.
func NewKnob[T any](initial T, codec Codec[T]) *Knob[T] {
	k := &Knob[T]{codec: codec}
	k.cur.Store(&initial)
	return k
}

// Get returns the current value.
func (k *Knob[T]) Get() T { return *k.cur.Load() }

// Set changes the value from Go code, validated exactly as a write through
// the mount is: the codec's Check (bounds, choices, length) and then every
// Validate function; a rejected value leaves the knob unchanged and the
// error is returned. On success the OnChange functions and the bridge's
// notifications run before Set returns; a value whose text is the one the
// knob shows already notifies no bridge (no inotify event), though the
// OnChange functions still run.
func (k *Knob[T]) Set(v T) error { return k.store(context.Background(), v, false) }

// Validate adds a check that every new value must pass, after the codec's
// own; an error rejects the change (a write then fails with the error's
// errno, EIO for an error that carries none). It returns k, so it can
// follow the constructor.
func (k *Knob[T]) Validate(check func(T) error) *Knob[T] {
	k.change.Lock()
	k.validate = append(k.validate, check)
	k.change.Unlock()
	return k
}

// OnChange adds a function called after each change with the value before
// and after it, from the goroutine that made the change (a Set caller, or
// the bridge serving a write), before Set or the write returns. Writing the
// same value again is a change too, as a store() of the same value is. It
// returns k.
//
// The bridge's notifications (Changer) run before Set returns. A write
// through the mount notifies only the other paths that publish the knob
// (the kernel raises the events of the file written), on their own
// goroutine: the kernel may hold the written pages locked until the write
// is answered, and an invalidation of them from inside the write would
// wait for itself.
func (k *Knob[T]) OnChange(fn func(old, new T)) *Knob[T] {
	k.change.Lock()
	k.onChange = append(k.onChange, fn)
	k.change.Unlock()
	return k
}

// store validates and stores v, then tells the observers and the bridge.
// fromWrite is set when a write through the mount made the change, whose
// context ctx is.
func (k *Knob[T]) store(ctx context.Context, v T, fromWrite bool) error {
	if err := k.codec.Check(v); err != nil {
		return err
	}
	k.change.Lock()
	for _, check := range k.validate {
		if err := check(v); err != nil {
			k.change.Unlock()
			return err
		}
	}
	old := k.cur.Swap(&v)
	for _, fn := range k.onChange {
		fn(*old, v)
	}
	k.change.Unlock()
	// Outside every lock: a notify may make the kernel call back into
	// this knob's Read.
	switch {
	case fromWrite:
		k.notifyWrite(ctx)
	case !bytes.Equal(k.codec.Format(*old), k.codec.Format(v)):
		// A Set that leaves the text as it was changed nothing a reader
		// sees: no event (see Changer).
		k.notify()
	}
	return nil
}

// Open snapshots the value's text for readers of this descriptor.
func (k *Knob[T]) Open(ctx context.Context, f *OpenFile) error {
	f.Private = newSnapshot(k.codec.Format(k.Get()))
	return nil
}

// Read serves the text taken at open; a read from offset 0 after an
// earlier read shows the current value, as a sysfs attribute does.
func (k *Knob[T]) Read(ctx context.Context, f *OpenFile, dst []byte, off int64) (int, error) {
	return readSnapshot(ctx, f, dst, off, func(context.Context) ([]byte, error) { return k.codec.Format(k.Get()), nil })
}

// SnapshotSize is the length of the text taken at open.
func (k *Knob[T]) SnapshotSize(f *OpenFile) int64 { return snapshotSize(f) }

// Write parses src as a new value and stores it.
func (k *Knob[T]) Write(ctx context.Context, f *OpenFile, src []byte, off int64) (int, error) {
	if len(src) > maxStore {
		return 0, syscall.E2BIG
	}
	v, err := k.codec.Parse(src)
	if err != nil {
		return 0, err
	}
	if err := k.store(ctx, v, true); err != nil {
		return 0, err
	}
	return len(src), nil
}

// String returns the value's text as a read shows it, without its
// trailing newline.
func (k *Knob[T]) String() string {
	return string(trimNewline(k.codec.Format(k.Get())))
}

// intCodec is the codec of NewInt: kstrtoll spellings (see ParseInt),
// shown in decimal with a newline, within [Min, Max].
type intCodec struct{ Min, Max int64 }

// Parse accepts what ParseInt accepts.
func (intCodec) Parse(b []byte) (int64, error) { return ParseInt(b) }

// Check rejects a number outside [Min, Max] with EINVAL, as a driver's
// store() that checks its range does.
func (c intCodec) Check(v int64) error {
	if v < c.Min || v > c.Max {
		return syscall.EINVAL
	}
	return nil
}

// Format shows v in decimal, as sysfs_emit(buf, "%lld\n", v).
func (intCodec) Format(v int64) []byte { return append(strconv.AppendInt(nil, v, 10), '\n') }

// NewInt returns an integer knob holding initial that accepts values in
// [min, max], spelled as the kernel's kstrtoll(s, 0, ...) accepts them
// (decimal, 0x hex, 0 octal, an optional sign and trailing newline; see
// ParseInt) and shown in decimal with a newline. A number outside the
// bounds is EINVAL; one that does not fit in 64 bits is ERANGE, as the
// kernel reports. It panics if initial is outside [min, max].
func NewInt(initial, min, max int64) *Knob[int64] {
	if initial < min || initial > max {
		panic(fmt.Sprintf("handler.NewInt: initial value %d outside [%d, %d]", initial, min, max))
	}
	return NewKnob(initial, Codec[int64](intCodec{min, max}))
}

// boolCodec is the codec of NewBool: kstrtobool spellings (see ParseBool),
// shown as "1\n" or "0\n", the convention of sysfs device attributes
// (sysfs_emit(buf, "%d\n", v)); module parameters show Y/N instead.
type boolCodec struct{}

// Parse accepts what ParseBool accepts.
func (boolCodec) Parse(b []byte) (bool, error) { return ParseBool(b) }

// Check accepts both values.
func (boolCodec) Check(bool) error { return nil }

// Format shows "1\n" for true and "0\n" for false.
func (boolCodec) Format(v bool) []byte {
	if v {
		return []byte("1\n")
	}
	return []byte("0\n")
}

// NewBool returns a boolean knob holding initial. Writes accept what the
// kernel's kstrtobool accepts (1/0, y/n, t/f, on/off in any case, with or
// without a trailing newline; only the first one or two characters count,
// see ParseBool); reads show "1\n" or "0\n", as sysfs device attributes do.
func NewBool(initial bool) *Knob[bool] { return NewKnob(initial, Codec[bool](boolCodec{})) }

// enumCodec is the codec of NewEnum.
type enumCodec struct {
	// Choices are the accepted words, in the order reads list them.
	Choices []string
}

// Parse accepts exactly one of the choices, optionally followed by one
// newline, as the kernel's sysfs_match_string (sysfs_streq) does: case
// matters, and surrounding spaces or brackets are not accepted. Anything
// else is EINVAL.
func (c enumCodec) Parse(b []byte) (string, error) {
	w := string(trimNewline(cString(b)))
	return w, c.Check(w)
}

// Check rejects a word that is not one of the choices with EINVAL.
func (c enumCodec) Check(v string) error {
	for _, ch := range c.Choices {
		if v == ch {
			return nil
		}
	}
	return syscall.EINVAL
}

// Format lists every choice, separated by spaces, with the current one in
// brackets, as /sys/block/*/queue/scheduler and
// /sys/kernel/mm/transparent_hugepage/enabled show theirs: "a [b] c\n".
func (c enumCodec) Format(v string) []byte {
	var b bytes.Buffer
	for i, ch := range c.Choices {
		if i > 0 {
			b.WriteByte(' ')
		}
		if ch == v {
			b.WriteString("[" + ch + "]")
		} else {
			b.WriteString(ch)
		}
	}
	b.WriteByte('\n')
	return b.Bytes()
}

// NewEnum returns a knob holding one word of choices, initially initial.
// A write must be exactly one of the words (with or without a trailing
// newline, case-sensitive); a read lists all of them with the current one
// in brackets, "none [mq-deadline] kyber\n", as the kernel's multiple-choice
// attributes do. It panics if initial is not among the choices, or a
// choice is empty or holds a space, a bracket, a newline or a NUL.
func NewEnum(initial string, choices ...string) *Knob[string] {
	found := false
	for _, ch := range choices {
		if ch == "" || strings.ContainsAny(ch, " []\n\x00") {
			panic(fmt.Sprintf("handler.NewEnum: choice %q is empty or holds a space, bracket, newline or NUL", ch))
		}
		found = found || ch == initial
	}
	if !found {
		panic(fmt.Sprintf("handler.NewEnum: initial value %q is not one of %q", initial, choices))
	}
	return NewKnob(initial, Codec[string](enumCodec{Choices: append([]string(nil), choices...)}))
}

// stringCodec is the codec of NewString.
type stringCodec struct {
	// MaxLen is the longest value in bytes; 0 means 4096, what one sysfs
	// write can carry.
	MaxLen int
}

// Parse takes the written bytes without one trailing newline, as string
// attributes such as /sys/class/net/*/ifalias store them. A value longer
// than MaxLen, or holding a newline or a NUL (a read could not show it
// back as it was written), is EINVAL.
func (c stringCodec) Parse(b []byte) (string, error) {
	s := string(trimNewline(b))
	return s, c.Check(s)
}

// Check rejects a value longer than MaxLen or holding a newline or a NUL
// with EINVAL.
func (c stringCodec) Check(v string) error {
	limit := c.MaxLen
	if limit <= 0 {
		limit = maxStore
	}
	if len(v) > limit || strings.ContainsAny(v, "\n\x00") {
		return syscall.EINVAL
	}
	return nil
}

// Format shows the value followed by a newline.
func (stringCodec) Format(v string) []byte { return append([]byte(v), '\n') }

// NewString returns a string knob holding initial, at most maxLen bytes
// long (0: 4096, what one sysfs write can carry). A write stores
// its bytes without one trailing newline; a read shows the value with a
// newline. It panics if initial itself is not a valid value.
func NewString(initial string, maxLen int) *Knob[string] {
	c := stringCodec{MaxLen: maxLen}
	if c.Check(initial) != nil {
		panic(fmt.Sprintf("handler.NewString: initial value %q is longer than %d bytes or holds a newline or NUL", initial, maxLen))
	}
	return NewKnob(initial, Codec[string](c))
}

// notifiers is the Changer half of a handler: the notify functions that
// bridges registered, called after each change.
type notifiers struct {
	mu   sync.Mutex
	next int
	fns  map[int]registered
}

// registered is one notify function and the src it was registered with
// (nil for Changed).
type registered struct {
	src any
	fn  func()
}

// Changed registers notify, called after every change; stop unregisters
// it. It implements Changer.
func (n *notifiers) Changed(notify func()) (stop func()) { return n.ChangedFrom(nil, notify) }

// ChangedFrom registers notify for the file src (SourceChanger): it is
// called after every change but those made by a write whose context
// carries src.
func (n *notifiers) ChangedFrom(src any, notify func()) (stop func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fns == nil {
		n.fns = map[int]registered{}
	}
	id := n.next
	n.next++
	n.fns[id] = registered{src, notify}
	return func() {
		n.mu.Lock()
		delete(n.fns, id)
		n.mu.Unlock()
	}
}

// notifyWrite tells the bridges of a change made by a write through the
// mount whose context is ctx: every notify function but the written
// file's, whose events the kernel raises itself. They run on their own
// goroutine (see Knob.OnChange).
func (n *notifiers) notifyWrite(ctx context.Context) {
	fns := n.except(WriteSource(ctx))
	if len(fns) > 0 {
		go func() {
			for _, fn := range fns {
				fn()
			}
		}()
	}
}

// notify calls every registered function, outside n.mu so that one may
// register or stop others.
func (n *notifiers) notify() {
	for _, fn := range n.except(nil) {
		fn()
	}
}

// except returns the registered functions but those of src (none when src
// is nil).
func (n *notifiers) except(src any) []func() {
	n.mu.Lock()
	defer n.mu.Unlock()
	fns := make([]func(), 0, len(n.fns))
	for _, r := range n.fns {
		if src == nil || r.src != src {
			fns = append(fns, r.fn)
		}
	}
	return fns
}
