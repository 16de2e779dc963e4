package fusebridge_test

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/internal/testenv"
)

// TestRemoveSubtreeWhileInUse removes a directory while a callback of a
// file two levels below is in flight: Remove waits for it, the callback
// finishes with its data, the descriptor then gets EIO, and the handler
// sees one Release.
func TestRemoveSubtreeWhileInUse(t *testing.T) {
	srv := mount(t, fusebridge.Options{})
	h := &blockingReader{entered: make(chan struct{}, 1), release: make(chan struct{})}
	if _, err := srv.MkdirAll("a/b", 0o555); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Create("a/b/slow", 0o444, h); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(filepath.Join(srv.Mountpoint(), "a/b/slow"), unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	readDone := make(chan string, 1)
	go func() {
		buf := make([]byte, 16)
		n, err := unix.Pread(fd, buf, 0)
		readDone <- fmt.Sprintf("%q %v", buf[:max(n, 0)], err)
	}()
	select {
	case <-h.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the read never reached the handler")
	}
	removed := make(chan error, 1)
	go func() { removed <- srv.Lookup("a").Dir().Remove() }()
	select {
	case err := <-removed:
		t.Fatalf("Remove returned (%v) while a Read below was in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(h.release)
	if got := <-readDone; got != `"data" <nil>` {
		t.Errorf("in-flight read: %s; want it to finish with its data", got)
	}
	select {
	case err := <-removed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Remove did not return after the callback finished")
	}
	if _, err := unix.Pread(fd, make([]byte, 4), 1); errnoOf(err) != unix.EIO {
		t.Errorf("read on a descriptor opened before removal: %v, want EIO", err)
	}
	if got := h.released.Load(); got != 1 {
		t.Errorf("Release called %d times by removal, want 1", got)
	}
}

// TestCwdInRemovedDir runs a shell whose working directory is inside a
// directory that is then removed: its lookups get ENOENT, its listing
// fails, and nothing hangs.
func TestCwdInRemovedDir(t *testing.T) {
	for _, opts := range []fusebridge.Options{{}, {NoOpenHandlers: true}} {
		t.Run(fmt.Sprintf("noopenhandlers=%v", opts.NoOpenHandlers), func(t *testing.T) {
			srv := mount(t, opts)
			if _, err := srv.MkdirAll("a/b", 0o555); err != nil {
				t.Fatal(err)
			}
			if _, err := srv.Create("a/b/level", 0o444, text("1\n")); err != nil {
				t.Fatal(err)
			}
			sh := exec.Command("sh", "-c", `cat level && echo ready && read x; cat level; echo "cat=$?"; ls .; echo "ls=$?"`)
			sh.Dir = filepath.Join(srv.Mountpoint(), "a/b")
			in, err := sh.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			outPipe, err := sh.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			sh.Stderr = sh.Stdout.(*os.File)
			if err := sh.Start(); err != nil {
				t.Fatal(err)
			}
			defer sh.Process.Kill()
			out := bufio.NewReader(outPipe)
			var lines []string
			readLine := func() string {
				got := make(chan string, 1)
				go func() { l, _ := out.ReadString('\n'); got <- l }()
				select {
				case l := <-got:
					lines = append(lines, l)
					return l
				case <-time.After(10 * time.Second):
					t.Fatalf("the shell hangs; output so far: %q", lines)
					return ""
				}
			}
			if l := readLine(); l != "1\n" {
				t.Fatalf("cat before removal: %q", l)
			}
			readLine() // ready
			if err := srv.Lookup("a").Remove(); err != nil {
				t.Fatal(err)
			}
			in.Write([]byte("go\n"))
			in.Close()
			rest, _ := out.ReadString(0)
			rest = strings.Join(lines, "") + rest
			done := make(chan error, 1)
			go func() { done <- sh.Wait() }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the shell did not exit")
			}
			if !strings.Contains(rest, "cat=1") || !strings.Contains(rest, "ls=2") || strings.Count(rest, "No such file") != 2 {
				t.Errorf("in a removed working directory:\n%s\nwant cat and ls to fail with ENOENT", rest)
			}
		})
	}
}

// TestConcurrentTree creates, reads and removes subtrees from several
// goroutines at once under -race; on a NoOpenHandlers mount each subtree
// is also a bind made and dropped.
func TestConcurrentTree(t *testing.T) {
	for _, opts := range []fusebridge.Options{{}, {NoOpenHandlers: true}} {
		t.Run(fmt.Sprintf("noopenhandlers=%v", opts.NoOpenHandlers), func(t *testing.T) {
			srv := mount(t, opts)
			if opts.NoOpenHandlers && !srv.HandlersNoOpen() {
				testenv.Missing(t, "NoOpenHandlers needs FUSE passthrough (root, Linux >= 6.9)")
			}
			mnt := srv.Mountpoint()
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					top := fmt.Sprintf("g%d", g)
					for i := range 20 {
						sub, err := srv.MkdirAll(top+"/sub", 0o555)
						if err != nil {
							t.Error(err)
							return
						}
						name := fmt.Sprintf("f%d", i)
						if _, err := sub.Create(name, 0o444, text(name)); err != nil {
							t.Error(err)
							return
						}
						if i%2 == 1 {
							// A pinned file splits the directory's bind.
							if _, err := sub.Create("me", 0o444, perCallerText(top)); err != nil {
								t.Error(err)
								return
							}
						}
						p := filepath.Join(mnt, top, "sub", name)
						if b, err := os.ReadFile(p); err != nil || string(b) != name {
							t.Errorf("%s: %q, %v", p, b, err)
						}
						if err := srv.Lookup(top).Remove(); err != nil {
							t.Error(err)
						}
						if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
							t.Errorf("%s after Remove: %v, want ENOENT", p, err)
						}
					}
				}()
			}
			wg.Wait()
			if got := testenv.MountsUnder(t, mnt); len(got) != 1 {
				t.Errorf("mounts left after every Remove: %q", got)
			}
		})
	}
}
