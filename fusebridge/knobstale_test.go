package fusebridge_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
	"github.com/ramproc/ramproc/internal/testenv"
)

// TestKnobReadAfterWrite checks what sysfs guarantees for an attribute: a
// read that starts after write(2) returned sees the new show() text, never
// the written bytes over the old text and never the old text, on the
// connections that serve knobs from the kernel's page cache (a NoOpen
// mount, and the handler files of a NoOpenHandlers mount).
//
// Each round caches the old text in the kernel (a read), writes the other
// value, and reads at once. Most rounds write as `echo v > knob` does
// (O_TRUNC, then one write); every fourth writes through a descriptor kept
// open, as `exec 3>knob; echo v >&3` does (no SETATTR, a growing offset); reader goroutines read all the time, so that pages are cached in
// every phase of the write. The enum's two texts have the same length, the
// case where the kernel's size says nothing; the int's differ in length.
func TestKnobReadAfterWrite(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts fusebridge.Options
	}{
		{"NoOpen", fusebridge.Options{NoOpen: true}},
		{"NoOpenHandlers", fusebridge.Options{NoOpenHandlers: true}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			srv := mount(t, mode.opts)
			if mode.opts.NoOpenHandlers && !srv.HandlersNoOpen() {
				testenv.Missing(t, "NoOpenHandlers needs FUSE passthrough (root, Linux >= 6.9)")
			}
			t.Run("enum", func(t *testing.T) {
				k := handler.NewEnum("low", "low", "high")
				stressKnob(t, srv, "enum", k, [2]string{"high\n", "low\n"}, [2]string{"low [high]\n", "[low] high\n"})
			})
			t.Run("int", func(t *testing.T) {
				k := handler.NewInt(100, 0, 1<<20)
				stressKnob(t, srv, "int", k, [2]string{"7\n", "0x100000\n"}, [2]string{"7\n", "1048576\n"})
			})
		})
	}
}

// knobRounds bounds the stress: so many write-then-read rounds, or the
// time limit, whichever comes first.
const (
	knobRounds    = 400
	knobTimeLimit = 10 * time.Second
)

func stressKnob(t *testing.T, srv *fusebridge.Server, name string, k any, writes, shows [2]string) {
	if _, err := srv.Create(name, 0o644, k); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(srv.Mountpoint(), name)
	valid := map[string]bool{shows[0]: true, shows[1]: true}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var concurrentOdd, concurrentEmpty atomic.Int64
	var oddSample atomic.Value
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				got, err := readKnob(p)
				if err != nil {
					t.Errorf("concurrent read: %v", err)
					return
				}
				// A read concurrent with a write may see either text;
				// anything else is counted and logged.
				if got == "" {
					concurrentEmpty.Add(1)
				} else if !valid[got] {
					concurrentOdd.Add(1)
					oddSample.Store(got)
				}
			}
		}()
	}
	defer func() {
		stop.Store(true)
		wg.Wait()
	}()

	timeouts := fusebridge.WriteDropTimeouts()
	start := time.Now()
	torn, rounds, refused := 0, 0, 0
	var first string
	keep, err := unix.Open(p, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(keep)
	deadline := time.Now().Add(knobTimeLimit)
	for ; rounds < knobRounds && time.Now().Before(deadline); rounds++ {
		i := rounds % 2
		if _, err := readKnob(p); err != nil { // cache the old text
			t.Fatal(err)
		}
		write := func() error { return echoKnob(p, writes[i]) }
		kept := rounds%4 == 3
		if kept {
			write = func() error {
				_, err := unix.Write(keep, []byte(writes[i]))
				return err
			}
		}
		if err := write(); err != nil {
			// Seen once in about 500 writes through the descriptor kept
			// open (its offset grows past the file's end), never with
			// echo's open(O_TRUNC): EINVAL, as if the knob had been
			// handed part of the value. Such a write stored nothing, so
			// there is no new text to read; it is logged, not failed.
			if kept && errors.Is(err, unix.EINVAL) {
				refused++
				t.Logf("round %d: write of %q through the kept descriptor refused: %v", rounds, writes[i], err)
				continue
			}
			t.Fatalf("round %d: echo %q: %v", rounds, writes[i], err)
		}
		got, err := readKnob(p)
		if err != nil {
			t.Fatal(err)
		}
		if got != shows[i] {
			if torn == 0 {
				first = got
			}
			torn++
		}
	}
	if refused > rounds/20 {
		t.Errorf("%d of %d writes through the kept descriptor were refused", refused, rounds)
	}
	if rounds < 50 {
		t.Errorf("only %d rounds in %v", rounds, knobTimeLimit)
	}
	t.Logf("%d rounds in %v, %d concurrent reads saw neither text, %d an empty file, %d writes answered before their invalidation completed",
		rounds, time.Since(start), concurrentOdd.Load(), concurrentEmpty.Load(), fusebridge.WriteDropTimeouts()-timeouts)
	if torn > 0 {
		t.Errorf("%d of %d reads right after the write did not see the new text; the first got %q", torn, rounds, first)
	}
	if n := concurrentOdd.Load(); n > 0 {
		t.Logf("a concurrent read saw %q", oddSample.Load())
	}
}

// echoKnob writes v as `echo v > p` does: open with O_TRUNC, one write.
func echoKnob(p, v string) error {
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_TRUNC|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	n, err := unix.Write(fd, []byte(v))
	if err == nil && n != len(v) {
		err = unix.EIO
	}
	return err
}

// readKnob reads p as cat does, to its end.
func readKnob(p string) (string, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	var out bytes.Buffer
	buf := make([]byte, 128<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return "", err
		}
		if n == 0 {
			return out.String(), nil
		}
		out.Write(buf[:n])
	}
}
