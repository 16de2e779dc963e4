package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// The library section's servers: what a user of package fusebridge
// publishes (ServeLib), and, for the tree's footprint, a plain go-fuse
// server of the same tree (ServeGoFuseTree). Both run as children of the
// bench ("ramproc bench --serve-lib MOUNTPOINT"), so that their CPU time
// and RSS are theirs alone, and print the path of their first file once
// mounted, ramproc mount's protocol.

// The library server's names.
const (
	libFresh  = "fresh"  // Generated, MaxAge(libBound)
	libPerOp  = "perop"  // Generated, made per open
	libCaller = "caller" // PerCallerGenerated
	libTree   = "tree"   // libTreeDirs directories of bounded files
	// libHello is the plain go-fuse server's copy of hello_ll's file
	// (goFuseHello).
	libHello = "hello"
)

// libBound is lib-gen-fresh's freshness bound, and libTreeBound the tree's.
const (
	libBound     = 100 * time.Millisecond
	libTreeBound = time.Second
)

// libTreeDirs is the number of directories the tree's files are spread
// over.
const libTreeDirs = 100

// libContent is about 100 bytes of generated text that starts with the
// time it was made (Unix nanoseconds), so that a reader can tell its age.
func libContent(tag string) []byte {
	b := fmt.Appendf(nil, "%d %s ", time.Now().UnixNano(), tag)
	for len(b) < 99 {
		b = append(b, 'x')
	}
	return append(b, '\n')
}

// libTreeName is the path of file i of a tree of n files below dir.
func libTreeName(i int) string {
	return fmt.Sprintf("d%03d/f%06d", i%libTreeDirs, i)
}

// ServeLib mounts a fusebridge server with the zero Options (the layout
// the library chooses) on mountpoint, publishes the library section's
// files and a tree of treeFiles bounded files, prints the path of "perop",
// and serves until ctx is done or the directory is unmounted. It needs
// root, as the bench does.
func ServeLib(ctx context.Context, mountpoint string, treeFiles int, out io.Writer) error {
	return serveLib(ctx, mountpoint, treeFiles, out, "lib", fusebridge.Options{})
}

// ServeLibPerOpen is ServeLib with fusebridge.Options.PerOpenPassthrough,
// for the lib-gen-perop-pt row.
func ServeLibPerOpen(ctx context.Context, mountpoint string, treeFiles int, out io.Writer) error {
	return serveLib(ctx, mountpoint, treeFiles, out, "lib-perop", fusebridge.Options{PerOpenPassthrough: true})
}

func serveLib(ctx context.Context, mountpoint string, treeFiles int, out io.Writer, kind string, opts fusebridge.Options) error {
	srv, err := fusebridge.Mount(mountpoint, opts)
	if err != nil {
		return err
	}
	defer srv.Unmount()
	gen := func(tag string) handler.Generated {
		return func(context.Context) ([]byte, error) { return libContent(tag), nil }
	}
	files := []struct {
		name string
		h    any
	}{
		{libFresh, gen("fresh").MaxAge(libBound)},
		{libPerOp, gen("perop")},
		{libCaller, handler.PerCallerGenerated(func(ctx context.Context) ([]byte, error) {
			c, _ := handler.CallerOf(ctx)
			return libContent(fmt.Sprintf("uid=%d", c.Uid)), nil
		})},
	}
	for _, f := range files {
		if _, err := srv.Create(f.name, 0o444, f.h); err != nil {
			return err
		}
	}
	for i := range treeFiles {
		name := libTreeName(i)
		if i < libTreeDirs {
			if _, err := srv.MkdirAll(filepath.Join(libTree, filepath.Dir(name)), 0o555); err != nil {
				return err
			}
		}
		content := []byte(name + "\n")
		g := handler.Generated(func(context.Context) ([]byte, error) { return content, nil })
		if _, err := srv.Create(filepath.Join(libTree, name), 0o444, g.MaxAge(libTreeBound)); err != nil {
			return err
		}
	}
	if _, err := fmt.Fprintln(out, filepath.Join(srv.Mountpoint(), libPerOp)); err != nil {
		return err
	}
	served := make(chan struct{})
	go func() { srv.Wait(); close(served) }()
	select {
	case <-served:
	case <-ctx.Done():
	}
	writeMemProfile(kind)
	return srv.Unmount()
}

// ServeGoFuseTree mounts a plain go-fuse server of the same tree as
// ServeLib's (fs.MemRegularFile nodes holding the same bytes, go-fuse's
// defaults but splice, 1 s timeouts), prints the path of its first file
// and serves until ctx is done or the directory is unmounted: the
// footprint a go-fuse user's own server has. Beside the tree it serves
// two files that split what an open costs on the library's server: what
// is go-fuse's and the Go runtime's, and what is the bridge's. "perop"
// (goFusePerOp) answers the requests ServeLib's "perop" is asked (OPEN,
// a READ with the content, a READ that finds EOF, RELEASE) with no
// layer between go-fuse and the file; "hello" (goFuseHello) answers
// hello_ll's (OPEN and one READ, through the page cache).
func ServeGoFuseTree(ctx context.Context, mountpoint string, treeFiles int, out io.Writer) error {
	mnt, err := filepath.Abs(mountpoint)
	if err != nil {
		return err
	}
	root := &fs.Inode{}
	sec := time.Second
	now := time.Now()
	attr := fuse.Attr{Mode: 0o444, Owner: fuse.Owner{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}}
	attr.SetTimes(&now, &now, &now)
	opts := &fs.Options{
		EntryTimeout: &sec,
		AttrTimeout:  &sec,
		// No splice, as fusebridge: go-fuse would try it on every READ
		// (it sizes a pipe before it falls back to a plain write), and
		// the per-open rows compare the cost of the same requests.
		MountOptions: fuse.MountOptions{DirectMount: true, FsName: "gofuse-tree", Name: "ramproc-bench", DisableSplice: true},
		OnAdd: func(ctx context.Context) {
			root.AddChild(libPerOp, root.NewPersistentInode(ctx, &goFusePerOp{}, fs.StableAttr{Mode: fuse.S_IFREG}), false)
			root.AddChild(libHello, root.NewPersistentInode(ctx, &goFuseHello{data: libContent("hello")}, fs.StableAttr{Mode: fuse.S_IFREG}), false)
			top := root.NewPersistentInode(ctx, &fs.Inode{}, fs.StableAttr{Mode: fuse.S_IFDIR})
			root.AddChild(libTree, top, false)
			dirs := make([]*fs.Inode, libTreeDirs)
			for i := range dirs {
				dirs[i] = top.NewPersistentInode(ctx, &fs.Inode{}, fs.StableAttr{Mode: fuse.S_IFDIR})
				top.AddChild(fmt.Sprintf("d%03d", i), dirs[i], false)
			}
			for i := range treeFiles {
				name := libTreeName(i)
				f := &fs.MemRegularFile{Data: []byte(name + "\n"), Attr: attr}
				dirs[i%libTreeDirs].AddChild(filepath.Base(name), dirs[i%libTreeDirs].NewPersistentInode(ctx, f, fs.StableAttr{Mode: fuse.S_IFREG}), false)
			}
		},
	}
	server, err := fs.Mount(mnt, root, opts)
	if err != nil {
		return fmt.Errorf("mount the go-fuse tree on %s: %w", mnt, err)
	}
	if _, err := fmt.Fprintln(out, filepath.Join(mnt, libTree, libTreeName(0))); err != nil {
		server.Unmount()
		return err
	}
	served := make(chan struct{})
	go func() { server.Wait(); close(served) }()
	select {
	case <-served:
		return nil
	case <-ctx.Done():
	}
	writeMemProfile("gofuse")
	if err := server.Unmount(); err != nil {
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	<-served
	return nil
}

// MemProfileEnv names the environment variable that makes the library
// section's servers write what their memory holds when they are stopped
// (after lib-tree-rss, with the tree still mounted): with
// RAMPROC_BENCH_MEMPROFILE=/tmp/p, "ramproc bench -workloads lib" leaves
// /tmp/p.lib, /tmp/p.lib-perop and /tmp/p.gofuse, heap profiles for "go
// tool pprof", and the same names with .txt, the Go runtime's figures
// (runtime.MemStats) next to the process's VmRSS. Unset, nothing is
// written. A debugging aid for the footprint figures (issue 14), not part
// of the bench's report.
const MemProfileEnv = "RAMPROC_BENCH_MEMPROFILE"

// writeMemProfile writes the files of MemProfileEnv for the server kind,
// if it is set; errors go to stderr, as the bench shows a server's.
func writeMemProfile(kind string) {
	base := os.Getenv(MemProfileEnv)
	if base == "" {
		return
	}
	// The stats first: a collection would return memory to the system
	// and change the figures being explained.
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, _ := procKB("/proc/self/status", "VmRSS")
	txt := fmt.Sprintf("VmRSS %d KiB\nSys %d\nHeapSys %d\nHeapInuse %d\nHeapAlloc %d\nHeapIdle %d\nHeapReleased %d\nStackSys %d\nMSpanSys %d\nGCSys %d\nOtherSys %d\nNextGC %d\nNumGC %d\n",
		rss>>10, ms.Sys, ms.HeapSys, ms.HeapInuse, ms.HeapAlloc, ms.HeapIdle, ms.HeapReleased, ms.StackSys, ms.MSpanSys, ms.GCSys, ms.OtherSys, ms.NextGC, ms.NumGC)
	if err := os.WriteFile(base+"."+kind+".txt", []byte(txt), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	f, err := os.Create(base + "." + kind)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	defer f.Close()
	runtime.GC() // the profile shows what the last collection found live
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
}

// goFusePerOp is a file made per open, served as fusebridge serves a
// Generated without a bound: a snapshot per open, read with direct I/O,
// nothing at close.
type goFusePerOp struct{ fs.Inode }

var (
	_ fs.NodeOpener    = (*goFusePerOp)(nil)
	_ fs.NodeGetattrer = (*goFusePerOp)(nil)
)

func (*goFusePerOp) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = fuse.S_IFREG | 0o444
	return 0
}

func (*goFusePerOp) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return goFuseSnapshot(libContent("perop")), fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
}

// goFuseSnapshot is one open's content.
type goFuseSnapshot []byte

var _ fs.FileReader = goFuseSnapshot(nil)

func (b goFuseSnapshot) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(b)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(b[off:min(int(off)+len(dest), len(b))]), 0
}

// goFuseHello is hello_ll's file in go-fuse: content of a fixed size,
// which the attributes give (cached for a second, as hello_ll's), read
// through the page cache, which each open drops (no FOPEN_KEEP_CACHE):
// OPEN and one READ per open. FOPEN_NOFLUSH stands for hello_ll's ENOSYS
// to the first FLUSH, after which the kernel sends none.
type goFuseHello struct {
	fs.Inode
	data []byte
}

var (
	_ fs.NodeOpener    = (*goFuseHello)(nil)
	_ fs.NodeGetattrer = (*goFuseHello)(nil)
)

func (h *goFuseHello) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = fuse.S_IFREG | 0o444
	out.Size = uint64(len(h.data))
	return 0
}

func (h *goFuseHello) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return goFuseSnapshot(h.data), fuse.FOPEN_NOFLUSH, 0
}
