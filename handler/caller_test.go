package handler

import (
	"context"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

func TestCallerOf(t *testing.T) {
	if _, ok := CallerOf(context.Background()); ok {
		t.Error("CallerOf(context.Background()) reported a caller")
	}
	ctx := &fuse.Context{Caller: fuse.Caller{Owner: fuse.Owner{Uid: 65534, Gid: 65533}, Pid: 4242}}
	c, ok := CallerOf(ctx)
	if !ok || c != (Caller{Uid: 65534, Gid: 65533, Tid: 4242}) {
		t.Errorf("CallerOf(request ctx) = %+v, %v; want uid 65534 gid 65533 tid 4242", c, ok)
	}
	if n := testing.AllocsPerRun(100, func() { CallerOf(ctx) }); n != 0 {
		t.Errorf("CallerOf allocates %v times per call, want 0", n)
	}
}
