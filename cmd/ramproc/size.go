package main

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// parseSize reads a capacity the way tmpfs's size= option does: a byte count
// with an optional k, m, g or t suffix (powers of 1024), or a percentage of
// physical RAM, above 100% too (tmpfs sets no bound; the memory is only
// used as the file grows). 0 means no limit.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty size; give e.g. 64m, 2g, 50% or 0 for no limit")
	}
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		p, err := strconv.ParseFloat(pct, 64)
		if err != nil || p < 0 || math.IsNaN(p) || math.IsInf(p, 0) {
			return 0, fmt.Errorf("%q is not a percentage of RAM such as 50%%", s)
		}
		var si unix.Sysinfo_t
		if err := unix.Sysinfo(&si); err != nil {
			return 0, fmt.Errorf("reading the RAM size for %q: %w", s, err)
		}
		ram := float64(si.Totalram) * float64(si.Unit)
		if ram*p/100 >= math.MaxInt64 {
			return 0, fmt.Errorf("%q is larger than the largest possible file", s)
		}
		return int64(ram * p / 100), nil
	}
	mult := int64(1)
	switch s[len(s)-1] {
	case 'k', 'K':
		mult = 1 << 10
	case 'm', 'M':
		mult = 1 << 20
	case 'g', 'G':
		mult = 1 << 30
	case 't', 'T':
		mult = 1 << 40
	}
	num := s
	if mult != 1 {
		num = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size; give e.g. 64m, 2g, 50%% or 0 for no limit", s)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is larger than the largest possible file", s)
	}
	return n * mult, nil
}

// describeSize prints a capacity for people.
func describeSize(n int64) string {
	if n == 0 {
		return "unlimited"
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
