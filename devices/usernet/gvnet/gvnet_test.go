package gvnet

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/vesselvm/vessel/devices/usernet"
)

func TestReachable(t *testing.T) {
	for _, tc := range []struct {
		dst          string
		hostLoopback bool
		want         bool
	}{
		{dst: usernet.HostIP, want: false},
		{dst: usernet.HostIP, hostLoopback: true, want: true},
		{dst: "127.0.0.1", want: false},
		{dst: "127.0.0.1", hostLoopback: true, want: false},
		{dst: "127.1.2.3", hostLoopback: true, want: false},
		{dst: "0.0.0.0", want: false},
		{dst: "0.0.0.0", hostLoopback: true, want: false},
		{dst: "0.1.2.3", want: false},
		{dst: "::1", hostLoopback: true, want: false},
		{dst: "::", hostLoopback: true, want: false},
		{dst: "::ffff:127.0.0.1", hostLoopback: true, want: false},
		{dst: "::ffff:0.0.0.0", hostLoopback: true, want: false},
		{dst: "::ffff:" + usernet.HostIP, want: false},
		{dst: "::ffff:" + usernet.HostIP, hostLoopback: true, want: true},
		{dst: usernet.GatewayIP, want: true},
		{dst: "192.0.2.10", want: true},
		{dst: "2001:db8::1", want: true},
	} {
		got := Reachable(tcpip.AddrFromSlice(netip.MustParseAddr(tc.dst).AsSlice()), tc.hostLoopback)
		if got != tc.want {
			t.Errorf("Reachable(%s, hostLoopback %v) = %v, want %v", tc.dst, tc.hostLoopback, got, tc.want)
		}
	}
}

// TestGuard: the forwarders never see a flow to a destination
// Reachable refuses, whatever answer the stack can give the guest.
func TestGuard(t *testing.T) {
	for _, tc := range []struct {
		dst          string
		hostLoopback bool
		want         bool
	}{
		{dst: usernet.HostIP, want: false},
		{dst: usernet.HostIP, hostLoopback: true, want: true},
		{dst: "0.0.0.0", want: false},
		{dst: "0.0.0.0", hostLoopback: true, want: false},
		{dst: "127.0.0.1", hostLoopback: true, want: false},
		{dst: "192.0.2.10", want: true},
	} {
		forwarded := false
		g := guard(tc.hostLoopback, func(stack.TransportEndpointID, *stack.PacketBuffer) bool {
			forwarded = true
			return true
		})
		id := stack.TransportEndpointID{LocalAddress: tcpip.AddrFromSlice(netip.MustParseAddr(tc.dst).AsSlice()), LocalPort: 5432}
		if handled := g(id, nil); handled != tc.want || forwarded != tc.want {
			t.Errorf("guard(hostLoopback %v) on a flow to %s: handled %v, forwarded %v; want %v",
				tc.hostLoopback, tc.dst, handled, forwarded, tc.want)
		}
	}
}

// The guest's side of the tests: a made-up address, and the port its
// flows come from.
var guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

const guestPort = 40000

// guestEnd starts a switch with opts and returns the guest's end of its
// socket pair, on which a test writes frames as a hostile guest would.
func guestEnd(t *testing.T, hostLoopback bool) *net.UnixConn {
	t.Helper()
	sw, err := New(Options{MAC: guestMAC, HostLoopback: hostLoopback})
	if err != nil {
		t.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	sc, gc := conn(fds[0]), conn(fds[1])
	done := make(chan struct{})
	go func() {
		sw.Serve(sc, nil)
		close(done)
	}()
	t.Cleanup(func() {
		gc.Close()
		<-done
	})
	// A frame or reply that never comes fails the test instead of
	// hanging it.
	gc.SetDeadline(time.Now().Add(time.Minute))
	// The guest asks for the gateway's address, so the gateway learns
	// the guest's.
	gc.Write(arpRequest(netip.MustParseAddr(usernet.GatewayIP)))
	return gc
}

// TestForwardRefusesHostLoopback sends a TCP SYN and a UDP datagram
// from the guest to a destination and port where a host socket listens
// on 127.0.0.1. Only usernet.HostIP with HostLoopback may reach it; the
// other flows are refused (a TCP reset, an ICMP port unreachable) and
// never reach the host socket.
func TestForwardRefusesHostLoopback(t *testing.T) {
	for _, tc := range []struct {
		name         string
		dst          string
		hostLoopback bool
		reach        bool
	}{
		{"host IP by default", usernet.HostIP, false, false},
		{"host IP with host-loopback", usernet.HostIP, true, true},
		{"0.0.0.0 by default", "0.0.0.0", false, false},
		{"0.0.0.0 with host-loopback", "0.0.0.0", true, false},
	} {
		t.Run("tcp/"+tc.name, func(t *testing.T) {
			if netip.MustParseAddr(tc.dst).IsUnspecified() {
				// A reset from 0.0.0.0 has no route back: the refused
				// SYN gets no answer to wait for (TestGuard has it).
				t.Skip("no reset from 0.0.0.0")
			}
			ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			g := guestEnd(t, tc.hostLoopback)
			dst := netip.MustParseAddr(tc.dst)
			if _, err := g.Write(tcpSYN(dst, port)); err != nil {
				t.Fatal(err)
			}
			flags, err := tcpReply(g, dst, port)
			if err != nil {
				t.Fatal(err)
			}
			// The forwarder answers the SYN once it has dialled the
			// host: whether it connected is settled by now.
			err = pendingConn(ln)
			switch {
			case tc.reach && (err != nil || flags&header.TCPFlagSyn == 0):
				t.Fatalf("SYN to %s:%d: reply flags %v, host accept: %v; want a connection", dst, port, flags, err)
			case !tc.reach && err == nil:
				t.Fatalf("SYN to %s:%d reached the host's 127.0.0.1:%d", dst, port, port)
			case !tc.reach && flags&header.TCPFlagRst == 0:
				t.Fatalf("SYN to %s:%d: reply flags %v, want a reset", dst, port, flags)
			}
		})
		t.Run("udp/"+tc.name, func(t *testing.T) {
			pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
			g := guestEnd(t, tc.hostLoopback)
			dst := netip.MustParseAddr(tc.dst)
			if _, err := g.Write(udpDatagram(dst, port, []byte("hostile"))); err != nil {
				t.Fatal(err)
			}
			// Either the host socket gets the datagram or the guest an
			// ICMP port unreachable; a refused datagram never gets to a
			// forwarder, so nothing can arrive at the host after it.
			arrived := make(chan error, 1)
			go func() {
				pc.SetReadDeadline(time.Now().Add(time.Minute))
				b := make([]byte, 64)
				n, _, err := pc.ReadFrom(b)
				if err == nil && string(b[:n]) != "hostile" {
					err = errors.New("a different datagram: " + string(b[:n]))
				}
				arrived <- err
			}()
			unreachable := make(chan error, 1)
			go func() { unreachable <- icmpUnreachable(g) }()
			select {
			case err := <-arrived:
				if !tc.reach {
					t.Fatalf("datagram to %s:%d reached the host's 127.0.0.1:%d (%v)", dst, port, port, err)
				}
				if err != nil {
					t.Fatal(err)
				}
			case err := <-unreachable:
				if err != nil {
					t.Fatal(err)
				}
				if tc.reach {
					t.Fatalf("datagram to %s:%d refused, want it forwarded", dst, port)
				}
			}
		})
	}
}

// pendingConn takes a connection waiting on ln, without waiting for
// one: an error if there is none.
func pendingConn(ln *net.TCPListener) error {
	sc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var aerr error
	err = sc.Control(func(fd uintptr) {
		// The listener's socket is non-blocking: EAGAIN if none waits.
		var nfd int
		if nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC); aerr == nil {
			unix.Close(nfd)
		}
	})
	if err != nil {
		return err
	}
	return aerr
}

var (
	guestAddr = netip.MustParseAddr(usernet.GuestIP)
	gwMAC, _  = net.ParseMAC(gatewayMAC)
)

func tcpipAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }

// ipv4Frame is an Ethernet frame to the gateway with an IPv4 packet
// from the guest to dst, room for the transport header and payload.
func ipv4Frame(dst netip.Addr, proto tcpip.TransportProtocolNumber, size int) ([]byte, []byte) {
	b := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+size)
	header.Ethernet(b).Encode(&header.EthernetFields{
		SrcAddr: tcpip.LinkAddress(guestMAC), DstAddr: tcpip.LinkAddress(gwMAC), Type: header.IPv4ProtocolNumber,
	})
	ip := header.IPv4(b[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(ip)), TTL: 64, Protocol: uint8(proto),
		SrcAddr: tcpipAddr(guestAddr), DstAddr: tcpipAddr(dst),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	return b, ip[header.IPv4MinimumSize:]
}

func tcpSYN(dst netip.Addr, port uint16) []byte {
	b, th := ipv4Frame(dst, header.TCPProtocolNumber, header.TCPMinimumSize)
	tcp := header.TCP(th)
	tcp.Encode(&header.TCPFields{
		SrcPort: guestPort, DstPort: port, SeqNum: 1000, DataOffset: header.TCPMinimumSize,
		Flags: header.TCPFlagSyn, WindowSize: 65535,
	})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpipAddr(guestAddr), tcpipAddr(dst), uint16(len(tcp)))
	tcp.SetChecksum(^tcp.CalculateChecksum(xsum))
	return b
}

func udpDatagram(dst netip.Addr, port uint16, payload []byte) []byte {
	b, uh := ipv4Frame(dst, header.UDPProtocolNumber, header.UDPMinimumSize+len(payload))
	udp := header.UDP(uh)
	udp.Encode(&header.UDPFields{SrcPort: guestPort, DstPort: port, Length: uint16(len(uh))})
	copy(udp.Payload(), payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, tcpipAddr(guestAddr), tcpipAddr(dst), uint16(len(uh)))
	xsum = checksum.Checksum(payload, xsum)
	udp.SetChecksum(^udp.CalculateChecksum(xsum))
	return b
}

// arpRequest asks who has ip, from the guest, in a broadcast frame.
func arpRequest(ip netip.Addr) []byte {
	return arpFrame(header.ARPRequest, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, nil, ip)
}

func arpFrame(op header.ARPOp, dstMAC, targetMAC net.HardwareAddr, target netip.Addr) []byte {
	b := make([]byte, header.EthernetMinimumSize+header.ARPSize)
	header.Ethernet(b).Encode(&header.EthernetFields{
		SrcAddr: tcpip.LinkAddress(guestMAC), DstAddr: tcpip.LinkAddress(dstMAC), Type: header.ARPProtocolNumber,
	})
	a := header.ARP(b[header.EthernetMinimumSize:])
	a.SetIPv4OverEthernet()
	a.SetOp(op)
	copy(a.HardwareAddressSender(), guestMAC)
	copy(a.ProtocolAddressSender(), guestAddr.AsSlice())
	copy(a.HardwareAddressTarget(), targetMAC)
	copy(a.ProtocolAddressTarget(), target.AsSlice())
	return b
}

// readIPv4 reads frames from the switch until one carries an IPv4
// packet of proto, answering the gateway's questions for the guest's
// address on the way.
func readIPv4(g *net.UnixConn, proto tcpip.TransportProtocolNumber) (header.IPv4, error) {
	b := make([]byte, 65536)
	for {
		n, err := g.Read(b)
		if err != nil {
			return nil, err
		}
		f := b[:n]
		if len(f) < header.EthernetMinimumSize {
			continue
		}
		eth := header.Ethernet(f)
		payload := f[header.EthernetMinimumSize:]
		switch eth.Type() {
		case header.ARPProtocolNumber:
			a := header.ARP(payload)
			if a.IsValid() && a.Op() == header.ARPRequest && netip.AddrFrom4([4]byte(a.ProtocolAddressTarget())) == guestAddr {
				g.Write(arpFrame(header.ARPReply, net.HardwareAddr(eth.SourceAddress()), net.HardwareAddr(a.HardwareAddressSender()),
					netip.AddrFrom4([4]byte(a.ProtocolAddressSender()))))
			}
		case header.IPv4ProtocolNumber:
			ip := header.IPv4(payload)
			if ip.IsValid(len(payload)) && ip.TransportProtocol() == proto {
				return ip, nil
			}
		}
	}
}

// tcpReply returns the flags of the gateway's answer to the guest's SYN
// to dst:port.
func tcpReply(g *net.UnixConn, dst netip.Addr, port uint16) (header.TCPFlags, error) {
	for {
		ip, err := readIPv4(g, header.TCPProtocolNumber)
		if err != nil {
			return 0, err
		}
		tcp := header.TCP(ip.Payload())
		if len(tcp) >= header.TCPMinimumSize && tcp.SourcePort() == port && tcp.DestinationPort() == guestPort &&
			ip.SourceAddress() == tcpipAddr(dst) {
			return tcp.Flags(), nil
		}
	}
}

// icmpUnreachable waits for an ICMP port unreachable about the guest's
// datagram.
func icmpUnreachable(g *net.UnixConn) error {
	for {
		ip, err := readIPv4(g, header.ICMPv4ProtocolNumber)
		if err != nil {
			return err
		}
		icmp := header.ICMPv4(ip.Payload())
		if len(icmp) >= header.ICMPv4MinimumSize && icmp.Type() == header.ICMPv4DstUnreachable && icmp.Code() == header.ICMPv4PortUnreachable {
			// The quoted datagram must be ours.
			q := icmp.Payload()
			if len(q) >= header.IPv4MinimumSize+header.UDPMinimumSize &&
				binary.BigEndian.Uint16(q[header.IPv4(q).HeaderLength():]) == guestPort {
				return nil
			}
		}
	}
}
