package fusebridge_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// TestKillPrivWithoutSetattrer: the bridge keeps the mode of a handler
// without Setattrer, and treats setuid and setgid as kernfs (sysfs, cgroupfs)
// does for such a file, measured on a cgroup file: open(O_TRUNC) by the user
// nobody clears both (the OPEN carries it, nothing else is sent; the bridge
// applies nobody's groups), an appending write does not (a generated file is
// FOPEN_DIRECT_IO, and that write path of the kernel clears nothing, as
// kernfs's does not).
func TestKillPrivWithoutSetattrer(t *testing.T) {
	testenv.RequireRoot(t, "acting as the user nobody")
	for _, mode := range []fusebridge.Options{{AllowOther: true}} {
		srv := mount(t, mode)
		// Let nobody walk to the mount (t.TempDir makes 0700 folders).
		for d := filepath.Dir(srv.Mountpoint()); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
			os.Chmod(d, 0o755)
		}
		v := handler.NewValue("1\n")
		if _, err := srv.Create("knob", 0o6666, v); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(srv.Mountpoint(), "knob")
		for _, tc := range []struct{ shell, want string }{
			{`printf 2 >> "$1"`, "6666"},    // an appending write, as on kernfs
			{`printf 3 > "$1"`, "666"},      // O_TRUNC: setuid, and setgid (nobody is not in group 0)
			{`cat "$1" >/dev/null`, "6666"}, // a read changes nothing
		} {
			if err := unix.Chmod(path, 0o6666); err != nil {
				t.Fatal(err)
			}
			sh := exec.Command("sh", "-c", tc.shell, "sh", path)
			sh.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			if out, err := sh.CombinedOutput(); err != nil {
				t.Fatalf("NoOpen %v: %s as nobody: %v\n%s", mode.NoOpen, tc.shell, err, out)
			}
			out, err := exec.Command("stat", "-c", "%a", path).Output()
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(out)); got != tc.want {
				t.Errorf("NoOpen %v: mode after %s as nobody: %s, want %s (as kernfs)", mode.NoOpen, tc.shell, got, tc.want)
			}
		}
	}
}
