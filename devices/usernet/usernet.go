// Package usernet is a virtio-net backend that needs neither root nor a
// TAP device: a userspace network (gvisor-tap-vsock's virtual network, on
// gVisor's TCP/IP stack) with a gateway that NATs the guest's connections
// onto the host's own sockets, a DHCP server, a DNS server, and ports
// published from the host to the guest.
//
// The network runs in a helper process, vessel-usernet (package gvnet
// has its code), as slirp4netns and passt do for other VMMs and
// containers: gVisor's stack stays out of the VMM, which pays for it
// only when a VM has a user network, and a fault in it cannot take the
// VMM's memory with it.
//
// The network is 192.168.127.0/24: the gateway (DHCP, DNS) is .1, the
// guest gets .2 by DHCP, and .254 (host.vessel.internal) is the host's
// loopback if Config.HostLoopback asks for it, so a guest reaches a host
// service on 127.0.0.1:P at host.vessel.internal:P; otherwise no host
// loopback address is reachable, as from a docker container. Frames travel between the device and the
// virtual switch over a SOCK_SEQPACKET socket pair, one frame per
// message (gvisor-tap-vsock's "bess" protocol), whose other end is the
// helper's.
package usernet

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vesselvm/vessel/devices/virtio"
	"github.com/vesselvm/vessel/internal/helperproc"
	"github.com/vesselvm/vessel/internal/seccomp"
)

// Addresses of the user network.
const (
	Subnet    = "192.168.127.0/24"
	GatewayIP = "192.168.127.1"
	GuestIP   = "192.168.127.2"
	// HostIP is the host's loopback as the guest sees it, with
	// Config.HostLoopback.
	HostIP = "192.168.127.254"
	// HostName resolves to HostIP in the guest.
	HostName = "host.vessel.internal"
	// MTU of the user network.
	MTU = 1500

	// maxFrame bounds one frame from the switch (an MTU-sized Ethernet
	// frame, with room for a VLAN tag).
	maxFrame = MTU + ethHeader + 4
	// ethHeader is the size of an Ethernet header: destination and
	// source addresses, type.
	ethHeader = 14
)

// publishAddr parses a Publish's Host, "IP:PORT" or ":PORT": an IP
// address, never a name, so the VMM resolves nothing (and links none of
// net's resolver).
func publishAddr(host string) (*net.TCPAddr, error) {
	h, port, err := net.SplitHostPort(host)
	if err != nil {
		return nil, err
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("port %q: want 0 to 65535", port)
	}
	addr := &net.TCPAddr{Port: int(n)}
	if h != "" {
		ip, err := netip.ParseAddr(h)
		if err != nil {
			return nil, fmt.Errorf("host %q is not an IP address", h)
		}
		addr.IP, addr.Zone = ip.AsSlice(), ip.Zone()
	}
	return addr, nil
}

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
	// FormerMAC, if set, is an address the guest used before it takes
	// MAC: a VM restored from a snapshot with a new MAC sends from the
	// snapshot's until its agent moves the interface (a template's
	// clone, see vmm.RestoreOptions.Nets). Its frames are dropped
	// without a report (virtio.ErrNetDown), so the network never learns
	// that address; the guest retransmits from MAC.
	FormerMAC net.HardwareAddr
	// Publish lists the ports forwarded from the host to the guest.
	Publish []Publish
	// HostLoopback makes the host's 127.0.0.1 reachable at HostIP,
	// TCP and UDP: every loopback-only service of the host, those of
	// other users and VMs included. Off, the guest reaches no host
	// loopback address.
	HostLoopback bool
	// Helper is the vessel-usernet executable; empty means HelperName
	// next to the running executable, else on $PATH.
	Helper string
	// Credential, if set, is the user the helper runs as, with no
	// capabilities: a jailed VMM's, so that a helper taken over through
	// its network stack has no more than the VMM. The helper is then
	// started from a descriptor of its executable, which that user may
	// not reach by path.
	Credential *syscall.Credential
}

// HelperName is the helper's executable name.
const HelperName = "vessel-usernet"

// Network is a running user network with one guest attached. It is a
// virtio.NetBackend.
type Network struct {
	conn   *net.UnixConn // the device's end of the socket pair
	mac    net.HardwareAddr
	former net.HardwareAddr // Config.FormerMAC
	addrs  []net.Addr
	helper *exec.Cmd
	exited chan struct{} // closed when the helper was waited for
	wbuf   []byte        // one frame being sent (WriteFrame runs on one goroutine)

	// The helper's readiness (Ready): its pipe, read once.
	readyOnce sync.Once
	readyR    *os.File
	readyErr  error
}

// Start starts a user network: it listens on the published host ports and
// starts the helper with them, without waiting for the helper to be ready
// (its start-up, a process and a network stack, can overlap the caller's
// own work). An address that cannot be listened on, or a helper that
// cannot be started, is an error; Ready says whether the helper came up.
func Start(cfg Config) (_ *Network, err error) {
	if len(cfg.MAC) != 6 {
		return nil, fmt.Errorf("usernet: MAC address %q is not 6 bytes", cfg.MAC)
	}
	helper, err := helperproc.Find(HelperName, cfg.Helper)
	if err != nil {
		return nil, fmt.Errorf("usernet: %w", err)
	}
	// Everything the helper gets is closed here once it has its copy.
	var child []*os.File
	defer func() {
		for _, f := range child {
			f.Close()
		}
	}()
	n := &Network{mac: cfg.MAC, former: cfg.FormerMAC, exited: make(chan struct{}), wbuf: make([]byte, 0, maxFrame)}
	defer func() {
		if err != nil && n.conn != nil {
			n.conn.Close()
		}
	}()
	conn, theirs, err := helperproc.Pair("usernet switch")
	if err != nil {
		return nil, fmt.Errorf("usernet: %w", err)
	}
	n.conn = conn
	child = append(child, theirs)
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("usernet: %w", err)
	}
	defer func() {
		if err != nil {
			readyR.Close()
		}
	}()
	child = append(child, readyW)
	var ports []string
	for _, p := range cfg.Publish {
		addr, err := publishAddr(p.Host)
		if err != nil {
			return nil, fmt.Errorf("usernet: publish %s to guest port %d: %w", p.Host, p.GuestPort, err)
		}
		ln, err := net.ListenTCP("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("usernet: publish %s to guest port %d: %w", p.Host, p.GuestPort, err)
		}
		f, err := ln.File()
		n.addrs = append(n.addrs, ln.Addr())
		ln.Close() // f is a duplicate: the socket stays open
		if err != nil {
			return nil, fmt.Errorf("usernet: publish %s: %w", p.Host, err)
		}
		child = append(child, f)
		ports = append(ports, strconv.Itoa(int(p.GuestPort)))
	}

	cmd, err := helperproc.Start(helperproc.Spec{Path: helper,
		Args: []string{"-mac", cfg.MAC.String(), "-ports", strings.Join(ports, ","),
			"-host-loopback=" + strconv.FormatBool(cfg.HostLoopback), "-stderr-relayed"},
		// descriptors 3 (switch), 4 (ready), 5... (ports)
		Files: child, Credential: cfg.Credential, Profile: seccomp.Usernet})
	child = nil // Start closed them
	if err != nil {
		return nil, fmt.Errorf("usernet: %w", err)
	}
	n.helper = cmd
	go func() {
		cmd.Wait()
		close(n.exited)
	}()
	n.readyR = readyR
	return n, nil
}

// Ready waits until the helper says it is ready, and returns why not if
// it failed or did not within helperproc.StartTimeout; later calls return the same.
// A Network must be ready before the guest's frames go through it.
func (n *Network) Ready() error {
	n.readyOnce.Do(func() {
		if err := helperproc.WaitReady(n.readyR, n.helper, n.exited); err != nil {
			n.readyErr = fmt.Errorf("usernet: %w", err)
		}
		n.readyR.Close()
	})
	return n.readyErr
}

// Addrs returns the host addresses the published ports listen on, in the
// order of Config.Publish (useful with port 0).
func (n *Network) Addrs() []net.Addr { return n.addrs }

// VnetHdr implements virtio.NetBackend: frames are bare Ethernet.
func (n *Network) VnetHdr() bool { return false }

// SetOffloads implements virtio.NetBackend; no offloads are offered.
func (n *Network) SetOffloads(uint64) error { return nil }

// ReadFrame implements virtio.NetBackend: one message is one frame.
func (n *Network) ReadFrame(b []byte) (int, error) { return n.conn.Read(b) }

// TryReadFrame implements virtio.NetTryReader.
func (n *Network) TryReadFrame(b []byte) (int, bool, error) { return virtio.TryRead(n.conn, b) }

// WriteFrame implements virtio.NetBackend. A frame larger than the
// network's MTU is dropped (the guest learns the MTU by DHCP), and so is
// one the switch must not see (checkFrame).
func (n *Network) WriteFrame(bufs [][]byte) error {
	b := n.wbuf[:0]
	for _, p := range bufs {
		if len(b)+len(p) > maxFrame {
			return fmt.Errorf("usernet: frame larger than %d bytes", maxFrame)
		}
		b = append(b, p...)
	}
	if len(n.former) == 6 && len(b) >= ethHeader && bytes.Equal(b[6:12], n.former) {
		return fmt.Errorf("usernet: a frame from the guest's former address %s: %w", n.former, virtio.ErrNetDown)
	}
	if err := checkFrame(b, n.mac); err != nil {
		return err
	}
	_, err := n.conn.Write(b)
	return err
}

// checkFrame refuses a guest's frame that gvisor-tap-vsock's switch
// must not see: one shorter than an Ethernet header (the switch reads
// its addresses unchecked and its process panics; an empty message
// reads as the end of the stream) or one whose source address is not
// the guest's mac (the switch remembers every source address it sees,
// without bound).
func checkFrame(b []byte, mac net.HardwareAddr) error {
	if len(b) < ethHeader {
		return fmt.Errorf("usernet: a %d-byte frame, shorter than an Ethernet header", len(b))
	}
	if !bytes.Equal(b[6:12], mac) {
		return fmt.Errorf("usernet: a frame from %s, not the guest's address %s", net.HardwareAddr(b[6:12]), mac)
	}
	return nil
}

// SetDeadline implements virtio.NetBackend.
func (n *Network) SetDeadline(t time.Time) error { return n.conn.SetDeadline(t) }

// helperStop bounds how long Close waits for the helper to see its end
// of the pair close before killing it.
const helperStop = 5 * time.Second

// Close stops the network: closing the device's end tells the helper to
// stop, and Close waits until it has exited, so the published ports no
// longer listen when it returns.
func (n *Network) Close() error {
	n.conn.Close()
	n.readyOnce.Do(func() {
		n.readyErr = errors.New("usernet: closed before it was ready")
		n.readyR.Close()
	})
	if n.helper == nil {
		return nil
	}
	select {
	case <-n.exited:
	case <-time.After(helperStop):
		n.helper.Process.Kill()
		<-n.exited
	}
	return nil
}
