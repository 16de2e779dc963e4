package ramfile_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
	"github.com/ramproc/ramproc/ramfile"
)

// childKeepPriv is a server without CAP_FSETID (an unprivileged mount): as
// the user nobody it serves a RAM file on a memfd and applies what the
// kernel sends for a write, a truncate and a fallocate by a caller with
// CAP_FSETID (root): nothing but the WRITE, SETATTR size or FALLOCATE. The
// store is changed with nobody's credentials, which would clear setuid and
// setgid on the memfd; the RAM file must keep them, as tmpfs does for root.
func childKeepPriv() error {
	if err := syscall.Setgroups(nil); err != nil {
		return err
	}
	if err := syscall.Setresgid(65534, 65534, 65534); err != nil {
		return err
	}
	if err := syscall.Setresuid(65534, 65534, 65534); err != nil {
		return err
	}
	store, err := bytestore.New(bytestore.Options{Kind: bytestore.Memfd, Capacity: 1 << 20})
	if err != nil {
		return err
	}
	defer store.Close()
	f := ramfile.New(store)
	ctx := context.Background()
	mode := func() string {
		var a handler.Attr
		if err := f.Getattr(ctx, &a); err != nil {
			return err.Error()
		}
		return fmt.Sprintf("%#o", handler.UnixMode(a.Mode))
	}
	for _, m := range []uint32{0o6666, 0o6777} {
		fm := handler.ModeFromUnix(m)
		if err := f.Setattr(ctx, nil, &handler.SetAttr{Mode: &fm}); err != nil {
			return err
		}
		if _, err := f.Write(ctx, nil, []byte("data"), 0); err != nil {
			return err
		}
		fmt.Printf("write %#o: %s\n", m, mode())
		size := int64(1)
		if err := f.Setattr(ctx, nil, &handler.SetAttr{Size: &size}); err != nil {
			return err
		}
		fmt.Printf("truncate %#o: %s\n", m, mode())
		if err := f.Fallocate(ctx, nil, 0, 0, 8192); err != nil {
			return err
		}
		fmt.Printf("fallocate %#o: %s\n", m, mode())
	}
	return nil
}

func TestStoreWritesKeepSetid(t *testing.T) {
	testenv.RequireRoot(t, "running a child as the user nobody")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$", "0", "-")
	cmd.Env = append(os.Environ(), childEnv+"=keeppriv")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	want := "write 06666: 06666\ntruncate 06666: 06666\nfallocate 06666: 06666\n" +
		"write 06777: 06777\ntruncate 06777: 06777\nfallocate 06777: 06777\n"
	if got := string(out); got != want {
		t.Errorf("modes after the store's own writes as nobody:\n%s\nwant:\n%s", strings.TrimSpace(got), want)
	}
}
