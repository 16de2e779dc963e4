package fusebridge_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
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
// value, and reads at once, in one read(2), which must return the whole new
// text (a second read would ask the size again and hide a stale one). Most rounds write as `echo v > knob` does
// (O_TRUNC, then one write); every fourth writes through a descriptor kept
// open, as `exec 3>knob; echo v >&3` does (no SETATTR, a growing offset);
// reader goroutines read all the time, so that pages are cached in
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

// knobRounds is the stress: so many write-then-read rounds, or as many
// as fit in knobTimeLimit on a machine too busy for them (a cap on the
// test's time, not an expected speed: nothing is asserted of the count).
const (
	knobRounds    = 400
	knobTimeLimit = time.Minute
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

	timeouts := fusebridge.WriteDropsAnswered()
	start := time.Now()
	torn, rounds, refused, zeroedReads := 0, 0, 0, 0
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
				// Within the first page: a write(2) that crosses a page
				// boundary reaches the knob as two stores when the
				// kernel caches no page at the offset (see
				// Options.NoOpen).
				if pos, err := unix.Seek(keep, 0, 1); err == nil && pos+int64(len(writes[i])) > int64(os.Getpagesize()) {
					unix.Seek(keep, 0, 0)
				}
				_, err := unix.Write(keep, []byte(writes[i]))
				return err
			}
		}
		zeroed := fusebridge.ZeroedWrites()
		if err := write(); err != nil {
			// The kernel's truncation race (pagedrop.go) may zero the
			// written bytes before the bridge reads them, and the knob
			// refuses NULs. Such a write stored nothing, so there is no
			// new text to read; it is counted, not failed, when the
			// bridge saw the NULs.
			if errors.Is(err, unix.EINVAL) && fusebridge.ZeroedWrites() > zeroed {
				refused++
				t.Logf("round %d: write of %q refused, its bytes zeroed by the kernel's truncation race: %v", rounds, writes[i], err)
				continue
			}
			t.Fatalf("round %d: write %q (kept descriptor: %v): %v", rounds, writes[i], kept, err)
		}
		got, err := readOnce(p)
		if err != nil {
			t.Fatal(err)
		}
		if got != shows[i] {
			if strings.IndexByte(got, 0) >= 0 {
				// The same race, on a page a READ filled: the text cut
				// by NULs.
				zeroedReads++
				t.Logf("round %d: read after the write: %q, zeroed by the kernel's truncation race", rounds, got)
				continue
			}
			if torn == 0 {
				first = got
			}
			torn++
		}
	}
	if refused+zeroedReads > rounds/20 {
		t.Errorf("%d writes refused and %d reads cut by NULs in %d rounds: more than the kernel's truncation race explains", refused, zeroedReads, rounds)
	}
	t.Logf("%d rounds in %v, %d concurrent reads saw neither text, %d an empty file, %d writes answered while their invalidation waited for a folio",
		rounds, time.Since(start), concurrentOdd.Load(), concurrentEmpty.Load(), fusebridge.WriteDropsAnswered()-timeouts)
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

// readOnce is one read(2) of p, as a reader of a sysfs attribute makes:
// the whole text in one call (a second call would ask the file's size
// again, and so hide a stale one).
func readOnce(p string) (string, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	buf := make([]byte, 128<<10)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
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
