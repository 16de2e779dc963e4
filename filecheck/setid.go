package filecheck

// permissions/setid-clearing: setuid and setgid bits, and the permission
// checks, as another user sees them.
//
// The kernel clears S_ISUID and S_ISGID when a file is written, truncated or
// fallocated by a caller without CAP_FSETID (setgid only when the file is
// group-executable or the caller is not in its group), so that a privileged
// program cannot be modified by someone else and keep its privilege. The
// check needs a caller that is not root: it runs as root, and its child
// process drops to the user nobody before it touches the files. The child
// cannot be given paths (the directories on the way, a test's temporary
// directory for one, need not be searchable by nobody), so it gets an O_PATH
// descriptor of each file and opens /proc/self/fd/N, which checks the
// permissions of the file alone.

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// childAsEnv, set to "uid:gid", makes a worker drop to that user (with no
// supplementary groups) before it serves any request.
const childAsEnv = "FILECHECK_CHILD_AS"

// dropTo switches every thread of this process to uid:gid for good.
func dropTo(as string) error {
	u, g, ok := strings.Cut(as, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if !ok || err1 != nil || err2 != nil {
		return fmt.Errorf("bad user %q", as)
	}
	if err := syscall.Setgroups(nil); err != nil {
		return err
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return err
	}
	return syscall.Setresuid(uid, uid, uid)
}

// The actions of a userop request.
const (
	uopOpen = iota
	uopWrite
	uopTruncate
	uopFallocate
	uopTouch
)

// userOp opens /proc/self/fd/<Proc> with Flags and does one action on it.
func userOp(req request) response {
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", req.Proc), req.Flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return response{N: -1, Errno: errnoOf(err), Msg: "open"}
	}
	defer unix.Close(fd)
	switch req.Count {
	case uopWrite:
		n, err := unix.Pwrite(fd, req.Data, req.Off)
		if err != nil {
			return response{N: -1, Errno: errnoOf(err), Msg: "pwrite"}
		}
		return response{N: int64(n)}
	case uopTruncate:
		if err := unix.Ftruncate(fd, req.Size); err != nil {
			return response{N: -1, Errno: errnoOf(err), Msg: "ftruncate"}
		}
	case uopFallocate:
		if err := unix.Fallocate(fd, 0, req.Off, req.Len); err != nil {
			return response{N: -1, Errno: errnoOf(err), Msg: "fallocate"}
		}
	case uopTouch:
		// futimens(fd, NULL): both times to now, which a writer may do.
		now := []unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_NOW}}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), now, 0); err != nil {
			return response{N: -1, Errno: errnoOf(err), Msg: "utimensat"}
		}
	}
	return response{}
}

// otherUser is the unprivileged user the check acts as: nobody.
func otherUser() (uid, gid int) {
	uid, gid = 65534, 65534
	if u, err := user.Lookup("nobody"); err == nil {
		if v, err := strconv.Atoi(u.Uid); err == nil {
			uid = v
		}
		if v, err := strconv.Atoi(u.Gid); err == nil {
			gid = v
		}
	}
	return uid, gid
}

func skipNotRoot(r *runner) string {
	if os.Geteuid() != 0 {
		return "needs root: the check runs its steps as the user nobody (run ramproc check as root)"
	}
	return ""
}

// setidCase is one step of the check: the file gets mode and owner, then
// the user nobody (or root, asRoot) opens it with flags and does action.
type setidCase struct {
	what     string
	mode     uint32
	ownerIsU bool // the file belongs to nobody instead of root
	asRoot   bool
	flags    int
	action   int
	chown    bool // instead of the action: root chowns the file to root
}

var setidCases = []setidCase{
	{what: "write", mode: 0o6666, flags: unix.O_WRONLY, action: uopWrite},
	{what: "write", mode: 0o2666, flags: unix.O_WRONLY, action: uopWrite},
	{what: "write", mode: 0o2676, flags: unix.O_WRONLY, action: uopWrite},
	{what: "write", mode: 0o6777, flags: unix.O_WRONLY, action: uopWrite},
	{what: "open(O_TRUNC)", mode: 0o6777, flags: unix.O_WRONLY | unix.O_TRUNC, action: uopOpen},
	{what: "open(O_TRUNC)", mode: 0o2666, flags: unix.O_WRONLY | unix.O_TRUNC, action: uopOpen},
	{what: "ftruncate", mode: 0o6666, flags: unix.O_WRONLY, action: uopTruncate},
	{what: "ftruncate", mode: 0o2666, flags: unix.O_WRONLY, action: uopTruncate},
	{what: "fallocate", mode: 0o6666, flags: unix.O_WRONLY, action: uopFallocate},
	{what: "fallocate", mode: 0o2666, flags: unix.O_WRONLY, action: uopFallocate},
	{what: "read", mode: 0o6666, flags: unix.O_RDONLY, action: uopOpen},
	{what: "utimensat(now)", mode: 0o2666, flags: unix.O_WRONLY, action: uopTouch},
	{what: "utimensat(now)", mode: 0o6666, flags: unix.O_WRONLY, action: uopTouch},
	{what: "write by the owner", mode: 0o6666, ownerIsU: true, flags: unix.O_WRONLY, action: uopWrite},
	{what: "write by the owner", mode: 0o6676, ownerIsU: true, flags: unix.O_WRONLY, action: uopWrite},
	{what: "write by root", mode: 0o6777, asRoot: true, flags: unix.O_WRONLY, action: uopWrite},
	{what: "open(O_TRUNC) by root", mode: 0o6777, asRoot: true, flags: unix.O_WRONLY | unix.O_TRUNC, action: uopOpen},
	{what: "chown by root", mode: 0o6666, chown: true},
	{what: "chown by root", mode: 0o6755, chown: true},
	{what: "open(O_WRONLY) of 0644", mode: 0o644, flags: unix.O_WRONLY, action: uopOpen},
	{what: "open(O_RDONLY) of 0640", mode: 0o640, flags: unix.O_RDONLY, action: uopOpen},
	{what: "open(O_RDONLY) of 0604", mode: 0o604, flags: unix.O_RDONLY, action: uopOpen},
	{what: "open(O_RDWR) of 0606", mode: 0o606, flags: unix.O_RDWR, action: uopOpen},
}

func permSetid(p *pair) {
	uid, gid := otherUser()
	var paths [2]*os.File
	for i, s := range p.s {
		fd, err := unix.Open(s.path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			p.failf("open(%s, O_PATH): %v", sideNames[i], err)
		}
		paths[i] = os.NewFile(uintptr(fd), s.path)
		defer paths[i].Close()
	}
	var orig unix.Stat_t
	if err := unix.Fstat(p.s[fileSide].vfd, &orig); err != nil {
		p.failf("fstat: %v", err)
	}
	if err := unix.Fchown(p.s[fileSide].vfd, 0, 0); err != nil {
		p.skipf("root cannot chown the file (%v): its server cannot give it another owner, and the cases need a root-owned file", err)
	}
	// Whatever happens, the file gets its owner back (the mode is
	// restored by the next check's start and at the end of Run).
	defer unix.Fchown(p.s[fileSide].vfd, int(orig.Uid), int(orig.Gid))
	var ws [2]*worker
	for i, as := range []string{fmt.Sprintf("%d:%d", uid, gid), ""} {
		var env []string
		if as != "" {
			env = []string{childAsEnv + "=" + as}
		}
		w, err := startWorkerWith(p.r.cfg.CommandTimeout, env, paths[:])
		if err != nil {
			p.failf("%v", err)
		}
		defer w.close()
		ws[i] = w
	}
	h := p.open(unix.O_RDWR, 0)
	for _, c := range setidCases {
		owner, group := 0, 0
		who, w := "nobody", ws[0]
		if c.ownerIsU {
			owner, group = uid, gid
		}
		if c.asRoot {
			who, w = "root", ws[1]
		}
		p.do(fmt.Sprintf("fchown(%s, %d, %d)", h, owner, group), func(s *side) outcome {
			return nOut(0, unix.Fchown(s.fd(h), owner, group))
		})
		p.ftruncate(h, 10)
		p.fchmod(h, c.mode)
		desc := fmt.Sprintf("%s (mode %#o, owner %d:%d)", c.what, c.mode, owner, group)
		if c.chown {
			p.do(fmt.Sprintf("%s: fchown(%s, 0, 0)", desc, h), func(s *side) outcome {
				return nOut(0, unix.Fchown(s.fd(h), 0, 0))
			})
		} else {
			desc += fmt.Sprintf(" as %s: open(%s)", who, flagString(c.flags))
			switch c.action {
			case uopWrite:
				desc += ", pwrite(\"xy\", 4)"
			case uopTruncate:
				desc += ", ftruncate(3)"
			case uopFallocate:
				desc += ", fallocate(0, 0, 8192)"
			case uopTouch:
				desc += ", futimens(NULL)"
			}
			p.do(desc, func(s *side) outcome {
				resp, err := w.call(request{Op: "userop", Proc: 3 + s.idx, Flags: c.flags, Count: c.action,
					Data: []byte("xy"), Off: 4, Size: 3, Len: 8192}, p.r.cfg.CommandTimeout)
				return p.childOut(resp, err, false)
			})
		}
		p.do(fmt.Sprintf("fstat(%s) [size,mode] after %s", h, desc), func(s *side) outcome {
			var st unix.Stat_t
			if err := unix.Fstat(s.fd(h), &st); err != nil {
				return errOut(err)
			}
			return outcome{hideN: true, info: statInfo(&st, stSize|stMode)}
		})
	}
}
