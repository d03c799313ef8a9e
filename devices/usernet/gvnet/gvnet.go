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
	"sync"
	"time"

	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"github.com/containers/gvisor-tap-vsock/pkg/virtualnetwork"
	"github.com/sirupsen/logrus"

	"github.com/vesselvm/vessel/devices/usernet"
)

const (
	gatewayMAC = "5a:94:ef:e4:0c:dd"
	dnsZone    = "vessel.internal."
)

// Port is a published port: host connections accepted on Listener go to
// GuestPort.
type Port struct {
	Listener  net.Listener
	GuestPort uint16
}

// Switch is a running virtual network for one guest.
type Switch struct {
	vn     *virtualnetwork.VirtualNetwork
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New makes the virtual network for a guest with address mac, which
// DHCP gives usernet.GuestIP.
func New(mac net.HardwareAddr) (*Switch, error) {
	// gvisor-tap-vsock logs through logrus' global logger: the guest's
	// network failing shows in the guest, not on vessel's stderr.
	logrus.SetOutput(io.Discard)
	vn, err := virtualnetwork.New(&types.Configuration{
		MTU:               usernet.MTU,
		Subnet:            usernet.Subnet,
		GatewayIP:         usernet.GatewayIP,
		GatewayMacAddress: gatewayMAC,
		GatewayVirtualIPs: []string{usernet.HostIP},
		NAT:               map[string]string{usernet.HostIP: "127.0.0.1"},
		DHCPStaticLeases:  map[string]string{usernet.GuestIP: mac.String()},
		DNS: []types.Zone{{
			Name: dnsZone,
			Records: []types.Record{
				{Name: "gateway", IP: net.ParseIP(usernet.GatewayIP)},
				{Name: "host", IP: net.ParseIP(usernet.HostIP)},
			},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("usernet: %w", err)
	}
	s := &Switch{vn: vn}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
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
	s.vn.AcceptBess(s.ctx, conn)
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
	target := net.JoinHostPort(usernet.GuestIP, fmt.Sprint(port))
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
func (s *Switch) proxy(host net.Conn, target string) {
	defer host.Close()
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	guest, err := s.vn.DialContextTCP(ctx, target)
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
