package bytestore

import (
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// TestConcurrentWritesNearCapacity has many goroutines write disjoint,
// page-aligned ranges that together ask for more pages than the capacity.
// Every byte written must be accounted for, the file must end up holding
// exactly the capacity, and no observer may ever see more pages than that.
func TestConcurrentWritesNearCapacity(t *testing.T) {
	const (
		capPages   = 64
		goroutines = 48
		perG       = 3 // pages each goroutine owns
	)
	for _, kind := range []Kind{Memfd, Auto} {
		t.Run(kind.String(), func(t *testing.T) {
			s := openStore(t, kind, capPages*pg)
			var written atomic.Int64
			var wg sync.WaitGroup
			stop := make(chan struct{})
			var monitor sync.WaitGroup
			monitor.Add(1)
			go func() {
				defer monitor.Done()
				buf := make([]byte, pg)
				for {
					select {
					case <-stop:
						return
					default:
					}
					st, err := s.Stat()
					if err != nil {
						t.Error(err)
						return
					}
					if st.Blocks > capPages*pg/512 {
						t.Errorf("%d blocks allocated, capacity is %d", st.Blocks, capPages*pg/512)
					}
					s.ReadAt(buf, int64(st.Size/2))
					s.Seek(0, unix.SEEK_HOLE)
				}
			}()
			start := make(chan struct{})
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					base := int64(g) * perG * pg
					data := pattern(byte(g), perG*pg)
					<-start
					done := int64(0)
					for done < perG*pg {
						n, err := s.WriteAt(data[done:], base+done)
						if err == unix.ENOSPC {
							break
						}
						if err != nil {
							t.Errorf("goroutine %d: %v", g, err)
							return
						}
						if n == 0 || n%int(pg) != 0 {
							t.Errorf("goroutine %d: page-aligned write returned %d", g, n)
							return
						}
						done += int64(n)
					}
					written.Add(done)
				}()
			}
			close(start)
			wg.Wait()
			close(stop)
			monitor.Wait()

			st, err := s.Stat()
			if err != nil {
				t.Fatal(err)
			}
			if got := written.Load(); got != capPages*pg {
				t.Errorf("goroutines wrote %d bytes in total, want exactly the capacity %d", got, capPages*pg)
			}
			if st.Blocks != capPages*pg/512 {
				t.Errorf("%d blocks allocated, want %d", st.Blocks, capPages*pg/512)
			}
			if _, err := s.WriteAt([]byte{1}, st.Size+pg); err != unix.ENOSPC {
				t.Errorf("write at full capacity: %v, want ENOSPC", err)
			}
			// Each written page holds its goroutine's pattern.
			buf := make([]byte, pg)
			for g := range goroutines {
				data := pattern(byte(g), perG*pg)
				for i := int64(0); i < perG; i++ {
					off := int64(g)*perG*pg + i*pg
					if d, err := s.Seek(off, unix.SEEK_DATA); err != nil || d != off {
						continue // not written
					}
					if n, _ := s.ReadAt(buf, off); n != int(pg) || string(buf) != string(data[i*pg:(i+1)*pg]) {
						t.Fatalf("page at %d has other bytes than goroutine %d wrote", off, g)
					}
				}
			}
		})
	}
}

// TestConcurrentPunchAndWrite races writers against hole punching and
// truncation on a full store: the capacity is never exceeded and a page a
// goroutine owns is never lost to another.
func TestConcurrentPunchAndWrite(t *testing.T) {
	const capPages = 32
	for _, kind := range []Kind{Memfd, Auto} {
		t.Run(kind.String(), func(t *testing.T) {
			s := openStore(t, kind, capPages*pg)
			var wg sync.WaitGroup
			for g := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := pattern(byte(g), 4*pg)
					base := int64(g) * 4 * pg
					for i := range 300 {
						switch i % 4 {
						case 0, 1:
							if _, err := s.WriteAt(buf, base); err != nil && err != unix.ENOSPC {
								t.Error(err)
							}
						case 2:
							if err := s.Fallocate(keepSize, base, 2*pg); err != nil && err != unix.ENOSPC {
								t.Error(err)
							}
						case 3:
							if err := s.Fallocate(punchHole|keepSize, base, 4*pg); err != nil {
								t.Error(err)
							}
						}
						st, err := s.Stat()
						if err != nil {
							t.Error(err)
							return
						}
						if st.Blocks > capPages*pg/512 {
							t.Errorf("%d blocks allocated, capacity is %d", st.Blocks, capPages*pg/512)
							return
						}
					}
				}()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 200 {
					st, _ := s.Stat()
					if i%50 == 0 {
						s.Truncate(st.Size) // frees fallocated pages beyond EOF
					}
				}
			}()
			wg.Wait()
		})
	}
}

// TestConcurrentUnlimited exercises the lock-free path under the race
// detector: writers, readers and seekers on one unlimited store.
func TestConcurrentUnlimited(t *testing.T) {
	s := openStore(t, Memfd, 0)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := pattern(byte(g), 8192)
			for i := range 200 {
				off := int64(g)<<22 + int64(i)*8192
				if n, err := s.WriteAt(buf, off); n != len(buf) || err != nil {
					t.Errorf("WriteAt: %d, %v", n, err)
					return
				}
				got := make([]byte, len(buf))
				if n, err := s.ReadAt(got, off); n != len(buf) || err != nil || string(got) != string(buf) {
					t.Errorf("ReadAt: %d, %v", n, err)
					return
				}
				if d, err := s.Seek(off, unix.SEEK_DATA); d != off || err != nil {
					t.Errorf("SEEK_DATA(%d) = %d, %v", off, d, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
