package fusebridge

import (
	"testing"
)

// TestModifyKill: setattr_should_drop_suidgid, case by case: setuid goes for
// every caller without CAP_FSETID, setgid when the file is group-executable
// or the caller is neither in its group (fsgid or supplementary) nor
// capable.
func TestModifyKill(t *testing.T) {
	nobody := creds{fsgid: 65534}
	member := creds{fsgid: 65534, groups: []uint32{65534, 100}}
	root := creds{fsetid: true}
	for _, tc := range []struct {
		c    creds
		mode uint32
		gid  uint32
		want uint32
	}{
		{nobody, 0o6666, 0, 0o0666},
		{nobody, 0o2666, 0, 0o0666},
		{nobody, 0o2676, 0, 0o0676},
		{nobody, 0o4666, 0, 0o0666},
		{nobody, 0o6666, 65534, 0o2666}, // its own group
		{nobody, 0o6676, 65534, 0o0676}, // group-executable
		{member, 0o6666, 100, 0o2666},   // a supplementary group
		{member, 0o6666, 7, 0o0666},
		{root, 0o6777, 7, 0o6777},
		{nobody, 0o1777, 0, 0o1777}, // the sticky bit stays
	} {
		if got := tc.c.modifyKill(tc.mode, tc.gid); got != tc.want {
			t.Errorf("%+v modifies %#o (gid %d): %#o, want %#o", tc.c, tc.mode, tc.gid, got, tc.want)
		}
	}
	if !root.inGroupOrCapable(12345) || nobody.inGroupOrCapable(0) {
		t.Error("inGroupOrCapable: root must be capable, nobody not in group 0")
	}
}
