package handler_test

import (
	"context"
	"fmt"
	"syscall"

	"github.com/ramproc/ramproc/handler"
)

// echo writes s to h as `echo -n s > knob` does: one write(2).
func echo(h handler.Writer, s string) error {
	f := &handler.OpenFile{Flags: syscall.O_WRONLY | syscall.O_TRUNC}
	_, err := h.Write(context.Background(), f, []byte(s), 0)
	return err
}

// cat reads h as `cat knob` does.
func cat(h interface {
	handler.Opener
	handler.Reader
}) string {
	f := &handler.OpenFile{Flags: syscall.O_RDONLY}
	h.Open(context.Background(), f)
	buf := make([]byte, 4096)
	n, _ := h.Read(context.Background(), f, buf, 0)
	return string(buf[:n])
}

// An integer knob with bounds, as a sysfs attribute parsed with
// kstrtoint: hex and octal spellings too, a bad or out-of-range value
// is EINVAL and changes nothing.
func ExampleNewInt() {
	swappiness := handler.NewInt(60, 0, 200)
	fmt.Println(echo(swappiness, "0x20\n"), swappiness.Get())
	fmt.Println(echo(swappiness, "201\n"), swappiness.Get())
	fmt.Println(echo(swappiness, "lots\n"), swappiness.Get())
	fmt.Println(swappiness.Set(10), swappiness.Get())
	fmt.Printf("%q\n", cat(swappiness))
	// Output:
	// <nil> 32
	// invalid argument 32
	// invalid argument 32
	// <nil> 10
	// "10\n"
}

// A boolean knob accepts what kstrtobool accepts and shows 1 or 0.
func ExampleNewBool() {
	enabled := handler.NewBool(false)
	for _, s := range []string{"on\n", "N", "Yes", "2"} {
		err := echo(enabled, s)
		fmt.Printf("%q: %v %v\n", s, enabled.Get(), err)
	}
	fmt.Printf("%q\n", cat(enabled))
	// Output:
	// "on\n": true <nil>
	// "N": false <nil>
	// "Yes": true <nil>
	// "2": true invalid argument
	// "1\n"
}

// An enum knob shows its choices with the current one in brackets, as
// /sys/block/*/queue/scheduler does, and accepts exactly one word.
func ExampleNewEnum() {
	sched := handler.NewEnum("none", "none", "mq-deadline", "kyber")
	fmt.Print(cat(sched))
	fmt.Println(echo(sched, "kyber\n"))
	fmt.Println(echo(sched, "bfq\n"))
	fmt.Print(cat(sched))
	// Output:
	// [none] mq-deadline kyber
	// <nil>
	// invalid argument
	// none mq-deadline [kyber]
}

// A string knob stores what was written without the newline echo adds.
func ExampleNewString() {
	alias := handler.NewString("", 16)
	fmt.Println(echo(alias, "uplink to core\n"), alias.Get())
	fmt.Println(echo(alias, "a name far too long\n"), alias.Get())
	fmt.Printf("%q\n", cat(alias))
	// Output:
	// <nil> uplink to core
	// invalid argument uplink to core
	// "uplink to core\n"
}

// Go code observes every change, whether made by Set or by a write
// through the mount, and can veto values with its own check.
func ExampleKnob_OnChange() {
	workers := handler.NewInt(4, 1, 64).
		Validate(func(v int64) error {
			if v&(v-1) != 0 {
				return fmt.Errorf("%d is not a power of two: %w", v, syscall.EINVAL)
			}
			return nil
		}).
		OnChange(func(old, new int64) { fmt.Println("workers:", old, "->", new) })
	echo(workers, "8\n")
	fmt.Println(echo(workers, "12\n"))
	workers.Set(16)
	// Output:
	// workers: 4 -> 8
	// 12 is not a power of two: invalid argument
	// workers: 8 -> 16
}
