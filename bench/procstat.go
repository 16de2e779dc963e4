package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat.
// Linux fixes it at 100 on every architecture it exports to user space.
const clockTicks = 100

// processCPU returns the CPU time (user + system, all threads, in seconds)
// that process pid has used so far, from /proc/PID/stat.
func processCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces;
	// the fields after the last ')' start with field 3 (state).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')' in %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: only %d fields after the name", pid, len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseUint(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime %q %q", pid, f[11], f[12])
	}
	return float64(utime+stime) / clockTicks, nil
}

// procKB reads one "Key: N kB" line of a /proc file such as /proc/meminfo
// or /proc/PID/status and returns N*1024.
func procKB(path, key string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, key+":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			break
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %s: %v", path, key, err)
		}
		if len(fields) > 1 && fields[1] == "kB" {
			n *= 1024
		}
		return n, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no %s line", path, key)
}

// shmemBytes is the system's Shmem: every tmpfs, shmem and memfd page in
// RAM, whoever owns it.
func shmemBytes() (int64, error) { return procKB("/proc/meminfo", "Shmem") }

// anonRSS is a process's private anonymous resident memory (its heap),
// which excludes the shmem pages it maps: those are counted by
// shmemBytes already.
func anonRSS(pid int) (int64, error) {
	return procKB(fmt.Sprintf("/proc/%d/status", pid), "RssAnon")
}

// fileCache returns the bytes of page cache that the file open on fd holds
// in its own mapping (cachestat(2)), and whether the file is on tmpfs (a
// tmpfs or memfd file, whose page cache is its only copy: Shmem).
func fileCache(fd int) (bytes int64, shmem bool, err error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return 0, false, err
	}
	var cs unix.Cachestat_t
	rng := unix.CachestatRange{Off: 0, Len: 0} // Len 0: to the end of the file
	if err := unix.Cachestat(uint(fd), &rng, &cs, 0); err != nil {
		return 0, false, fmt.Errorf("cachestat: %w", err)
	}
	return int64(cs.Cache) * int64(os.Getpagesize()), st.Type == unix.TMPFS_MAGIC, nil
}

// serverShmemFiles returns the bytes in RAM of the distinct tmpfs and memfd
// files that process pid holds open: where a FUSE server such as ramproc
// keeps its data. Only regular files on tmpfs are opened (through
// /proc/PID/fd), so no device, FIFO or FUSE file is touched.
func serverShmemFiles(pid int) (int64, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	type key struct{ dev, ino uint64 }
	seen := map[key]bool{}
	var total int64
	for _, e := range ents {
		p := dir + "/" + e.Name()
		var sfs unix.Statfs_t
		var st unix.Stat_t
		if unix.Statfs(p, &sfs) != nil || sfs.Type != unix.TMPFS_MAGIC ||
			unix.Stat(p, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue // closed meanwhile, or not a shmem file
		}
		k := key{st.Dev, st.Ino}
		if seen[k] {
			continue
		}
		seen[k] = true
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			continue
		}
		n, _, err := fileCache(fd)
		unix.Close(fd)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p, err)
		}
		total += n
	}
	return total, nil
}
