package fusebridge

// Clearing setuid and setgid ("killpriv") as tmpfs does.
//
// The kernel clears S_ISUID and S_ISGID when a file is modified by a caller
// without CAP_FSETID (fs/attr.c: setattr_should_drop_suidgid): setuid always,
// setgid when the file is group-executable or the caller is neither in the
// file's group nor capable (setattr_should_drop_sgid, in_group_or_capable).
// For a FUSE file it sends the change to the server as a SETATTR before the
// write, truncate or fallocate, also with passthrough, where the write itself
// never reaches the server. Measured on Linux 6.18 with -debug, a caller
// without CAP_FSETID gets:
//
//   - write, truncate, fallocate of 06666 root:root by nobody: SETATTR
//     {mode 02666} (with the size, for truncate): fuse_setattr recomputes
//     the mode without the connection's handle_killpriv and keeps setgid
//     unless the file is group-executable, losing the VFS's decision that
//     the caller is not in the group;
//   - the same on 02666: SETATTR {} (no attribute at all: the only change was
//     the setgid bit that fuse_setattr dropped again);
//   - open(O_TRUNC) with atomic_o_trunc: nothing but the OPEN, because
//     fuse_do_setattr skips the request for an ATTR_OPEN truncate that the
//     OPEN already did (the GETATTR that follows refreshes the kernel's mode);
//   - chown by root: SETATTR {mode without S_ISUID, uid, gid}, which is
//     already what tmpfs does (root is in every group as far as setgid is
//     concerned).
//
// So the bridge completes the kernel's decision in SETATTR and OPEN with the
// caller's credentials (its fsgid from the request; its supplementary groups
// and capabilities from /proc/PID/status), which works in every mode without
// FUSE_HANDLE_KILLPRIV_V2. KILLPRIV_V2 is not negotiated: with it
// fuse_setattr drops the kill bits and leaves the clearing to the server's
// WRITE, which a passthrough write never sends.
//
// Handler files opened with FOPEN_DIRECT_IO (generated content) get no
// SETATTR before a write: the kernel's direct-I/O write path clears nothing,
// which is also what kernfs (sysfs, cgroupfs) does for a write, while
// open(O_TRUNC) clears the bits on both (measured on a cgroup file).

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ramproc/ramproc/handler"
)

// capFsetid is CAP_FSETID's bit in the CapEff mask of /proc/PID/status.
const capFsetid = 4

// creds are what the setgid rules need to know of a caller.
type creds struct {
	fsgid  uint32
	groups []uint32
	fsetid bool // CAP_FSETID in the server's user namespace
}

// credsOf reads the caller's credentials. A caller whose status cannot be
// read (pid 0, gone, another pid namespace) is treated as unprivileged and
// in no supplementary group: the bits are then cleared, which is the safe
// side.
func credsOf(ctx context.Context) creds {
	c, ok := handler.CallerOf(ctx)
	if !ok {
		// A call from Go code, not from a syscall: nobody to check.
		return creds{fsetid: true}
	}
	cr := creds{fsgid: c.Gid}
	if c.Tid == 0 {
		return cr
	}
	// The thread's own status: credentials are per thread.
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.Tid))
	if err != nil {
		return cr
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		switch string(k) {
		case "Groups":
			for _, f := range bytes.Fields(v) {
				if g, err := strconv.ParseUint(string(f), 10, 32); err == nil {
					cr.groups = append(cr.groups, uint32(g))
				}
			}
		case "CapEff":
			if m, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64); err == nil {
				cr.fsetid = m&(1<<capFsetid) != 0
			}
		}
	}
	// A capability counts only in the server's user namespace (capable()
	// checks the initial one, where a root server runs).
	if cr.fsetid {
		mine, err1 := os.Readlink("/proc/self/ns/user")
		theirs, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", c.Tid))
		if err1 != nil || err2 != nil || mine != theirs {
			cr.fsetid = false
		}
	}
	return cr
}

// inGroupOrCapable is the kernel's in_group_or_capable for gid.
func (c creds) inGroupOrCapable(gid uint32) bool {
	if c.fsetid || c.fsgid == gid {
		return true
	}
	for _, g := range c.groups {
		if g == gid {
			return true
		}
	}
	return false
}

// modifyKill returns mode as a modification (write, truncate, O_TRUNC,
// fallocate) by c leaves it: setattr_should_drop_suidgid.
func (c creds) modifyKill(mode, gid uint32) uint32 {
	if c.fsetid {
		return mode
	}
	mode &^= syscall.S_ISUID
	if mode&syscall.S_ISGID != 0 && (mode&syscall.S_IXGRP != 0 || !c.inGroupOrCapable(gid)) {
		mode &^= syscall.S_ISGID
	}
	return mode
}

// settableAttrs are the SETATTR fields that change something; a request
// with none of them (only a file handle or lock owner) is the kernel's
// kill of a setgid bit that fuse_setattr dropped.
const settableAttrs = fuse.FATTR_MODE | fuse.FATTR_UID | fuse.FATTR_GID | fuse.FATTR_SIZE |
	fuse.FATTR_ATIME | fuse.FATTR_MTIME | fuse.FATTR_ATIME_NOW | fuse.FATTR_MTIME_NOW | fuse.FATTR_CTIME

// killPrivSetattr completes sa with the setuid/setgid clearing that tmpfs
// would do for this SETATTR (see the file comment). It only reads /proc when
// a setgid or setuid bit is at stake.
func (e *Entry) killPrivSetattr(ctx context.Context, in *fuse.SetAttrIn, sa *handler.SetAttr) syscall.Errno {
	var cur fuse.Attr
	if errno := e.attr(ctx, &cur); errno != 0 {
		return errno
	}
	mode := cur.Mode & 0o7777
	if sa.Mode != nil {
		mode = handler.UnixMode(*sa.Mode)
	}
	if mode&(syscall.S_ISUID|syscall.S_ISGID) == 0 {
		return 0
	}
	if in.Valid&(fuse.FATTR_MODE|fuse.FATTR_UID|fuse.FATTR_GID|fuse.FATTR_SIZE) == 0 && in.Valid&settableAttrs != 0 {
		return 0 // times only: no /proc read
	}
	c := credsOf(ctx)
	newMode := mode
	switch {
	case in.Valid&settableAttrs == 0 || sa.Size != nil:
		// A write or fallocate (the empty SETATTR) or a truncate: the
		// modification rule, on top of what the kernel already cleared.
		newMode = c.modifyKill(mode, cur.Gid)
	case sa.Mode != nil || sa.Uid != nil || sa.Gid != nil:
		// chmod, the kill before a write when the kernel sent a mode,
		// and chown: setgid stays only for a caller in the file's group
		// or capable (setattr_prepare for chmod, setattr_should_drop_sgid
		// for chown, which the kernel sends without the setgid part).
		if mode&syscall.S_ISGID != 0 && !c.inGroupOrCapable(cur.Gid) {
			newMode &^= syscall.S_ISGID
		}
	default:
		// utimensat and the like change no permission bits.
	}
	if newMode != mode {
		m := handler.ModeFromUnix(newMode)
		sa.Mode = &m
	}
	return 0
}

// killPrivOpen clears the bits after an open(O_TRUNC) that the OPEN itself
// truncated (atomic_o_trunc), as do_truncate does on tmpfs. The kernel's
// cached mode is refreshed by the GETATTR that its own kill check sends
// right after the open.
func (e *Entry) killPrivOpen(ctx context.Context, of *handler.OpenFile) {
	if of.Flags&syscall.O_TRUNC == 0 || e.srv().opts.NoOpen {
		return
	}
	var cur fuse.Attr
	if e.attr(ctx, &cur) != 0 {
		return
	}
	mode := cur.Mode & 0o7777
	if mode&(syscall.S_ISUID|syscall.S_ISGID) == 0 {
		return
	}
	newMode := credsOf(ctx).modifyKill(mode, cur.Gid)
	if newMode == mode {
		return
	}
	sa := e.setattrer()
	if sa == nil {
		e.perm.Store(newMode)
		return
	}
	m := handler.ModeFromUnix(newMode)
	if err := sa.Setattr(ctx, of, &handler.SetAttr{Mode: &m}); err != nil {
		e.srv().log.Warn("clearing setuid/setgid after open(O_TRUNC) failed", "name", e.name, "err", err)
	}
}
