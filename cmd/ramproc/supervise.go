package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// 'ramproc supervise' is the minimal keeper of descriptors for users
// without systemd (and for the tests): it speaks the part of systemd's
// protocol a restartable server uses (sd_notify(3) FDSTORE=1, FDNAME=,
// FDSTOREREMOVE=1, MAINPID=, READY=1, STOPPING=1; sd_listen_fds(3) on the
// next start), so the server has one code path for both
// (fusebridge/crash.go).

const superviseSynopsis = `usage: ramproc supervise PROGRAM [ARGS...]
       e.g. ramproc supervise ramproc mount /mnt/ram

Runs PROGRAM as the keeper of its descriptors: a server started under it
gives it the FUSE connection and the RAM file's store once it serves, and
when the server dies of a signal (SIGKILL, a crash) or of a Go panic, it is
started again with them, so the mount, every open descriptor and the file's
bytes survive. Under systemd the unit's FileDescriptorStoreMax= does the
same. SIGINT, SIGTERM and SIGHUP are passed to the server; when the server
exits by itself, so does supervise, with its status.`

// listenExecCmd is the hidden command the keeper starts a server through:
// it sets LISTEN_PID to its own pid, which the exec keeps, and execs the
// server. os/exec cannot set a variable to the child's pid itself.
const listenExecCmd = "__listen-exec"

func runListenExec(args []string) int {
	if len(args) == 0 {
		return exitUsage
	}
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	err := syscall.Exec(args[0], args, os.Environ())
	fmt.Fprintf(os.Stderr, "ramproc supervise: cannot run %s: %v\n", args[0], err)
	return 1
}

// keeper holds what the server gave it.
type keeper struct {
	sock int

	mu       sync.Mutex
	files    map[string]*os.File
	names    []string // in the order given
	main     int
	ready    bool // main has said that it serves
	stopping bool
	// served lists the processes that said they serve (READY=1, or the
	// crash record), by the pid the kernel gives with each datagram. A
	// server started by a restart says so on its own, and its
	// predecessor names it MAINPID= meanwhile: the two datagrams come
	// from two processes, in either order.
	served map[int]bool
	synced chan struct{}
}

func runSupervise(args []string) int {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		fmt.Fprintln(os.Stderr, superviseSynopsis)
		if len(args) == 0 {
			return exitUsage
		}
		return 0
	}
	prog, err := exec.LookPath(args[0])
	if err != nil {
		return usageError("supervise", fmt.Sprintf("cannot run %q: %v; give the server's command, e.g. ramproc supervise ramproc mount /mnt/ram", args[0], err))
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ramproc supervise: cannot find its own program: %v\n", err)
		return 1
	}
	// A server restarted by 'ramproc restart' is the old one's child: with
	// this, it becomes the keeper's once the old one exits.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "ramproc supervise: prctl(PR_SET_CHILD_SUBREAPER): %v\n", err)
		return 1
	}
	k, addr, err := newKeeper()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ramproc supervise: the notification socket: %v\n", err)
		return 1
	}
	go k.receive()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		for sig := range sigs {
			k.mu.Lock()
			pid := k.main
			k.mu.Unlock()
			if pid > 0 { // never 0: that would signal the whole group
				syscall.Kill(pid, sig.(syscall.Signal))
			}
		}
	}()

	start := func() error {
		k.mu.Lock()
		defer k.mu.Unlock()
		env := []string{"NOTIFY_SOCKET=" + addr, "FDSTORE=64"}
		for _, v := range os.Environ() {
			name, _, _ := strings.Cut(v, "=")
			switch name {
			case "NOTIFY_SOCKET", "FDSTORE", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES":
			default:
				env = append(env, v)
			}
		}
		cmd := exec.Command(prog, args[1:]...)
		var extra []*os.File
		if len(k.names) > 0 {
			cmd = exec.Command(self, append([]string{listenExecCmd, prog}, args[1:]...)...)
			for _, n := range k.names {
				extra = append(extra, k.files[n])
			}
			env = append(env, "LISTEN_FDS="+strconv.Itoa(len(extra)), "LISTEN_FDNAMES="+strings.Join(k.names, ":"))
		}
		cmd.Env = env
		cmd.ExtraFiles = extra
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		k.main, k.ready, k.stopping = cmd.Process.Pid, false, false
		k.served = map[int]bool{}
		return nil
	}
	if err := start(); err != nil {
		fmt.Fprintf(os.Stderr, "ramproc supervise: cannot start %s: %v\n", prog, err)
		return 1
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "ramproc supervise: wait: %v\n", err)
			return 1
		}
		// Everything the server said before it exited (MAINPID= above
		// all) is taken into account first.
		k.sync()
		k.mu.Lock()
		main, ready, stopping, held := k.main, k.ready, k.stopping, len(k.names)
		k.mu.Unlock()
		if pid != main {
			continue // a server that handed over, or an orphan
		}
		crashed := ws.Signaled() || ws.Exited() && ws.ExitStatus() == 2 // a Go panic exits with 2
		if !crashed || stopping || held == 0 || !ready {
			if ws.Signaled() && !stopping {
				fmt.Fprintf(os.Stderr, "ramproc supervise: the server (pid %d) died (%s) before it served; not starting it again\n", pid, describeWait(ws))
			}
			k.dropAll()
			if ws.Signaled() {
				return 128 + int(ws.Signal())
			}
			return ws.ExitStatus()
		}
		fmt.Fprintf(os.Stderr, "ramproc supervise: the server (pid %d) died (%s); starting it again with the %d descriptors it left\n", pid, describeWait(ws), held)
		if err := start(); err != nil {
			fmt.Fprintf(os.Stderr, "ramproc supervise: cannot start %s again: %v\n", prog, err)
			k.dropAll()
			return 1
		}
	}
}

func describeWait(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return "exit status " + strconv.Itoa(ws.ExitStatus())
}

// newKeeper binds the notification socket, an abstract one named after
// this process.
func newKeeper() (*keeper, string, error) {
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, "", err
	}
	addr := fmt.Sprintf("@ramproc-supervise-%d", os.Getpid())
	if err := unix.Bind(sock, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(sock)
		return nil, "", err
	}
	// The sender's credentials come with each datagram: only root and
	// this user are heard.
	if err := unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		unix.Close(sock)
		return nil, "", err
	}
	return &keeper{sock: sock, files: map[string]*os.File{}, served: map[int]bool{}, synced: make(chan struct{}, 1)}, addr, nil
}

// receive takes the server's notifications until the process exits.
func (k *keeper) receive() {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*253)+unix.CmsgSpace(unix.SizeofUcred))
	for {
		n, oobn, _, _, err := unix.Recvmsg(k.sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		var fds []int
		var cred *unix.Ucred
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if r, err := unix.ParseUnixRights(&m); err == nil {
					fds = append(fds, r...)
				} else if c, err := unix.ParseUnixCredentials(&m); err == nil {
					cred = c
				}
			}
		}
		if cred == nil || (cred.Uid != 0 && int(cred.Uid) != os.Geteuid()) {
			for _, fd := range fds {
				unix.Close(fd)
			}
			continue
		}
		k.handle(buf[:n], fds, int(cred.Pid))
	}
}

// handle applies one notification, sent by process pid.
func (k *keeper) handle(msg []byte, fds []int, pid int) {
	vars := map[string]string{}
	for _, line := range bytes.Split(msg, []byte("\n")) {
		if name, val, ok := strings.Cut(string(line), "="); ok {
			vars[name] = val
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	name := vars["FDNAME"]
	if name == "" {
		name = "stored"
	}
	if vars["FDSTOREREMOVE"] == "1" {
		k.drop(name)
	}
	if vars["FDSTORE"] == "1" && len(fds) > 0 && !k.stopping {
		k.drop(name)
		k.files[name] = os.NewFile(uintptr(fds[0]), name)
		k.names = append(k.names, name)
		fds = fds[1:]
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	// A server on the library that does not speak READY= itself is
	// serving once it has given its crash record (fusebridge/crash.go).
	if vars["READY"] == "1" || vars["FDSTORE"] == "1" && name == "fusebridge-record" {
		k.served[pid] = true
		k.ready = k.ready || pid == k.main
	}
	if v, err := strconv.Atoi(vars["MAINPID"]); err == nil && v > 0 {
		// Ready if the new main one has said so already: a restarted
		// server's READY=1 often arrives before its predecessor's
		// MAINPID=, and would otherwise be forgotten, so that a crash
		// of it ended the keeper instead of starting it again.
		k.main, k.ready = v, k.served[v]
		k.served = map[int]bool{v: k.served[v]}
	}
	if vars["STOPPING"] == "1" {
		k.stopping = true
		k.dropAllLocked()
	}
	if vars["KEEPER_SYNC"] == "1" {
		k.synced <- struct{}{}
	}
}

func (k *keeper) drop(name string) {
	if f, ok := k.files[name]; ok {
		f.Close()
		delete(k.files, name)
		for i, n := range k.names {
			if n == name {
				k.names = append(k.names[:i], k.names[i+1:]...)
				break
			}
		}
	}
}

func (k *keeper) dropAllLocked() {
	for _, f := range k.files {
		f.Close()
	}
	k.files, k.names = map[string]*os.File{}, nil
}

func (k *keeper) dropAll() {
	k.mu.Lock()
	k.dropAllLocked()
	k.mu.Unlock()
}

// sync returns once every notification queued before it has been handled:
// datagrams on one socket are received in the order they arrived.
func (k *keeper) sync() {
	sa, err := unix.Getsockname(k.sock)
	if err != nil {
		return
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(s)
	if unix.Sendto(s, []byte("KEEPER_SYNC=1"), 0, sa) == nil {
		<-k.synced
	}
}
