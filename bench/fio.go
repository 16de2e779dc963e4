package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// fioVersion returns the version line of the fio at path ("fio-3.33").
func fioVersion(path string) (string, error) {
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// fioJob is one job of a fio run: a target's file.
type fioJob struct {
	name string // the job's name, reported back in the JSON
	path string
}

// fioArgs builds the command line of one fio run of w: one job per entry of
// jobs, each after the previous one has finished (stonewall) and reported
// as its own group. The options are psync (pread/pwrite, like the Go
// generator), time based over a size-byte region, no page-cache
// invalidation (a FUSE file's cache is part of what is measured), no
// fallocate, and no file creation (the file must be there).
func fioArgs(w *workload, jobs []fioJob, size int64, d time.Duration) []string {
	args := []string{
		"--output-format=json",
		"--eta=never",
		"--rw=" + w.fio,
		"--bs=" + strconv.Itoa(w.bs),
		"--size=" + strconv.FormatInt(size, 10),
		"--ioengine=psync",
		"--numjobs=" + strconv.Itoa(max(w.jobs, 1)),
		"--group_reporting",
		"--time_based",
		"--runtime=" + strconv.FormatInt(max(d.Milliseconds(), 1), 10) + "ms",
		"--invalidate=0",
		"--fallocate=none",
		"--norandommap",
		"--randrepeat=0",
		"--allow_file_create=0",
	}
	if w.direct {
		args = append(args, "--direct=1")
	}
	for i, j := range jobs {
		args = append(args, "--name="+j.name)
		if i > 0 {
			args = append(args, "--stonewall")
		}
		args = append(args, "--filename="+j.path)
	}
	return args
}

// fioRun runs w with fio on every job's file in turn and returns what fio
// measured for each, in the order of jobs. fio's own runtime of each job is
// its sample's wall time, so fio's start-up does not dilute the rates.
func fioRun(ctx context.Context, fio string, w *workload, jobs []fioJob, size int64, d time.Duration) ([]sample, error) {
	cmd := exec.CommandContext(ctx, fio, fioArgs(w, jobs, size, d)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(string(out))
		}
		return nil, fmt.Errorf("fio: %v: %s", err, lastLines(msg, 3))
	}
	byName, err := parseFio(out, w.fio)
	if err != nil {
		return nil, err
	}
	samples := make([]sample, len(jobs))
	for i, j := range jobs {
		s, ok := byName[j.name]
		if !ok {
			return nil, fmt.Errorf("fio reported no job %q", j.name)
		}
		samples[i] = s
	}
	return samples, nil
}

type fioDir struct {
	IOBytes  int64   `json:"io_bytes"`
	TotalIOs int64   `json:"total_ios"`
	Runtime  int64   `json:"runtime"` // ms
	IOPS     float64 `json:"iops"`
	BwBytes  float64 `json:"bw_bytes"`
}

type fioOutput struct {
	Jobs []struct {
		Name  string `json:"jobname"`
		Error int    `json:"error"`
		Read  fioDir `json:"read"`
		Write fioDir `json:"write"`
	} `json:"jobs"`
}

// parseFio extracts each group's totals, by job name, from a
// group-reported fio JSON run. fio may print warnings before the JSON
// document, so parsing starts at the first '{'.
func parseFio(out []byte, rw string) (map[string]sample, error) {
	i := bytes.IndexByte(out, '{')
	if i < 0 {
		return nil, fmt.Errorf("fio printed no JSON: %s", lastLines(string(out), 3))
	}
	var o fioOutput
	if err := json.Unmarshal(out[i:], &o); err != nil {
		return nil, fmt.Errorf("fio JSON: %w", err)
	}
	if len(o.Jobs) == 0 {
		return nil, errors.New("fio JSON has no job")
	}
	byName := map[string]sample{}
	for _, j := range o.Jobs {
		if j.Error != 0 {
			return nil, fmt.Errorf("fio job %s: error %d", j.Name, j.Error)
		}
		dir := j.Read
		if strings.Contains(rw, "write") {
			dir = j.Write
		}
		if dir.TotalIOs == 0 || dir.Runtime == 0 {
			return nil, fmt.Errorf("fio job %s did no I/O", j.Name)
		}
		s := byName[j.Name]
		s.ops += float64(dir.TotalIOs)
		s.bytes += float64(dir.IOBytes)
		s.wall = max(s.wall, float64(dir.Runtime)/1000)
		byName[j.Name] = s
	}
	return byName, nil
}

// lastLines returns the last n lines of s, for error messages.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}
