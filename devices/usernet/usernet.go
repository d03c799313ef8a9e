// Package usernet is a virtio-net backend that needs neither root nor a
// TAP device: a userspace network (gvisor-tap-vsock's virtual network, on
// gVisor's TCP/IP stack) with a gateway that NATs the guest's connections
// onto the host's own sockets, a DHCP server, a DNS server, and ports
// published from the host to the guest.
//
// The network is 192.168.127.0/24: the gateway (DHCP, DNS) is .1, the
// guest gets .2 by DHCP, and .254 (host.vessel.internal) is the host's
// loopback, so a guest reaches a host service on 127.0.0.1:P at
// host.vessel.internal:P. Frames travel between the device and the
// virtual switch over a SOCK_SEQPACKET socket pair, one frame per
// message (gvisor-tap-vsock's "bess" protocol).
package usernet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"github.com/containers/gvisor-tap-vsock/pkg/virtualnetwork"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Addresses of the user network.
const (
	Subnet    = "192.168.127.0/24"
	GatewayIP = "192.168.127.1"
	GuestIP   = "192.168.127.2"
	// HostIP is the host's loopback as the guest sees it.
	HostIP = "192.168.127.254"
	// HostName resolves to HostIP in the guest.
	HostName = "host.vessel.internal"
	// MTU of the user network.
	MTU = 1500

	gatewayMAC = "5a:94:ef:e4:0c:dd"
	dnsZone    = "vessel.internal."
	// maxFrame bounds one frame from the switch (an MTU-sized Ethernet
	// frame, with room for a VLAN tag).
	maxFrame = MTU + 14 + 4
)

// Publish makes a guest TCP port reachable on the host, as `docker run -p`
// does.
type Publish struct {
	// Host is the host address to listen on, "IP:PORT" (":PORT" for all
	// interfaces).
	Host string
	// GuestPort is the port in the guest the connections go to.
	GuestPort uint16
}

// Config describes a user network for one guest interface.
type Config struct {
	// MAC is the guest interface's address; DHCP gives it GuestIP.
	MAC net.HardwareAddr
	// Publish lists the ports forwarded from the host to the guest.
	Publish []Publish
}

// Network is a running user network with one guest attached. It is a
// virtio.NetBackend.
type Network struct {
	vn     *virtualnetwork.VirtualNetwork
	conn   *net.UnixConn // the device's end of the socket pair
	peer   *net.UnixConn // the switch's end
	lns    []net.Listener
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wbuf   []byte // one frame being sent (WriteFrame runs on one goroutine)
}

var quietLibrary sync.Once

// New starts a user network and listens on the published host ports. An
// address that cannot be listened on is an error.
func New(cfg Config) (*Network, error) {
	if len(cfg.MAC) != 6 {
		return nil, fmt.Errorf("usernet: MAC address %q is not 6 bytes", cfg.MAC)
	}
	// gvisor-tap-vsock logs through logrus' global logger, on stderr:
	// vessel's own messages are the only ones its users should see
	// (a VM's network failing shows in the guest).
	quietLibrary.Do(func() { logrus.SetOutput(io.Discard) })

	n := &Network{wbuf: make([]byte, 0, maxFrame)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			n.Close()
		}
	}()
	for _, p := range cfg.Publish {
		ln, err := net.Listen("tcp", p.Host)
		if err != nil {
			return nil, fmt.Errorf("usernet: publish %s to guest port %d: %w", p.Host, p.GuestPort, err)
		}
		n.lns = append(n.lns, ln)
	}

	vn, err := virtualnetwork.New(&types.Configuration{
		MTU:               MTU,
		Subnet:            Subnet,
		GatewayIP:         GatewayIP,
		GatewayMacAddress: gatewayMAC,
		GatewayVirtualIPs: []string{HostIP},
		NAT:               map[string]string{HostIP: "127.0.0.1"},
		DHCPStaticLeases:  map[string]string{GuestIP: cfg.MAC.String()},
		DNS: []types.Zone{{
			Name: dnsZone,
			Records: []types.Record{
				{Name: "gateway", IP: net.ParseIP(GatewayIP)},
				{Name: "host", IP: net.ParseIP(HostIP)},
			},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("usernet: %w", err)
	}
	n.vn = vn

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("usernet: socketpair: %w", err)
	}
	if n.conn, err = fileConn(fds[0], "usernet device"); err != nil {
		unix.Close(fds[1])
		return nil, err
	}
	if n.peer, err = fileConn(fds[1], "usernet switch"); err != nil {
		return nil, err
	}

	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		// Returns when either end of the pair closes.
		vn.AcceptBess(n.ctx, n.peer)
	}()
	for i, ln := range n.lns {
		n.wg.Add(1)
		go n.publish(ln, cfg.Publish[i].GuestPort)
	}
	ok = true
	return n, nil
}

// fileConn makes a net.UnixConn of a socket descriptor (which it takes
// over).
func fileConn(fd int, name string) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close() // FileConn works on its own duplicate
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("usernet: %s socket: %w", name, err)
	}
	return c.(*net.UnixConn), nil
}

// publish forwards the host connections accepted on ln to the guest's
// port, through the virtual network.
func (n *Network) publish(ln net.Listener, port uint16) {
	defer n.wg.Done()
	target := net.JoinHostPort(GuestIP, fmt.Sprint(port))
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or similar: back off.
			select {
			case <-n.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.proxy(c, target)
		}()
	}
}

// proxy relays one published connection, each direction until its end,
// passing half-closes on. If nothing listens on the guest port, the host
// connection is closed.
func (n *Network) proxy(host net.Conn, target string) {
	defer host.Close()
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	guest, err := n.vn.DialContextTCP(ctx, target)
	cancel()
	if err != nil {
		return
	}
	defer guest.Close()
	stop := context.AfterFunc(n.ctx, func() { host.Close(); guest.Close() })
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

// Addrs returns the host addresses the published ports listen on, in the
// order of Config.Publish (useful with port 0).
func (n *Network) Addrs() []net.Addr {
	var a []net.Addr
	for _, ln := range n.lns {
		a = append(a, ln.Addr())
	}
	return a
}

// VnetHdr implements virtio.NetBackend: frames are bare Ethernet.
func (n *Network) VnetHdr() bool { return false }

// SetOffloads implements virtio.NetBackend; no offloads are offered.
func (n *Network) SetOffloads(uint64) error { return nil }

// ReadFrame implements virtio.NetBackend: one message is one frame.
func (n *Network) ReadFrame(b []byte) (int, error) { return n.conn.Read(b) }

// WriteFrame implements virtio.NetBackend. A frame larger than the
// network's MTU is dropped (the guest learns the MTU by DHCP).
func (n *Network) WriteFrame(bufs [][]byte) error {
	b := n.wbuf[:0]
	for _, p := range bufs {
		if len(b)+len(p) > maxFrame {
			return fmt.Errorf("usernet: frame larger than %d bytes", maxFrame)
		}
		b = append(b, p...)
	}
	_, err := n.conn.Write(b)
	return err
}

// SetDeadline implements virtio.NetBackend.
func (n *Network) SetDeadline(t time.Time) error { return n.conn.SetDeadline(t) }

// Close stops the network: the published ports stop listening, their
// connections and the switch end, and Close waits for its goroutines.
// gvisor-tap-vsock's DHCP and DNS servers have no way to stop; they stay
// idle, bound to nothing on the host.
func (n *Network) Close() error {
	n.cancel()
	for _, ln := range n.lns {
		ln.Close()
	}
	if n.conn != nil {
		n.conn.Close()
	}
	if n.peer != nil {
		n.peer.Close()
	}
	n.wg.Wait()
	return nil
}
