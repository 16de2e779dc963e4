package filecheck

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"time"
)

// seed/reload: processes keep writing to the file while its server is
// stopped and started again (the seed's module unload and reload). They
// may see only clean errors, nothing may hang, and afterwards the file
// must work again. With an unload and a load command, the file must also
// be gone between the two (open fails with ENOENT, ENOTCONN or EIO).

// cleanErrnos are the errors a writer may see while the server is away:
// ENOENT once the file is gone, ENOTCONN from a FUSE mount whose server
// died, ECONNABORTED from one whose connection was aborted (through
// /sys/fs/fuse/connections), EIO, and EBUSY (the seed's module returns it
// to operations that race with its unload).
var cleanErrnos = map[string]bool{"ENOTCONN": true, "ECONNABORTED": true, "ENOENT": true, "EIO": true, "EBUSY": true}

const reloadWriters = 3

func skipReload(r *runner) string {
	if r.cfg.ReloadCmd == "" && r.cfg.UnloadCmd == "" && r.cfg.RestartCmd == "" {
		return "needs --reload-cmd, or --unload-cmd and --load-cmd, to stop and start the file's server (or --restart-cmd, to restart it without a trace)"
	}
	return ""
}

// runShell runs command with sh -c, at most timeout, and returns an error
// with the end of its output if it fails. Its output goes to a file, not a
// pipe, so that a server it starts in the background cannot hold us up.
func runShell(ctx context.Context, command string, timeout time.Duration) error {
	out, err := os.CreateTemp("", "filecheck-cmd-*")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	err = cmd.Run()
	if err == nil {
		return nil
	}
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("did not finish within %v and was killed", timeout)
	}
	text, _ := os.ReadFile(out.Name())
	return fmt.Errorf("%q: %v: %s", command, err, lastLine(string(text)))
}

// goneErrnos are what opening an unloaded file may give: ENOENT (the name
// is gone, as after remove_proc_entry or an unmount), ENOTCONN and
// ECONNABORTED (a FUSE mount whose server died or was aborted), EIO.
var goneErrnos = map[syscall.Errno]bool{syscall.ENOENT: true, syscall.ENOTCONN: true, syscall.ECONNABORTED: true, syscall.EIO: true}

// verifyUnloaded checks, after the unload command, that the file cannot be
// opened: an unload that leaves it working has not unloaded anything (an
// unload command of "true" would otherwise pass). The command may stop the
// server asynchronously, so it polls for a few seconds. It returns the
// problem, or "".
func (r *runner) verifyUnloaded() string {
	wait := min(5*time.Second, r.cfg.CommandTimeout)
	deadline := time.Now().Add(wait)
	for {
		fd, err := openTimeout(r.cfg.Path, syscall.O_RDONLY|syscall.O_CLOEXEC, min(5*time.Second, r.cfg.CommandTimeout))
		if err == nil {
			syscall.Close(fd)
		} else if e, ok := err.(syscall.Errno); ok && goneErrnos[e] {
			return ""
		} else if ok {
			return fmt.Sprintf("after the unload command, open(2) of the file failed with %s, not ENOENT, ENOTCONN or EIO as for an unloaded file", errnoName(e))
		} else {
			return fmt.Sprintf("after the unload command, open(2) of the file hung: %v", err)
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("the file stayed available through the unload: open(2) still succeeded %v after the unload command finished (the unload command did not unload it, or the load ran too early)", wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func runReload(r *runner, c *check) (res Result) {
	res.Name = c.name
	fail := func(format string, args ...any) Result {
		res.Status, res.Reason = Fail, fmt.Sprintf(format, args...)
		return res
	}
	if err := r.empty(r.cfg.Path); err != nil {
		return fail("cannot start from an empty file: %v", err)
	}
	timeout := r.cfg.CommandTimeout
	ws := make([]*worker, reloadWriters)
	for i := range ws {
		w, err := r.worker(i)
		if err != nil {
			return fail("%v", err)
		}
		ws[i] = w
	}
	rec := []byte("filecheck reload writer\n")
	maxLoop := (3*timeout + 30*time.Second).Milliseconds()
	restart := r.cfg.RestartCmd != ""
	op := "writeloop"
	if restart {
		op = "writekeep" // one descriptor each, kept across the restart
	}
	for i, w := range ws {
		if err := w.send(request{Op: op, Path: r.cfg.Path, Data: rec, Len: maxLoop}); err != nil {
			return fail("child process %d: %v", i, err)
		}
	}
	time.Sleep(300 * time.Millisecond)

	var problems []string
	if restart {
		r.progressf("%s: running the restart command", c.name)
		if err := runShell(r.ctx, r.cfg.RestartCmd, timeout); err != nil {
			problems = append(problems, "restart command "+err.Error())
		}
	} else if r.cfg.ReloadCmd != "" {
		r.progressf("%s: running the reload command", c.name)
		if err := runShell(r.ctx, r.cfg.ReloadCmd, timeout); err != nil {
			problems = append(problems, "reload command "+err.Error())
		}

	} else {
		r.progressf("%s: running the unload command", c.name)
		if err := runShell(r.ctx, r.cfg.UnloadCmd, timeout); err != nil {
			problems = append(problems, "unload command "+err.Error())
		}
		r.progressf("%s: checking that the file is gone", c.name)
		if why := r.verifyUnloaded(); why != "" {
			problems = append(problems, why)
		}
		r.progressf("%s: running the load command", c.name)
		if err := runShell(r.ctx, r.cfg.LoadCmd, timeout); err != nil {
			problems = append(problems, "load command "+err.Error())
		}
	}
	time.Sleep(300 * time.Millisecond)

	// Stop the writers; one that does not answer is stuck in a system call.
	for _, w := range ws {
		w.send(request{Op: "stop"})
	}
	total := map[string]int{}
	grace := min(10*time.Second, timeout)
	stopBy := time.Now().Add(grace)
	hung := 0
	for _, w := range ws {
		resp, err := w.recv(max(time.Until(stopBy), 100*time.Millisecond))
		if err != nil {
			hung++
			continue
		}
		for k, v := range resp.Counts {
			total[k] += v
		}
	}
	var unclean, summary []string
	for k, v := range total {
		summary = append(summary, fmt.Sprintf("%s ×%d", k, v))
		f := strings.Fields(k)
		if f[len(f)-1] != "ok" && (restart || !cleanErrnos[f[len(f)-1]]) {
			unclean = append(unclean, fmt.Sprintf("%s ×%d", k, v))
		}
	}
	if hung > 0 {
		problems = append(problems, fmt.Sprintf("%d of %d writer processes hung (no answer within %v of being told to stop; killed)", hung, len(ws), grace))
	}
	sort.Strings(summary)
	sort.Strings(unclean)
	if len(summary) == 0 {
		summary = []string{"nothing (no writer answered)"}
	}
	res.Details = append(res.Details, "writers saw: "+strings.Join(summary, ", "))
	if r.cfg.ReloadCmd != "" {
		res.Details = append(res.Details, "a single reload command gives no moment to check that the file was unloaded: give --unload-cmd and --load-cmd for that")
	}
	switch {
	case len(unclean) > 0 && restart:
		problems = append(problems, "writers saw errors through descriptors kept across the restart, where every one must keep working: "+strings.Join(unclean, ", "))
	case len(unclean) > 0:
		problems = append(problems, "writers saw errors other than ENOTCONN, ECONNABORTED, ENOENT, EIO, EBUSY: "+strings.Join(unclean, ", "))
	}
	if restart && hung == 0 {
		// Every write acknowledged is in the file, once.
		var st syscall.Stat_t
		if err := syscall.Stat(r.cfg.Path, &st); err != nil {
			problems = append(problems, fmt.Sprintf("stat after the restart: %v", err))
		} else if want := int64(total["write ok"] * len(rec)); st.Size != want {
			problems = append(problems, fmt.Sprintf("after the restart the file holds %d bytes, but the writers were told %d appends of %d bytes succeeded (%d bytes)", st.Size, total["write ok"], len(rec), want))
		}
	}

	// The file must work again, maybe after the load command's server has
	// come up.
	r.progressf("%s: waiting for the file to work again", c.name)
	deadline := time.Now().Add(min(timeout, 15*time.Second))
	var last string
	for {
		w, err := r.worker(0)
		if err != nil {
			last = err.Error()
		} else {
			resp, err := w.call(request{Op: "roundtrip", Path: r.cfg.Path, Data: []byte("filecheck: works again\n")}, min(10*time.Second, timeout))
			switch {
			case err != nil:
				last = err.Error()
			case resp.N < 0:
				last = resp.Msg
				if resp.Errno != 0 {
					last += ": " + errnoName(syscall.Errno(resp.Errno))
				}
			default:
				last = ""
			}
		}
		if last == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if last != "" {
		problems = append(problems, "after the reload the file does not work: "+last)
	}
	if len(problems) > 0 {
		return fail("%s", strings.Join(problems, "; "))
	}
	res.Status = Pass
	return res
}
