package cgroupfs

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/ramproc/ramproc/cgroupfs/internal/livecg"
	"github.com/ramproc/ramproc/internal/testenv"
)

// containerScript is what a container runtime does with docs/cgroupfs.md's
// recipe, run by hand: inside the container's own mount namespace (and
// pid namespace, with its own /proc), bind each served file over its twin,
// then run the ordinary tools. $1 is the mount point.
const containerScript = `set -e
M=$1
for f in meminfo cpuinfo stat uptime loadavg diskstats swaps; do
	mount --bind "$M/proc/$f" "/proc/$f"
done
mount --bind "$M/sys/devices/system/cpu/online" /sys/devices/system/cpu/online
echo "pid $$"
echo "free $(free -k | awk '$1 == "Mem:" { print $2 }')"
echo "online $(cat /sys/devices/system/cpu/online)"
echo "processors $(grep -c ^processor /proc/cpuinfo)"
echo "cpulines $(grep ^cpu /proc/stat | awk '{ print $1 }' | tr '\n' ' ')"
echo "uptime $(cut -d' ' -f1 /proc/uptime)"
echo "loadavg $(cat /proc/loadavg)"
`

// TestContainerRecipe runs the container recipe with the kernel's own
// pieces instead of a container runtime (TestPodmanRecipe runs it with
// podman and runc, where they are installed): a
// process in a 256 MiB memory cgroup and a one-CPU cpuset, in mount and pid
// namespaces of its own (unshare(1), as runc makes them), binds the files
// over /proc and /sys and runs free(1), grep and cat. They must see the
// container's limits, the binds must stay inside its mount namespace, and
// the reader's pid namespace must not hide it from the server (FUSE names
// the reader by its pid in the server's namespace).
func TestContainerRecipe(t *testing.T) {
	testenv.RequireCommand(t, "unshare", "apt-get install util-linux")
	testenv.RequireCommand(t, "free", "apt-get install procps")
	mnt := serve(t)
	name := "container-" + livecg.Name()
	mem := livecg.New(t, livecg.Memory, name, "memory.limit_in_bytes", strconv.Itoa(256<<20))
	cs := livecg.New(t, livecg.Cpuset, name, "cpuset.cpus", "0", "cpuset.mems", "0")
	cmd := livecg.Command(t, []*livecg.Group{mem, cs},
		"unshare", "--mount", "--pid", "--fork", "--mount-proc", "sh", "-c", containerScript, "sh", mnt)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("container: %v\n%s%s", err, out, stderr.Bytes())
	}
	t.Logf("the container saw:\n%s", out)
	got := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		got[k] = strings.TrimSpace(v)
	}
	want := map[string]string{
		"pid":        "1", // the script ran as its pid namespace's init
		"free":       "262144",
		"online":     "0",
		"processors": "1",
		"cpulines":   "cpu cpu0",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %q, want %q (output:\n%s)", k, got[k], w, out)
		}
	}
	// The container was made a moment ago; the host has been up longer.
	up, err := strconv.ParseFloat(got["uptime"], 64)
	host := hostUptime(t).Seconds()
	if err != nil || up < 0 || up >= host {
		t.Errorf("uptime in the container %q, host's %.2f: want the container's age, less than the host's", got["uptime"], host)
	}
	if f := strings.Fields(got["loadavg"]); len(f) != 5 {
		t.Errorf("loadavg %q: want five fields", got["loadavg"])
	}
	// The binds were made in the container's mount namespace only.
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(l); len(f) > 4 && (f[4] == "/proc/meminfo" || f[4] == "/sys/devices/system/cpu/online") {
			t.Errorf("a bind leaked into the host's mount namespace: %s", l)
		}
	}
}
