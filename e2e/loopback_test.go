//go:build e2e

package e2e

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var (
	loopTCP   = flag.String("e2e.loopback.tcp", "", "guest half: HOST:PORT of the host's TCP loopback listener")
	loopUDP   = flag.String("e2e.loopback.udp", "", "guest half: HOST:PORT of the host's UDP loopback socket")
	loopReach = flag.Bool("e2e.loopback.reach", false, "guest half: the host's loopback must be reachable (else refused)")
)

// TestNetUserHostLoopback: the host's loopback is out of a user network
// guest's reach unless host-loopback asks for it. A TCP listener and a
// UDP socket on the host's 127.0.0.1 answer "pong" to "ping"; a default
// guest's connection and datagram to host.vessel.internal are refused
// and never arrive, a host-loopback guest's get their answer.
func TestNetUserHostLoopback(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	initrd := guestInitrd(t)
	for _, tc := range []struct {
		name  string
		net   string
		reach bool
	}{
		{"default", "user", false},
		{"host-loopback", "user,host-loopback", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			var conns, datagrams atomic.Int64
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					conns.Add(1)
					go func() {
						defer c.Close()
						c.SetDeadline(time.Now().Add(time.Minute))
						if l, err := bufio.NewReader(c).ReadString('\n'); err == nil && l == "ping\n" {
							c.Write([]byte("pong\n"))
						}
					}()
				}
			}()
			go func() {
				b := make([]byte, 64)
				for {
					n, from, err := pc.ReadFrom(b)
					if err != nil {
						return
					}
					datagrams.Add(1)
					if string(b[:n]) == "ping" {
						pc.WriteTo([]byte("pong"), from)
					}
				}
			}()
			tcpPort := ln.Addr().(*net.TCPAddr).Port
			udpPort := pc.LocalAddr().(*net.UDPAddr).Port
			r := vessel(t, "vm", "run", "--kernel", filepath.Join(guestDir, "bzImage"), "--initrd", initrd, "--memory", "384M",
				"--net", tc.net, "--", "/e2e.test", "-e2e.guest", "-test.run", "^TestGuestHostLoopback$", "-test.v",
				fmt.Sprintf("-e2e.loopback.tcp=host.vessel.internal:%d", tcpPort),
				fmt.Sprintf("-e2e.loopback.udp=host.vessel.internal:%d", udpPort),
				"-e2e.loopback.reach="+strconv.FormatBool(tc.reach))
			if r.code != 0 || !strings.Contains(r.stdout, "--- PASS: TestGuestHostLoopback") {
				t.Fatalf("guest check failed:\n%v", r)
			}
			// The guest was refused before anything could be forwarded:
			// nothing can still be on its way.
			if !tc.reach && (conns.Load() != 0 || datagrams.Load() != 0) {
				t.Errorf("the default guest reached the host's loopback: %d connections, %d datagrams", conns.Load(), datagrams.Load())
			}
		})
	}
}

// TestGuestHostLoopback is the guest half of TestNetUserHostLoopback.
func TestGuestHostLoopback(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of TestNetUserHostLoopback; runs inside the VM")
	}
	c, err := net.DialTimeout("tcp", *loopTCP, 30*time.Second)
	switch {
	case *loopReach && err != nil:
		t.Errorf("TCP to %s: %v, want a connection", *loopTCP, err)
	case *loopReach:
		c.SetDeadline(time.Now().Add(time.Minute))
		c.Write([]byte("ping\n"))
		l, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if l != "pong\n" {
			t.Errorf("TCP to %s: answer %q (%v), want pong", *loopTCP, l, err)
		}
	case err == nil:
		c.Close()
		t.Errorf("TCP to %s connected, want it refused", *loopTCP)
	case !errors.Is(err, syscall.ECONNREFUSED):
		t.Errorf("TCP to %s: %v, want connection refused", *loopTCP, err)
	}

	// A connected UDP socket reports the ICMP port unreachable of a
	// refused datagram as ECONNREFUSED on its next read. The first
	// datagram may be lost to address resolution: send a few.
	u, err := net.Dial("udp", *loopUDP)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	b := make([]byte, 64)
	for i := 0; ; i++ {
		u.Write([]byte("ping"))
		u.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := u.Read(b)
		switch {
		case *loopReach && err == nil && string(b[:n]) == "pong":
			return
		case !*loopReach && errors.Is(err, syscall.ECONNREFUSED):
			return
		case !*loopReach && err == nil:
			t.Fatalf("UDP to %s answered %q, want it refused", *loopUDP, b[:n])
		case i == 10:
			t.Fatalf("UDP to %s: %v (answer %q) after %d datagrams; want %s", *loopUDP, err, b[:n], i+1,
				map[bool]string{true: "pong", false: "connection refused"}[*loopReach])
		}
	}
}
