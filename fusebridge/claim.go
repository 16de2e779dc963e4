package fusebridge

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrMountpointBusy is wrapped by Mount's error when another process
// serves the mountpoint, or something else is mounted there.
var ErrMountpointBusy = errors.New("mountpoint busy")

// A claim is an exclusive flock(2) on the directory underneath a mount,
// taken before the check that nothing is mounted there and held by the
// server for its lifetime. Two servers started on one directory at the
// same moment both pass a check-then-mount; with the claim only the one
// that holds it mounts. flock, not fcntl, because a directory cannot be
// opened for writing, which a POSIX write lock needs; /proc/locks still
// names the holder's pid, which is how the loser says who serves it.
type claim struct {
	fd      int
	created []string // directories Mount made, deepest first
}

// claimMountpoint locks mnt, which holds no live mount of another server
// (or the lock fails and names the holder).
func claimMountpoint(mnt string, created []string) (*claim, error) {
	fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cannot open the mountpoint %s: %w", mnt, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			if pid := claimHolder(mnt); pid > 0 {
				return nil, fmt.Errorf("%s is being mounted or served by process %d; stop it first (kill %d) or choose another directory: %w", mnt, pid, pid, ErrMountpointBusy)
			}
			return nil, fmt.Errorf("%s is being mounted or served by another process; stop it or choose another directory: %w", mnt, ErrMountpointBusy)
		}
		return nil, fmt.Errorf("cannot lock the mountpoint %s: %w", mnt, err)
	}
	return &claim{fd: fd, created: created}, nil
}

// release gives the claim up; with removeDirs it also removes the
// directories Mount created, for a mount that failed. Nil-safe.
func (c *claim) release(removeDirs bool) {
	if c == nil || c.fd < 0 {
		return
	}
	unix.Close(c.fd)
	c.fd = -1
	if removeDirs {
		c.removeCreated()
	}
}

// removeCreated removes the directories Mount created, once the mount is
// gone again.
func (c *claim) removeCreated() {
	if c == nil {
		return
	}
	removeDirs(c.created)
	c.created = nil
}

// claimHolder returns the pid holding the claim on mnt, 0 if none is
// known. Once mnt is mounted its path leads to the mount's root, not to
// the locked directory under it; the parent's directory entry still
// carries the underlying inode number, so that is what is looked up in
// /proc/locks.
func claimHolder(mnt string) int {
	parent, base := filepath.Dir(mnt), filepath.Base(mnt)
	var pst unix.Stat_t
	if err := unix.Stat(parent, &pst); err != nil {
		return 0
	}
	ino, ok := direntIno(parent, base)
	if !ok {
		return 0
	}
	// /proc/locks: "1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF"
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(pst.Dev), unix.Minor(pst.Dev), ino)
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 6 || fl[1] != "FLOCK" || fl[5] != want {
			continue // "->" lines are waiters
		}
		if pid, err := strconv.Atoi(fl[4]); err == nil {
			return pid
		}
	}
	return 0
}

// direntIno reads the inode number of dir's entry name from the directory
// itself (getdents), which does not cross into a mount on it.
func direntIno(dir, name string) (uint64, bool) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer unix.Close(fd)
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil || n <= 0 {
			return 0, false
		}
		// struct linux_dirent64 { u64 ino; s64 off; u16 reclen; u8 type; char name[]; }
		for off := 0; off+19 <= n; {
			rec := buf[off:]
			reclen := int(rec[16]) | int(rec[17])<<8
			if reclen == 0 || off+reclen > n {
				break
			}
			nm := rec[19:reclen]
			if i := strings.IndexByte(string(nm), 0); i >= 0 {
				nm = nm[:i]
			}
			if string(nm) == name {
				var ino uint64
				for i := 7; i >= 0; i-- {
					ino = ino<<8 | uint64(rec[i])
				}
				return ino, true
			}
			off += reclen
		}
	}
}

// mkdirAll creates dir and its missing parents, returning those it created
// itself, deepest first: a directory another process made at the same
// moment is not ours to remove.
func mkdirAll(dir string) ([]string, error) {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil || d == filepath.Dir(d) {
			break
		}
		missing = append(missing, d)
	}
	var created []string
	for i := len(missing) - 1; i >= 0; i-- {
		err := os.Mkdir(missing[i], 0o755)
		if err == nil {
			created = append([]string{missing[i]}, created...)
		} else if !errors.Is(err, os.ErrExist) {
			removeDirs(created)
			return nil, err
		}
	}
	return created, nil
}

// removeDirs removes the given empty directories, deepest first.
func removeDirs(dirs []string) {
	for _, d := range dirs {
		os.Remove(d)
	}
}

// roOption is the mount option for Options.ReadOnly.
func roOption(ro bool) []string {
	if ro {
		return []string{"ro"}
	}
	return nil
}
