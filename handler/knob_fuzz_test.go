package handler_test

import (
	"bytes"
	"errors"
	"strconv"
	"syscall"
	"testing"

	"github.com/ramproc/ramproc/handler"
)

// refParseInt is kstrtoll(s, 0, ...) written the obvious way on top of
// strconv, independent of ParseInt's single pass: cut at NUL, sign, radix
// prefix, the longest run of digits, then at most one newline.
func refParseInt(b []byte) (int64, error) {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	s := string(b)
	neg := false
	if s != "" && s[0] == '-' {
		neg, s = true, s[1:]
	} else if s != "" && s[0] == '+' {
		s = s[1:]
	}
	base := 10
	if len(s) > 0 && s[0] == '0' {
		base = 8
		if len(s) > 2 && (s[1] == 'x' || s[1] == 'X') && strconv.IsPrint(rune(s[2])) {
			if _, err := strconv.ParseUint(s[2:3], 16, 8); err == nil {
				base, s = 16, s[2:]
			}
		}
	}
	n := 0
	for n < len(s) {
		if _, err := strconv.ParseUint(s[n:n+1], base, 8); err != nil {
			break
		}
		n++
	}
	if n == 0 {
		return 0, syscall.EINVAL
	}
	u, err := strconv.ParseUint(s[:n], base, 64)
	if err != nil {
		return 0, syscall.ERANGE
	}
	if rest := s[n:]; rest != "" && rest != "\n" {
		return 0, syscall.EINVAL
	}
	if neg {
		if u > 1<<63 {
			return 0, syscall.ERANGE
		}
		return int64(-u), nil
	}
	if u > 1<<63-1 {
		return 0, syscall.ERANGE
	}
	return int64(u), nil
}

func FuzzParseInt(f *testing.F) {
	for _, c := range intSpellings {
		f.Add([]byte(c.in))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := handler.ParseInt(b)
		want, werr := refParseInt(b)
		if got != want || !errors.Is(err, werr) && !(err == nil && werr == nil) {
			t.Fatalf("ParseInt(%q) = %d, %v; the reference says %d, %v", b, got, err, want, werr)
		}
		// Through a knob: a write either stores the parsed number or fails
		// and leaves the value alone; what a read then shows parses back.
		k := handler.NewInt(3, -1000, 1000)
		werr2 := write(k, string(b))
		inBounds := err == nil && got >= -1000 && got <= 1000
		if inBounds != (werr2 == nil) || (inBounds && k.Get() != got) || (!inBounds && k.Get() != 3) {
			t.Fatalf("write %q: %v, value %d", b, werr2, k.Get())
		}
		if v, err := handler.ParseInt([]byte(read(k))); err != nil || v != k.Get() {
			t.Fatalf("read-back of %d: %d, %v", k.Get(), v, err)
		}
	})
}

func FuzzParseBool(f *testing.F) {
	for _, c := range boolSpellings {
		f.Add([]byte(c.in))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := handler.ParseBool(b)
		// Only the first two bytes of the C string may matter.
		c := b
		if i := bytes.IndexByte(c, 0); i >= 0 {
			c = c[:i]
		}
		if len(c) > 2 {
			g2, e2 := handler.ParseBool(c[:2])
			if g2 != got || (e2 == nil) != (err == nil) {
				t.Fatalf("ParseBool(%q) = %v, %v but its first two bytes give %v, %v", b, got, err, g2, e2)
			}
		}
		k := handler.NewBool(!got)
		if werr := write(k, string(b)); (werr == nil) != (err == nil) || (err == nil && k.Get() != got) || (err != nil && k.Get() == got) {
			t.Fatalf("write %q: %v, value %v", b, werr, k.Get())
		}
		if v, err := handler.ParseBool([]byte(read(k))); err != nil || v != k.Get() {
			t.Fatalf("read-back of %v: %v, %v", k.Get(), v, err)
		}
	})
}

// Enum and string knobs: whatever is written, the value is a valid one,
// and a read shows it so that it could be written back.
func FuzzEnumStringKnobs(f *testing.F) {
	for _, s := range []string{"a", "b\n", "[a]", " c", "a\x00", "ab", "", "\n", "x\ny"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e := handler.NewEnum("a", "a", "b", "c")
		err := write(e, string(b))
		c := b // the word ends at a NUL, as the kernel's C string does
		if i := bytes.IndexByte(c, 0); i >= 0 {
			c = c[:i]
		}
		if w := string(bytes.TrimSuffix(c, []byte("\n"))); (err == nil) != (w == "a" || w == "b" || w == "c") {
			t.Fatalf("enum write %q: %v", b, err)
		}
		if v := e.Get(); v != "a" && v != "b" && v != "c" {
			t.Fatalf("enum value %q after writing %q", v, b)
		}
		s := handler.NewString("init", 16)
		err = write(s, string(b))
		if err == nil {
			if got := read(s); got != s.Get()+"\n" || write(s, got) != nil || s.Get()+"\n" != got {
				t.Fatalf("string: wrote %q, read %q, value %q", b, got, s.Get())
			}
		} else if s.Get() != "init" {
			t.Fatalf("string: rejected write %q changed the value to %q", b, s.Get())
		}
	})
}
