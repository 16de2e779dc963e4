package cgroupfs

import (
	"bufio"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
)

// holder is a process in a cgroup that opens a file, prints its inode
// number, waits for the test, then reads the descriptor it holds to the end
// and prints the inode number of the path again.
type holder struct {
	t     *testing.T
	stdin io.WriteCloser
	lines chan string
	done  chan error
}

const holdScript = `exec 3< "$1" || exit 1
stat -c %i "$1"
read _
cat <&3 2>&1
echo "read exit $?"
stat -c %i "$1" 2>&1`

func hold(t *testing.T, groups []*livecg.Group, path string) *holder {
	t.Helper()
	return piped(t, livecg.Command(t, groups, "sh", "-c", holdScript, "sh", path))
}

// piped starts cmd with its stdin and stdout piped to a holder: the test
// writes to stdin, and reads its output by line (line, finish).
func piped(t *testing.T, cmd *exec.Cmd) *holder {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{t: t, stdin: stdin, lines: make(chan string, 100), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
		h.done <- cmd.Wait()
	}()
	return h
}

// line returns the holder's next line of output (bounded: 10 s).
func (h *holder) line() string {
	h.t.Helper()
	select {
	case l, ok := <-h.lines:
		if !ok {
			h.t.Fatal("the holder exited early")
		}
		return l
	case <-time.After(10 * time.Second):
		h.t.Fatal("no output from the holder in 10 s")
	}
	return ""
}

// finish lets the holder read its descriptor and returns the rest of its
// output (bounded: 10 s; the process is killed at the test's end anyway).
func (h *holder) finish() string {
	h.t.Helper()
	h.stdin.Close()
	var out strings.Builder
	deadline := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-h.lines:
			if !ok {
				<-h.done
				return out.String()
			}
			out.WriteString(l + "\n")
		case <-deadline:
			h.t.Fatalf("the holder did not finish in 10 s: %q", out.String())
		}
	}
}

// TestPidsOfConcurrentContainers: a reader in cgroup a holds
// pids/<pid>/status of a process of a open while a reader in cgroup b,
// which may not see that pid, lists pids and looks the pid up: a's
// descriptor keeps reading and the inode number stays. Once the process
// exits, the next lookup retires its directory: a descriptor still open on
// it gets EIO.
func TestPidsOfConcurrentContainers(t *testing.T) {
	mnt := serve(t)
	proc := filepath.Join(mnt, "pids")
	a := livecg.New(t, livecg.Memory, livecg.Name())
	b := livecg.New(t, livecg.Memory, livecg.Name())
	sleeper := livecg.Start(t, []*livecg.Group{a}, "sleep", "60")
	pid := strconv.Itoa(sleeper.Process.Pid)
	status := filepath.Join(proc, pid, "status")

	h := hold(t, []*livecg.Group{a}, status)
	ino := h.line()
	for range 3 {
		other := newReader(t, []*livecg.Group{b}, "sh", "-c", `ls "$1"; stat -c %i "$2" 2>&1; echo "exit $?"`, "sh", proc, status)
		race(t, other)
		out := other.out.String()
		if contains(strings.Fields(out), pid) || !strings.Contains(out, "No such file") || !strings.HasSuffix(out, "exit 1\n") {
			t.Fatalf("b lists and stats a's pid %s: %q; want it absent and ENOENT", pid, out)
		}
	}
	out := h.finish()
	if !strings.Contains(out, "\nPid:\t"+pid+"\n") || !strings.Contains(out, "read exit 0\n") {
		t.Errorf("a's descriptor on %s after b's lookups: %q; want the sleeper's status", status, out)
	}
	if !strings.HasSuffix(out, "\n"+ino+"\n") {
		t.Errorf("the inode number of %s was %s, then: %q", status, ino, out)
	}

	// The process exits: b's next lookup retires the directory for all.
	h = hold(t, []*livecg.Group{a}, status)
	if got := h.line(); got != ino {
		t.Errorf("inode number of %s %s, was %s", status, got, ino)
	}
	sleeper.Process.Kill()
	sleeper.Wait()
	other := newReader(t, []*livecg.Group{b}, "sh", "-c", `stat -c %i "$1" 2>&1; echo "exit $?"`, "sh", status)
	race(t, other)
	if out := other.out.String(); !strings.Contains(out, "No such file") {
		t.Errorf("stat of an exited process's status: %q, want ENOENT", out)
	}
	out = h.finish()
	if !strings.Contains(out, "Input/output error") || strings.Contains(out, "read exit 0") || !strings.Contains(out, "No such file") {
		t.Errorf("a's descriptor on an exited process's status: %q; want EIO, then ENOENT for the path", out)
	}
}
