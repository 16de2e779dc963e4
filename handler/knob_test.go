package handler_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/handler"
)

// The spellings the kernel's kstrtoll(s, 0, ...) accepts and rejects
// (lib/kstrtox.c, Linux 6.x), and the errno it gives for each.
var intSpellings = []struct {
	in   string
	want int64
	err  error
}{
	{"0", 0, nil},
	{"42", 42, nil},
	{"42\n", 42, nil},
	{"+42", 42, nil},
	{"-42", -42, nil},
	{"-42\n", -42, nil},
	{"-0", 0, nil},
	{"0x1f", 31, nil},
	{"0X1F", 31, nil},
	{"-0x10", -16, nil},
	{"+0x10", 16, nil},
	{"010", 8, nil},
	{"00", 0, nil},
	{"0\n", 0, nil},
	{"9223372036854775807", math.MaxInt64, nil},
	{"-9223372036854775808", math.MinInt64, nil},
	{"0x7fffffffffffffff", math.MaxInt64, nil},
	{"42\x00junk", 42, nil}, // the C string ends at the NUL
	{"9223372036854775808", 0, syscall.ERANGE},
	{"-9223372036854775809", 0, syscall.ERANGE},
	{"18446744073709551615", 0, syscall.ERANGE},
	{"18446744073709551616", 0, syscall.ERANGE},
	{"99999999999999999999x", 0, syscall.ERANGE}, // overflow is reported before the junk
	{"", 0, syscall.EINVAL},
	{"\n", 0, syscall.EINVAL},
	{"-", 0, syscall.EINVAL},
	{"+", 0, syscall.EINVAL},
	{"+-1", 0, syscall.EINVAL},
	{"-+1", 0, syscall.EINVAL},
	{"--1", 0, syscall.EINVAL},
	{" 1", 0, syscall.EINVAL},
	{"1 ", 0, syscall.EINVAL},
	{"1\n\n", 0, syscall.EINVAL},
	{"1\r\n", 0, syscall.EINVAL},
	{"\n1", 0, syscall.EINVAL},
	{"1_000", 0, syscall.EINVAL},
	{"1e3", 0, syscall.EINVAL},
	{"1.5", 0, syscall.EINVAL},
	{"08", 0, syscall.EINVAL}, // octal has no 8
	{"0x", 0, syscall.EINVAL}, // "0" in octal, then junk
	{"0xg", 0, syscall.EINVAL},
	{"0b101", 0, syscall.EINVAL}, // the kernel knows no 0b
	{"0o7", 0, syscall.EINVAL},
	{"abc", 0, syscall.EINVAL},
	{"x10", 0, syscall.EINVAL},
	{"\x00", 0, syscall.EINVAL},
}

func TestParseInt(t *testing.T) {
	for _, c := range intSpellings {
		got, err := handler.ParseInt([]byte(c.in))
		if (err == nil) != (c.err == nil) || (c.err != nil && !errors.Is(err, c.err)) || (err == nil && got != c.want) {
			t.Errorf("ParseInt(%q) = %d, %v; want %d, %v", c.in, got, err, c.want, c.err)
		}
	}
}

// Every spelling of kstrtobool (lib/kstrtox.c): only the first character
// counts, and the second one after an 'o'.
var boolSpellings = []struct {
	in   string
	want bool
	ok   bool
}{
	{"1", true, true}, {"1\n", true, true}, {"0", false, true}, {"0\n", false, true},
	{"y", true, true}, {"Y", true, true}, {"yes\n", true, true}, {"n", false, true},
	{"N", false, true}, {"no", false, true}, {"t", true, true}, {"T", true, true},
	{"true\n", true, true}, {"f", false, true}, {"F", false, true}, {"false", false, true},
	{"on", true, true}, {"ON\n", true, true}, {"oN", true, true}, {"On", true, true},
	{"off", false, true}, {"OFF\n", false, true}, {"of", false, true}, {"oF", false, true},
	{"1234", true, true}, {"0x", false, true}, {"yak", true, true}, {"nope", false, true},
	{"on\x00", true, true},
	{"", false, false}, {"\n", false, false}, {" 1", false, false}, {"2", false, false},
	{"-1", false, false}, {"o", false, false}, {"o\n", false, false}, {"ox", false, false},
	{"enable", false, false}, {"\x001", false, false}, {"\t1", false, false},
}

func TestParseBool(t *testing.T) {
	for _, c := range boolSpellings {
		got, err := handler.ParseBool([]byte(c.in))
		if c.ok && (err != nil || got != c.want) {
			t.Errorf("ParseBool(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
		if !c.ok && !errors.Is(err, syscall.EINVAL) {
			t.Errorf("ParseBool(%q) = %v, %v; want EINVAL", c.in, got, err)
		}
	}
}

// write is what the bridge does for one write(2) through the mount.
func write(h handler.Writer, s string) error {
	f := &handler.OpenFile{Flags: syscall.O_WRONLY | syscall.O_TRUNC}
	n, err := h.Write(context.Background(), f, []byte(s), 0)
	if err == nil && n != len(s) {
		return fmt.Errorf("write of %d bytes returned %d", len(s), n)
	}
	return err
}

// read is what the bridge does for open(2) and reads to the end.
func read(h interface {
	handler.Opener
	handler.Reader
}) string {
	f := &handler.OpenFile{Flags: syscall.O_RDONLY}
	h.Open(context.Background(), f)
	var out []byte
	buf := make([]byte, 3)
	for off := int64(0); ; {
		n, _ := h.Read(context.Background(), f, buf, off)
		if n == 0 {
			return string(out)
		}
		out = append(out, buf[:n]...)
		off += int64(n)
	}
}

func TestIntKnob(t *testing.T) {
	k := handler.NewInt(5, -10, 100)
	if got := read(k); got != "5\n" {
		t.Fatalf("initial read %q", got)
	}
	for _, c := range intSpellings {
		before := k.Get()
		err := write(k, c.in)
		inBounds := c.err == nil && c.want >= -10 && c.want <= 100
		switch {
		case inBounds && (err != nil || k.Get() != c.want):
			t.Errorf("write %q: %v, value %d; want %d", c.in, err, k.Get(), c.want)
		case c.err != nil && (!errors.Is(err, c.err) || k.Get() != before):
			t.Errorf("write %q: %v, value %d; want %v and the value unchanged (%d)", c.in, err, k.Get(), c.err, before)
		case c.err == nil && !inBounds && (!errors.Is(err, syscall.EINVAL) || k.Get() != before):
			t.Errorf("write %q (out of bounds): %v, value %d; want EINVAL and %d", c.in, err, k.Get(), before)
		}
	}
	for _, v := range []int64{-10, 100, 0} {
		if err := k.Set(v); err != nil || k.Get() != v || read(k) != fmt.Sprintf("%d\n", v) {
			t.Errorf("Set(%d): %v, Get %d, read %q", v, err, k.Get(), read(k))
		}
	}
	for _, v := range []int64{-11, 101, math.MaxInt64} {
		if err := k.Set(v); !errors.Is(err, syscall.EINVAL) || k.Get() != 0 {
			t.Errorf("Set(%d) out of bounds: %v, Get %d; want EINVAL, 0", v, err, k.Get())
		}
	}
	if err := write(k, "7"+strings.Repeat("\x00", 4096)); !errors.Is(err, syscall.E2BIG) || k.Get() != 0 {
		t.Errorf("a 4097-byte write: %v, value %d; want E2BIG, unchanged", err, k.Get())
	}
}

func TestBoolKnob(t *testing.T) {
	k := handler.NewBool(false)
	for _, c := range boolSpellings {
		k.Set(!c.want)
		before := k.Get()
		err := write(k, c.in)
		if c.ok && (err != nil || k.Get() != c.want) {
			t.Errorf("write %q: %v, value %v; want %v", c.in, err, k.Get(), c.want)
		}
		if !c.ok && (!errors.Is(err, syscall.EINVAL) || k.Get() != before) {
			t.Errorf("write %q: %v, value %v; want EINVAL and unchanged", c.in, err, k.Get())
		}
	}
	k.Set(true)
	if got := read(k); got != "1\n" {
		t.Errorf("read of true: %q, want \"1\\n\"", got)
	}
	k.Set(false)
	if got := read(k); got != "0\n" {
		t.Errorf("read of false: %q, want \"0\\n\"", got)
	}
}

func TestEnumKnob(t *testing.T) {
	k := handler.NewEnum("mq-deadline", "none", "mq-deadline", "kyber")
	if got := read(k); got != "none [mq-deadline] kyber\n" {
		t.Errorf("read %q", got)
	}
	for _, in := range []string{"none", "kyber\n", "mq-deadline", "none\n"} {
		if err := write(k, in); err != nil || k.Get() != strings.TrimSuffix(in, "\n") {
			t.Errorf("write %q: %v, value %q", in, err, k.Get())
		}
	}
	for _, in := range []string{"", "\n", "None", "KYBER", " none", "none ", "[none]", "none\n\n", "no", "nonee", "none kyber", "bfq", "none\r\n"} {
		if err := write(k, in); !errors.Is(err, syscall.EINVAL) || k.Get() != "none" {
			t.Errorf("write %q: %v, value %q; want EINVAL and \"none\"", in, err, k.Get())
		}
	}
	if got := read(k); got != "[none] mq-deadline kyber\n" {
		t.Errorf("read %q", got)
	}
	if err := k.Set("bfq"); !errors.Is(err, syscall.EINVAL) || k.Get() != "none" {
		t.Errorf("Set(bfq): %v, value %q", err, k.Get())
	}
	if err := k.Set("kyber"); err != nil || read(k) != "none mq-deadline [kyber]\n" {
		t.Errorf("Set(kyber): %v, read %q", err, read(k))
	}
}

func TestStringKnob(t *testing.T) {
	k := handler.NewString("eth0", 8)
	if got := read(k); got != "eth0\n" {
		t.Errorf("read %q", got)
	}
	for in, want := range map[string]string{"uplink": "uplink", "uplink\n": "uplink", "": "", "\n": "", "12345678": "12345678", "1234567\n": "1234567", "a b": "a b"} {
		if err := write(k, in); err != nil || k.Get() != want {
			t.Errorf("write %q: %v, value %q; want %q", in, err, k.Get(), want)
		}
	}
	k.Set("keep")
	for _, in := range []string{"123456789", "12345678\n\n", "a\nb", "a\x00b", "\n\n"} {
		if err := write(k, in); !errors.Is(err, syscall.EINVAL) || k.Get() != "keep" {
			t.Errorf("write %q: %v, value %q; want EINVAL and \"keep\"", in, err, k.Get())
		}
	}
	if err := k.Set("123456789"); !errors.Is(err, syscall.EINVAL) || k.Get() != "keep" {
		t.Errorf("Set of 9 bytes: %v, value %q", err, k.Get())
	}
	unlimited := handler.NewString("", 0)
	if err := write(unlimited, strings.Repeat("x", 4096)); err != nil || len(unlimited.Get()) != 4096 {
		t.Errorf("a 4096-byte write to an unlimited string: %v, len %d", err, len(unlimited.Get()))
	}
}

func TestKnobConstructorsPanic(t *testing.T) {
	for name, fn := range map[string]func(){
		"int out of bounds":   func() { handler.NewInt(11, 0, 10) },
		"enum not a choice":   func() { handler.NewEnum("x", "a", "b") },
		"enum choice w/space": func() { handler.NewEnum("a", "a", "b c") },
		"string too long":     func() { handler.NewString("abc", 2) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			fn()
		}()
	}
}

// Validate and OnChange see every change, from Set and from writes, in
// order; a rejected change reaches neither OnChange nor the notifiers.
func TestKnobObservers(t *testing.T) {
	var log []string
	k := handler.NewInt(1, 0, 100).
		Validate(func(v int64) error {
			if v%2 != 0 && v != 1 {
				return fmt.Errorf("odd: %w", syscall.EINVAL)
			}
			return nil
		}).
		OnChange(func(old, new int64) { log = append(log, fmt.Sprintf("%d->%d", old, new)) })
	var notified atomic.Int64
	stop := k.Changed(func() { notified.Add(1) })
	if err := k.Set(2); err != nil {
		t.Fatal(err)
	}
	// Set notifies before it returns.
	if n := notified.Load(); n != 1 {
		t.Errorf("%d notifications right after Set, want 1", n)
	}
	if err := write(k, "4\n"); err != nil {
		t.Fatal(err)
	}
	if err := write(k, "5\n"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("write 5 that Validate rejects: %v", err)
	}
	if err := k.Set(7); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("Set(7) that Validate rejects: %v", err)
	}
	if err := write(k, "999"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("write 999 out of bounds: %v", err)
	}
	// A write notifies from its own goroutine.
	waitCount(t, &notified, 2)
	if got := strings.Join(log, " "); got != "1->2 2->4" || k.Get() != 4 {
		t.Errorf("OnChange log %q, value %d; want \"1->2 2->4\", 4", got, k.Get())
	}
	stop()
	k.Set(6)
	write(k, "8")
	time.Sleep(20 * time.Millisecond)
	if n := notified.Load(); n != 2 {
		t.Errorf("notified after stop: %d", n)
	}
}

func TestValueIsChanger(t *testing.T) {
	v := handler.NewValue("a\n")
	var c handler.Changer = v
	var n atomic.Int64
	stop := c.Changed(func() { n.Add(1) })
	defer stop()
	write(v, "b\n")
	v.Set = func(context.Context, []byte) error { return syscall.EINVAL }
	write(v, "c\n")
	waitCount(t, &n, 1)
	time.Sleep(20 * time.Millisecond)
	if n.Load() != 1 || string(v.Get()) != "b\n" {
		t.Errorf("%d notifications, value %q; want 1 (the rejected write is none), \"b\\n\"", n.Load(), v.Get())
	}
}

// waitCount waits up to 5 seconds for c to reach want.
func waitCount(t *testing.T, c *atomic.Int64, want int64) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); c.Load() < want && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
	if got := c.Load(); got != want {
		t.Errorf("%d notifications, want %d", got, want)
	}
}

// Set, writes and reads race; every read sees one whole value that some
// change stored, OnChange sees a chain (each old is the previous new), and
// notifications count the changes.
func TestKnobConcurrency(t *testing.T) {
	k := handler.NewInt(0, 0, 1<<40)
	var mu sync.Mutex
	last, broken := int64(0), 0
	k.OnChange(func(old, new int64) {
		mu.Lock()
		if old != last {
			broken++
		}
		last = new
		mu.Unlock()
	})
	var notes sync.WaitGroup
	var notified atomic.Int64
	k.Changed(func() { notified.Add(1) })
	const writers, each = 4, 300
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				// +1: never the initial 0, whose Set would change
				// nothing and so notify no one.
				v := int64(w*1000000 + i + 1)
				var err error
				if i%2 == 0 {
					err = k.Set(v)
				} else {
					err = write(k, fmt.Sprintf("%#x\n", v))
				}
				if err != nil {
					t.Error(err)
					return
				}
				// A rejected one in between must change nothing.
				if err := write(k, "-1\n"); !errors.Is(err, syscall.EINVAL) {
					t.Error(err)
				}
			}
		}()
	}
	stopReaders := make(chan struct{})
	for r := 0; r < 2; r++ {
		notes.Add(1)
		go func() {
			defer notes.Done()
			for {
				select {
				case <-stopReaders:
					return
				default:
				}
				s := read(k)
				v, err := handler.ParseInt([]byte(s))
				if err != nil || v < 0 || v%1000000 > each {
					t.Errorf("a reader saw %q", s)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stopReaders)
	notes.Wait()
	waitCount(t, &notified, writers*each)
	if broken != 0 || last != k.Get() {
		t.Errorf("OnChange chain broken %d times, last %d vs Get %d", broken, last, k.Get())
	}
}
