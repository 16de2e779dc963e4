package handler

import (
	"bytes"
	"syscall"
)

// ParseInt parses b as the kernel's kstrtoll(s, 0, &res) does (lib/kstrtox.c,
// the parser behind sysfs integer attributes and module parameters), so a
// knob accepts exactly the spellings that `echo ... > /sys/...` does:
//
//   - an optional sign, '+' or '-', then
//   - "0x" or "0X" followed by at least one hex digit: hexadecimal;
//     otherwise a leading "0": octal; otherwise decimal;
//   - at most one trailing "\n" (what echo adds); nothing else after the
//     digits: no spaces, no second sign, no "_" separators;
//   - the string ends at its first NUL byte, as the C string the kernel
//     parses does.
//
// A spelling it does not accept is EINVAL; a number that does not fit in an
// int64 is ERANGE, as the kernel returns for it.
func ParseInt(b []byte) (int64, error) {
	s := cString(b)
	if len(s) > 0 && s[0] == '-' {
		u, err := parseUint(s[1:])
		if err != nil {
			return 0, err
		}
		// kstrtoll: (long long)-tmp > 0 is an overflow; -0 and
		// -9223372036854775808 are fine.
		if int64(-u) > 0 {
			return 0, syscall.ERANGE
		}
		return int64(-u), nil
	}
	if len(s) > 0 && s[0] == '+' {
		s = s[1:]
	}
	u, err := parseUint(s)
	if err != nil {
		return 0, err
	}
	if int64(u) < 0 {
		return 0, syscall.ERANGE
	}
	return int64(u), nil
}

// parseUint is the kernel's _kstrtoull(s, 0, ...): radix detection, digits,
// one optional newline, end.
func parseUint(s []byte) (uint64, error) {
	base := uint64(10)
	if len(s) > 0 && s[0] == '0' {
		base = 8
		if len(s) > 2 && s[1]|0x20 == 'x' && isHex(s[2]) {
			base = 16
			s = s[2:]
		}
	}
	var res uint64
	n, overflow := 0, false
	for ; n < len(s); n++ {
		c := s[n]
		var v uint64
		switch {
		case '0' <= c && c <= '9':
			v = uint64(c - '0')
		case 'a' <= c|0x20 && c|0x20 <= 'f':
			v = uint64(c|0x20-'a') + 10
		default:
			v = 16
		}
		if v >= base {
			break
		}
		// The kernel keeps scanning after an overflow and reports ERANGE
		// before looking at what follows the digits.
		if res > (^uint64(0)-v)/base {
			overflow = true
		}
		res = res*base + v
	}
	if overflow {
		return 0, syscall.ERANGE
	}
	if n == 0 {
		return 0, syscall.EINVAL
	}
	s = s[n:]
	if len(s) > 0 && s[0] == '\n' {
		s = s[1:]
	}
	if len(s) > 0 {
		return 0, syscall.EINVAL
	}
	return res, nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c|0x20 && c|0x20 <= 'f'
}

// ParseBool parses b as the kernel's kstrtobool does (lib/kstrtox.c, used by
// sysfs boolean attributes and bool module parameters). Only the first
// character counts, and the second for "on"/"off":
//
//   - true:  '1', 'y', 'Y', 't', 'T', or 'o'/'O' followed by 'n'/'N';
//   - false: '0', 'n', 'N', 'f', 'F', or 'o'/'O' followed by 'f'/'F';
//   - anything else (an empty write, "\n", " 1", "2", "o") is EINVAL.
//
// So "yes\n", "1\n", "ON", "false" and even "1234" and "of" are accepted,
// exactly as the kernel accepts them. The string ends at its first NUL.
func ParseBool(b []byte) (bool, error) {
	s := cString(b)
	if len(s) == 0 {
		return false, syscall.EINVAL
	}
	switch s[0] {
	case 'y', 'Y', 't', 'T', '1':
		return true, nil
	case 'n', 'N', 'f', 'F', '0':
		return false, nil
	case 'o', 'O':
		if len(s) > 1 {
			switch s[1] {
			case 'n', 'N':
				return true, nil
			case 'f', 'F':
				return false, nil
			}
		}
	}
	return false, syscall.EINVAL
}

// cString cuts b at its first NUL byte: the kernel hands a store() the
// written bytes as a C string.
func cString(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// trimNewline drops one trailing "\n", as sysfs_streq and most string
// attributes do for the newline echo adds.
func trimNewline(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] == '\n' {
		return b[:len(b)-1]
	}
	return b
}
