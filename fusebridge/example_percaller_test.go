package fusebridge_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// sessions is a per-caller dynamic directory: each user sees only the
// sessions it owns, as a process in a pid namespace sees only its own pids.
type sessions struct {
	mu    sync.Mutex
	owner map[string]uint32 // session name -> uid
}

// PerCaller says that the answers depend on the caller: one user's miss
// must not retire another user's session.
func (s *sessions) PerCaller() bool { return true }

func (s *sessions) Lookup(ctx context.Context, name string) (handler.Child, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	uid, ok := s.owner[name]
	if !ok {
		return handler.Child{}, handler.ErrVanished // gone for everyone
	}
	if c, _ := handler.CallerOf(ctx); c.Uid != uid {
		return handler.Child{}, syscall.ENOENT // exists, not for this caller
	}
	return handler.Child{Name: name, Mode: 0o444, Node: str("session " + name + "\n")}, nil
}

func (s *sessions) List(ctx context.Context) ([]handler.Child, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, _ := handler.CallerOf(ctx)
	var list []handler.Child
	for name, uid := range s.owner {
		if uid == c.Uid {
			list = append(list, handler.Child{Name: name, Mode: 0o444, Node: str("session " + name + "\n")})
		}
	}
	return list, nil
}

// A dynamic directory whose children depend on the caller: a miss retires
// nothing, handler.ErrVanished does.
func Example_perCallerDirectory() {
	srv, done := exampleMount(fusebridge.Options{})
	defer done()
	s := &sessions{owner: map[string]uint32{"mine": uint32(os.Getuid()), "theirs": 65534}}
	if _, err := srv.Create("sessions", 0o555, s); err != nil {
		fmt.Println(err)
		return
	}
	dir := filepath.Join(srv.Mountpoint(), "sessions")
	f, err := os.Open(filepath.Join(dir, "mine"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()

	_, err = os.Stat(filepath.Join(dir, "theirs"))
	fmt.Println("theirs:", errors.Is(err, fs.ErrNotExist))
	b := make([]byte, 64)
	n, _ := f.ReadAt(b, 0)
	fmt.Printf("mine: %s", b[:n])

	// The session ends: the next lookup learns it, and the descriptor
	// held on it reads EIO.
	s.mu.Lock()
	delete(s.owner, "mine")
	s.mu.Unlock()
	_, err = os.Stat(filepath.Join(dir, "mine"))
	fmt.Println("mine after:", errors.Is(err, fs.ErrNotExist))
	_, err = f.ReadAt(b, 0)
	fmt.Println(errors.Is(err, syscall.EIO))
	// Output:
	// theirs: true
	// mine: session mine
	// mine after: true
	// true
}
