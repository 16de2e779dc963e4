package main

import (
	"net"
	"os"
)

// sdNotify sends state (e.g. "READY=1") to the service manager, as
// sd_notify(3) does: one datagram to the unix socket named by
// NOTIFY_SOCKET ("@name" is an abstract socket, which Go's net package
// maps itself). Without NOTIFY_SOCKET (not started by systemd with
// Type=notify) it does nothing. The protocol is this one datagram; no
// library is needed for it.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}
