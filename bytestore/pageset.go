package bytestore

import "sort"

// pageSet is a set of page indices kept as sorted, disjoint, non-adjacent
// half-open runs [lo, hi). The capacity emulation records in it the pages
// that fallocate allocated, which the kernel offers no way to list; runs keep
// it as small as the number of distinct fallocate ranges.
type pageSet struct {
	runs []pageRun
}

type pageRun struct{ lo, hi int64 }

// search returns the index of the first run that ends after p.
func (s *pageSet) search(p int64) int {
	return sort.Search(len(s.runs), func(i int) bool { return s.runs[i].hi > p })
}

// add inserts the pages [lo, hi), merging with the runs it touches.
func (s *pageSet) add(lo, hi int64) {
	if lo >= hi {
		return
	}
	// First run that ends at or after lo (it may be merged: adjacent).
	i := sort.Search(len(s.runs), func(i int) bool { return s.runs[i].hi >= lo })
	j := i
	for j < len(s.runs) && s.runs[j].lo <= hi {
		lo = min(lo, s.runs[j].lo)
		hi = max(hi, s.runs[j].hi)
		j++
	}
	s.runs = append(s.runs[:i], append([]pageRun{{lo, hi}}, s.runs[j:]...)...)
}

// remove deletes the pages [lo, hi), splitting a run that straddles it.
func (s *pageSet) remove(lo, hi int64) {
	if lo >= hi {
		return
	}
	i := s.search(lo)
	var keep []pageRun
	j := i
	for j < len(s.runs) && s.runs[j].lo < hi {
		r := s.runs[j]
		if r.lo < lo {
			keep = append(keep, pageRun{r.lo, lo})
		}
		if r.hi > hi {
			keep = append(keep, pageRun{hi, r.hi})
		}
		j++
	}
	s.runs = append(s.runs[:i], append(keep, s.runs[j:]...)...)
}

// next returns the first run that has pages at or after p, clipped to start
// no earlier than p.
func (s *pageSet) next(p int64) (lo, hi int64, ok bool) {
	i := s.search(p)
	if i == len(s.runs) {
		return 0, 0, false
	}
	return max(s.runs[i].lo, p), s.runs[i].hi, true
}
