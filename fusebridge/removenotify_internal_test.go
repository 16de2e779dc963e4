package fusebridge

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// TestRemoveNotifiesWithoutDentry: the kernel drops unused dentries under
// memory pressure while an inotify watch keeps the inode (on a busy
// machine, TestNotifyGenerated then saw no IN_IGNORED). Entry.Remove must
// still give the watcher IN_DELETE_SELF and IN_IGNORED. The dentry is
// dropped here as the kernel's shrinker would, by an entry invalidation.
func TestRemoveNotifiesWithoutDentry(t *testing.T) {
	testenv.RequireFUSE(t)
	// (A NoOpenHandlers file is a bind mount of its twin, which pins the
	// twin's dentry until Remove detaches it.)
	for _, opts := range []Options{{Passthrough: PassthroughOff}, {NoOpen: true}} {
		srv, err := Mount(filepath.Join(t.TempDir(), "mnt"), opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Unmount() })
		e, err := srv.Create("gen", 0o444, handler.Generated(func(context.Context) ([]byte, error) { return []byte("x\n"), nil }))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(srv.Mountpoint(), "gen")
		if b, err := os.ReadFile(p); err != nil || string(b) != "x\n" {
			t.Fatalf("read: %q, %v", b, err)
		}
		w := testenv.Watch(t, p, "", nil)
		// The dentry is dropped; the watch keeps the inode.
		e.parent.notifyGone(e.name)
		if err := e.Remove(); err != nil {
			t.Fatal(err)
		}
		ev, early := w.Expect("IN_IGNORED", 10*time.Second)
		if len(early) != 1 || !strings.Contains(early[0].Mask, "IN_DELETE_SELF") {
			t.Errorf("%+v: removal: events %v then %q, want IN_DELETE_SELF then IN_IGNORED", opts, early, ev.Mask)
		}
	}
}
