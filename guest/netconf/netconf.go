// Package netconf configures the guest's network interfaces from the
// host's description of them (guest/cmdline's Net): MTU, link state,
// addresses, routes and name servers, or DHCP. The guest init
// (guest/vesselinit) applies the kernel command line's list at boot; the
// agent (guest/vesselagent) applies agentproto.Create's list in a VM
// restored from a template, whose interfaces were never brought up.
package netconf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/guest/cmdline"
)

// LinkWait bounds ConfigureLink's wait for an interface to appear (and
// a DHCP client's for it to come up). The DHCP server of vessel's user
// network runs in the VMM and answers at once, but the test platform is
// emulated and slow: attempts are seconds long.
const LinkWait = 2 * time.Second

// DHCP bounds.
const (
	dhcpTimeout  = 4 * time.Second // one DHCP attempt
	dhcpAttempts = 3
)

// ResolvConf is the file ConfigureLink writes an interface's name
// servers to.
const ResolvConf = "/etc/resolv.conf"

// ErrNoLink is returned (wrapped) by LinkByMAC when no interface has the
// address it looks for.
var ErrNoLink = errors.New("netconf: no interface has this address")

// ConfigureLink configures the interface whose hardware address is n.MAC,
// waiting up to LinkWait for it to appear: its MTU (unless 0), up, then
// either DHCP (n.DHCP(); u-root's client logs through the standard
// logger, which the caller may discard) or n's static addresses (IPv6
// ones without duplicate address detection), its routes in LinkRoutes'
// order, and its name servers in ResolvConf. Addresses and routes are
// replaced, so configuring a link twice is harmless. An error names the
// interface (its address, if it was not found) and the step that failed.
func ConfigureLink(n cmdline.Net) error {
	link, err := LinkByMAC(n.MAC, LinkWait)
	if err != nil {
		return err
	}
	name := link.Attrs().Name
	if n.MTU != 0 {
		if err := netlink.LinkSetMTU(link, n.MTU); err != nil {
			return fmt.Errorf("netconf: %s: set MTU %d: %w", name, n.MTU, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("netconf: %s: set up: %w", name, err)
	}
	if n.DHCP() {
		if err := dhcp(link); err != nil {
			return fmt.Errorf("netconf: %s: dhcp: %w", name, err)
		}
		return nil
	}
	var addrs []string
	if n.Addr != "" {
		addrs = append(addrs, n.Addr)
	}
	for _, a := range append(addrs, n.Addrs...) {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return fmt.Errorf("netconf: %s: address %q: %w", name, a, err)
		}
		if addr.IP.To4() == nil {
			// The host checked the address in its own namespace: no
			// duplicate address detection (it holds the address
			// tentative, unusable, for a second or more).
			addr.Flags |= unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("netconf: %s: add address %s: %w", name, a, err)
		}
	}
	routes, err := linkRoutes(link.Attrs().Index, n)
	if err != nil {
		return fmt.Errorf("netconf: %s: %w", name, err)
	}
	for _, r := range routes {
		if err := netlink.RouteReplace(&r); err != nil {
			return fmt.Errorf("netconf: %s: route to %s: %w", name, routeDst(r), err)
		}
	}
	if len(n.DNS) > 0 {
		if err := os.WriteFile(ResolvConf, []byte(resolvConfText(n.DNS)), 0o644); err != nil {
			return fmt.Errorf("netconf: %s: name servers: %w", name, err)
		}
	}
	return nil
}

// routeDst names a route's destination in an error: its prefix, or
// "default" for the default route.
func routeDst(r netlink.Route) string {
	if r.Dst == nil {
		return "default"
	}
	return r.Dst.String()
}

// LinkRoutes returns n's routes through the interface with index index,
// in the order they can be added: those on the link (a gateway may be
// reachable only through one, as with Calico's 169.254.1.1) before those
// via a gateway, the default route (n.Gateway) last. An unparsable
// destination or gateway is an error.
func LinkRoutes(index int, n cmdline.Net) ([]netlink.Route, error) {
	routes, err := linkRoutes(index, n)
	if err != nil {
		return nil, fmt.Errorf("netconf: %w", err)
	}
	return routes, nil
}

// linkRoutes is LinkRoutes without the package's prefix on its errors.
func linkRoutes(index int, n cmdline.Net) ([]netlink.Route, error) {
	var direct, via []netlink.Route
	for _, r := range n.Routes {
		_, dst, err := net.ParseCIDR(r.Dst)
		if err != nil {
			return nil, fmt.Errorf("route to %q: %w", r.Dst, err)
		}
		if r.Gateway == "" {
			direct = append(direct, netlink.Route{LinkIndex: index, Dst: dst, Scope: netlink.SCOPE_LINK})
			continue
		}
		gw := net.ParseIP(r.Gateway)
		if gw == nil {
			return nil, fmt.Errorf("route to %s: gateway %q", r.Dst, r.Gateway)
		}
		via = append(via, netlink.Route{LinkIndex: index, Dst: dst, Gw: gw})
	}
	routes := append(direct, via...)
	if n.Gateway != "" {
		gw := net.ParseIP(n.Gateway)
		if gw == nil {
			return nil, fmt.Errorf("default route: gateway %q", n.Gateway)
		}
		routes = append(routes, netlink.Route{LinkIndex: index, Gw: gw})
	}
	return routes, nil
}

// LinkByMAC finds the interface with hardware address mac, waiting up to
// wait for it to appear. Without one by then, the error wraps ErrNoLink.
func LinkByMAC(mac string, wait time.Duration) (netlink.Link, error) {
	want, err := net.ParseMAC(mac)
	if err != nil {
		return nil, fmt.Errorf("netconf: hardware address %q: %w", mac, err)
	}
	deadline := time.Now().Add(wait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("netconf: list interfaces: %w", err)
		}
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() == want.String() {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: %s, after %v", ErrNoLink, want, wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dhcp asks for a DHCPv4 lease on link and applies it: address, routes,
// and resolv.conf (u-root's client writes it from the lease).
func dhcp(link netlink.Link) error {
	ctx, cancel := context.WithTimeout(context.Background(), dhcpTimeout*dhcpAttempts+LinkWait)
	defer cancel()
	cfg := dhclient.Config{Timeout: dhcpTimeout, Retries: dhcpAttempts}
	var lastErr error
	for r := range dhclient.SendRequests(ctx, []netlink.Link{link}, true, false, cfg, LinkWait) {
		if r.Err != nil {
			lastErr = r.Err
			continue
		}
		return r.Lease.Configure()
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("the link did not come up within %v", LinkWait)
	}
	return fmt.Errorf("no lease after %d attempts: %w", dhcpAttempts, lastErr)
}

// resolvConfText renders resolv.conf's name server lines.
func resolvConfText(servers []string) string {
	var b strings.Builder
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	return b.String()
}
