package handler_test

import (
	"fmt"
	"syscall"
	"time"

	"github.com/ramproc/ramproc/handler"
)

// durationCodec is a Codec of one's own: a knob that holds a time.Duration,
// written as Go spells durations ("250ms", "1m30s") and shown the same way.
type durationCodec struct{ min, max time.Duration }

func (durationCodec) Parse(b []byte) (time.Duration, error) {
	if n := len(b); n > 0 && b[n-1] == '\n' { // one trailing newline, as echo adds
		b = b[:n-1]
	}
	d, err := time.ParseDuration(string(b))
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration: %w", b, syscall.EINVAL)
	}
	return d, nil
}

func (c durationCodec) Check(d time.Duration) error {
	if d < c.min || d > c.max {
		return fmt.Errorf("%v is outside %v..%v: %w", d, c.min, c.max, syscall.EINVAL)
	}
	return nil
}

func (durationCodec) Format(d time.Duration) []byte { return fmt.Appendf(nil, "%v\n", d) }

// A knob of any type, from a Codec: Parse reads a write, Check rejects what
// is not allowed (on writes and on Set alike), Format is what a read shows.
func ExampleNewKnob() {
	interval := handler.NewKnob(time.Second, durationCodec{min: time.Millisecond, max: time.Minute})
	fmt.Printf("%q\n", cat(interval))
	fmt.Println(echo(interval, "250ms\n"), interval.Get())
	fmt.Println(echo(interval, "soon\n"), interval.Get())
	fmt.Println(echo(interval, "2h\n"), interval.Get())
	fmt.Println(interval.Set(90*time.Second), interval.Get()) // Go code is checked too
	fmt.Printf("%q\n", cat(interval))
	// Output:
	// "1s\n"
	// <nil> 250ms
	// "soon" is not a duration: invalid argument 250ms
	// 2h0m0s is outside 1ms..1m0s: invalid argument 250ms
	// 1m30s is outside 1ms..1m0s: invalid argument 250ms
	// "250ms\n"
}
