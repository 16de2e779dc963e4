package fusebridge_test

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// TestKnobWriteEvents: `echo 4 > knob` raises the kernel's own IN_MODIFY
// events only (one for the O_TRUNC open, one for the write(2)), as on
// /sys; the bridge adds none. A Set from Go raises one event when it
// changes the value and none when it does not.
func TestKnobWriteEvents(t *testing.T) {
	modes := append([]struct {
		name string
		opts fusebridge.Options
		twin bool
	}{{"default", fusebridge.Options{}, false}}, notifyModes...)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			srv := mount(t, m.opts)
			k := handler.NewInt(1, 0, 100)
			if _, err := srv.Create("knob", 0o644, k); err != nil {
				t.Fatal(err)
			}
			v := handler.NewValue("1\n")
			if _, err := srv.Create("value", 0o644, v); err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"knob", "value"} {
				p := filepath.Join(srv.Mountpoint(), name)
				w := testenv.Watch(t, p, "", nil)
				w.None(quiet)
				if out, err := exec.Command("sh", "-c", `echo 4 > "$1"`, "sh", p).CombinedOutput(); err != nil {
					t.Fatalf("echo 4 > %s: %v %s", name, err, out)
				}
				ev, early := w.Expect("IN_MODIFY", eventWait)
				evs := append(append(early, ev), w.Settle(quiet)...)
				// inotify merges an event with the same one still unread
				// at the tail of its queue: the kernel's two may be one.
				if len(evs) > 2 || evs[0].Mask != "IN_MODIFY" || evs[len(evs)-1].Mask != "IN_MODIFY" || evs[len(evs)-1].Content != "4\n" {
					t.Errorf("echo 4 > %s: events %+v; want the kernel's two IN_MODIFY (O_TRUNC, write; or the two merged), the last reading \"4\n\"", name, evs)
				}
				if name != "knob" {
					continue
				}
				if err := k.Set(4); err != nil {
					t.Fatal(err)
				}
				if evs := w.Settle(quiet); len(evs) != 0 {
					t.Errorf("Set of the value the knob has: events %+v, want none", evs)
				}
				if err := k.Set(5); err != nil {
					t.Fatal(err)
				}
				ev, early = w.Expect("IN_MODIFY", eventWait)
				if rest := w.Settle(quiet); len(early) != 0 || len(rest) != 0 || ev.Content != "5\n" {
					t.Errorf("Set(5): events %+v, %+v, %+v; want one IN_MODIFY reading \"5\\n\"", early, ev, rest)
				}
			}
		})
	}
}
