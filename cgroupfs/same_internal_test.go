package cgroupfs

import (
	"bytes"
	"testing"
)

// TestSameContent: equal content made for two cgroups is kept once (the
// second call returns the first's bytes), different content is returned
// as made, and what is kept has no spare room.
func TestSameContent(t *testing.T) {
	var s sameContent
	a := append(make([]byte, 0, 4096), "processor\t: 0\n"...)
	first := s.of(a)
	if string(first) != "processor\t: 0\n" || cap(first) > 2*len(first) {
		t.Fatalf("first: %q, cap %d", first, cap(first))
	}
	second := s.of([]byte("processor\t: 0\n"))
	if &second[0] != &first[0] {
		t.Error("equal content is not shared")
	}
	other := s.of([]byte("processor\t: 1\n"))
	if string(other) != "processor\t: 1\n" {
		t.Errorf("other content: %q", other)
	}
	if again := s.of([]byte("processor\t: 0\n")); &again[0] == &first[0] || !bytes.Equal(again, first) {
		t.Errorf("content after another's: %q, shared %v", again, &again[0] == &first[0])
	}
	if empty := s.of(nil); len(empty) != 0 {
		t.Errorf("empty content: %q", empty)
	}
}
