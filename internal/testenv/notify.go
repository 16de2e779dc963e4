package testenv

import (
	"net"
	"testing"
	"time"
)

// ListenNotify plays the service manager's end of sd_notify: it listens on
// the unix datagram socket name (a path, or "@..." for an abstract one),
// to be given to a server as NOTIFY_SOCKET, and returns the function that
// waits for the next notification (failing the test after 30 s). The
// socket is closed when the test ends.
func ListenNotify(t testing.TB, name string) (recv func() string) {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return func() string {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 4096)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
}
