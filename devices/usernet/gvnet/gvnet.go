// Package gvnet is the switch side of a user network (package
// devices/usernet): gvisor-tap-vsock's virtual network, on gVisor's
// TCP/IP stack, with a gateway that NATs the guest's connections onto the
// host's own sockets, a DHCP server, a DNS server, and the published
// ports. It runs in the vessel-usernet helper process, never in the VMM:
// its dependencies' initialization alone costs a process about 12 MiB and
// 27 ms of CPU (gopacket's layer tables), which a VM without a user
// network should not pay.
package gvnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/containers/gvisor-tap-vsock/pkg/services/dhcp"
	"github.com/containers/gvisor-tap-vsock/pkg/services/dns"
	"github.com/containers/gvisor-tap-vsock/pkg/services/forwarder"
	"github.com/containers/gvisor-tap-vsock/pkg/tap"
	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"github.com/sirupsen/logrus"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/vesselvm/vessel/devices/usernet"
)

const (
	gatewayMAC = "5a:94:ef:e4:0c:dd"
	dnsZone    = "vessel.internal."
	nic        = tcpip.NICID(1)
)

// Port is a published port: host connections accepted on Listener go to
// GuestPort.
type Port struct {
	Listener  net.Listener
	GuestPort uint16
}

// Options configure a virtual network.
type Options struct {
	// MAC is the guest's address, which DHCP gives usernet.GuestIP.
	MAC net.HardwareAddr
	// HostLoopback makes the host's 127.0.0.1 reachable at
	// usernet.HostIP. Without it, the guest reaches no host loopback
	// address at all.
	HostLoopback bool
}

// Switch is a running virtual network for one guest.
type Switch struct {
	stack  *stack.Stack
	sw     *tap.Switch
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New makes the virtual network for a guest. It is gvisor-tap-vsock's
// virtualnetwork.New, put together here from the same parts so that the
// TCP and UDP forwarders only see destinations Reachable allows.
func New(o Options) (*Switch, error) {
	// gvisor-tap-vsock logs through logrus' global logger: the guest's
	// network failing shows in the guest, not on vessel's stderr.
	logrus.SetOutput(io.Discard)
	nat := map[tcpip.Address]tcpip.Address{}
	if o.HostLoopback {
		nat[addr4(usernet.HostIP)] = addr4("127.0.0.1")
	}
	cfg := &types.Configuration{
		MTU:               usernet.MTU,
		Subnet:            usernet.Subnet,
		GatewayIP:         usernet.GatewayIP,
		GatewayMacAddress: gatewayMAC,
		DHCPStaticLeases:  map[string]string{usernet.GuestIP: o.MAC.String()},
		DNS: []types.Zone{{
			Name: dnsZone,
			Records: []types.Record{
				{Name: "gateway", IP: net.ParseIP(usernet.GatewayIP)},
				{Name: "host", IP: net.ParseIP(usernet.HostIP)},
			},
		}},
	}
	_, subnet, err := net.ParseCIDR(cfg.Subnet)
	if err != nil {
		return nil, fmt.Errorf("usernet: subnet: %w", err)
	}
	pool := tap.NewIPPool(subnet)
	pool.Reserve(net.ParseIP(cfg.GatewayIP), cfg.GatewayMacAddress)
	pool.Reserve(net.ParseIP(usernet.GuestIP), o.MAC.String())

	// HostIP answers ARP and has its name either way: without
	// HostLoopback a connection there is refused at once (Reachable)
	// rather than left to time out.
	ep, err := tap.NewLinkEndpoint(false, usernet.MTU, gatewayMAC, usernet.GatewayIP, []string{usernet.HostIP})
	if err != nil {
		return nil, fmt.Errorf("usernet: %w", err)
	}
	sw := tap.NewSwitch(false)
	ep.Connect(sw)
	sw.Connect(ep)

	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	if err := s.CreateNIC(nic, ep); err != nil {
		return nil, fmt.Errorf("usernet: NIC: %s", err)
	}
	gw := addr4(usernet.GatewayIP)
	if err := s.AddProtocolAddress(nic, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: gw.WithPrefix()}, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("usernet: gateway address: %s", err)
	}
	// Spoofing and promiscuous mode: the gateway takes the guest's
	// packets for any address, to NAT them onto host sockets.
	s.SetSpoofing(nic, true)
	s.SetPromiscuousMode(nic, true)
	route, err := tcpip.NewSubnet(tcpip.AddrFromSlice(subnet.IP.To4()), tcpip.MaskFromBytes(subnet.Mask))
	if err != nil {
		return nil, fmt.Errorf("usernet: subnet: %w", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: route, NIC: nic}})

	var natMu sync.Mutex
	tcpF := forwarder.TCP(s, nat, &natMu, false)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, guard(o.HostLoopback, tcpF.HandlePacket))
	udpF := forwarder.UDP(s, nat, &natMu, false)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, guard(o.HostLoopback, udpF.HandlePacket))

	if err := serveDNS(s, gw, cfg.DNS); err != nil {
		return nil, err
	}
	d, err := dhcp.New(cfg, s, pool)
	if err != nil {
		return nil, fmt.Errorf("usernet: DHCP: %w", err)
	}
	go d.Serve()

	sv := &Switch{stack: s, sw: sw}
	sv.ctx, sv.cancel = context.WithCancel(context.Background())
	return sv, nil
}

// serveDNS starts the gateway's DNS server, on UDP and TCP port 53.
func serveDNS(s *stack.Stack, gw tcpip.Address, zones []types.Zone) error {
	at := tcpip.FullAddress{NIC: nic, Addr: gw, Port: 53}
	uc, err := gonet.DialUDP(s, &at, nil, ipv4.ProtocolNumber)
	if err != nil {
		return fmt.Errorf("usernet: DNS on UDP: %w", err)
	}
	ln, err := gonet.ListenTCP(s, at, ipv4.ProtocolNumber)
	if err != nil {
		return fmt.Errorf("usernet: DNS on TCP: %w", err)
	}
	srv, err := dns.New(uc, ln, zones)
	if err != nil {
		return fmt.Errorf("usernet: DNS: %w", err)
	}
	go srv.Serve()
	go srv.ServeTCP()
	return nil
}

// guard passes the packets of a new flow on to a forwarder only if the
// flow's destination is Reachable. Refusing one (returning false) makes
// the stack answer as for a closed port: a TCP reset, an ICMP port
// unreachable.
func guard(hostLoopback bool, forward func(stack.TransportEndpointID, *stack.PacketBuffer) bool) func(stack.TransportEndpointID, *stack.PacketBuffer) bool {
	return func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
		if !Reachable(id.LocalAddress, hostLoopback) {
			return false
		}
		return forward(id, pkt)
	}
}

// Reachable reports whether the forwarders may take a guest's flow to
// dst, the destination in the guest's packet, onto a host socket. The
// forwarders dial dst itself on the host (after mapping usernet.HostIP),
// so a guest that writes its own packets could otherwise reach the host's
// loopback-only services at 127.0.0.0/8 or through 0.0.0.0, which
// connects to the host itself. Those, their IPv6 and IPv4-mapped forms,
// and 0.0.0.0/8 are refused; usernet.HostIP, mapped to 127.0.0.1, only
// with hostLoopback. Everything else, the host's own other addresses
// included, is reachable, as from a docker container.
func Reachable(dst tcpip.Address, hostLoopback bool) bool {
	a, ok := netip.AddrFromSlice(dst.AsSlice())
	if !ok {
		return false
	}
	a = a.Unmap()
	switch {
	case a == netip.MustParseAddr(usernet.HostIP):
		return hostLoopback
	case a.IsLoopback(), a.IsUnspecified(), thisNetwork.Contains(a):
		return false
	}
	return true
}

// thisNetwork is 0.0.0.0/8, "this host on this network" (RFC 1122):
// never a destination.
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// addr4 is an IPv4 address constant as gVisor's type.
func addr4(s string) tcpip.Address {
	return tcpip.AddrFrom4(netip.MustParseAddr(s).As4())
}

// Serve forwards the published ports and exchanges frames with the
// device over conn, a SOCK_SEQPACKET socket with one frame per message
// (gvisor-tap-vsock's "bess" protocol), until conn's peer closes. Then it
// stops forwarding, closes the listeners and waits for its goroutines.
// gvisor-tap-vsock's DHCP and DNS servers cannot be stopped: they stay
// idle, bound to nothing on the host, until the process ends.
func (s *Switch) Serve(conn *net.UnixConn, ports []Port) {
	for _, p := range ports {
		s.wg.Add(1)
		go s.publish(p.Listener, p.GuestPort)
	}
	s.sw.Accept(s.ctx, conn, types.BessProtocol)
	s.cancel()
	for _, p := range ports {
		p.Listener.Close()
	}
	s.wg.Wait()
}

// publish forwards the host connections accepted on ln to the guest's
// port, through the virtual network.
func (s *Switch) publish(ln net.Listener, port uint16) {
	defer s.wg.Done()
	target := tcpip.FullAddress{NIC: nic, Addr: addr4(usernet.GuestIP), Port: port}
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or similar: back off.
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.proxy(c, target)
		}()
	}
}

// proxy relays one published connection, each direction until its end,
// passing half-closes on. If nothing listens on the guest port, the host
// connection is closed.
func (s *Switch) proxy(host net.Conn, target tcpip.FullAddress) {
	defer host.Close()
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	guest, err := gonet.DialContextTCP(ctx, s.stack, target, ipv4.ProtocolNumber)
	cancel()
	if err != nil {
		return
	}
	defer guest.Close()
	stop := context.AfterFunc(s.ctx, func() { host.Close(); guest.Close() })
	defer stop()
	done := make(chan struct{}, 2)
	relay := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go relay(guest, host)
	go relay(host, guest)
	<-done
	<-done
}
