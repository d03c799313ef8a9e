package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/guest/cmdline"
)

// Network configuration bounds. The DHCP server of vessel's user network
// runs in the VMM and answers at once, but the test platform is emulated
// and slow: attempts are seconds long.
const (
	linkWait     = 2 * time.Second // for the interface to appear
	dhcpTimeout  = 4 * time.Second // one DHCP attempt
	dhcpAttempts = 3
)

const resolvConf = "/etc/resolv.conf"

// configureNet sets up the interfaces the host listed, one after another:
// static addresses, routes and name servers, or DHCP. A failure is
// one line on stderr; the command runs anyway.
func configureNet(nets []cmdline.Net) {
	if len(nets) == 0 {
		return
	}
	// u-root's DHCP client logs every step through the standard logger;
	// the console is the command's output.
	log.SetOutput(io.Discard)
	ensureHosts()
	for _, n := range nets {
		if err := configureLink(n); err != nil {
			fmt.Fprintf(os.Stderr, "vesselinit: net %s: %v\n", n.MAC, err)
		}
	}
}

// configureLink configures one interface.
func configureLink(n cmdline.Net) error {
	link, err := linkByMAC(n.MAC, linkWait)
	if err != nil {
		return err
	}
	name := link.Attrs().Name
	if n.MTU != 0 {
		if err := netlink.LinkSetMTU(link, n.MTU); err != nil {
			return fmt.Errorf("%s: set MTU %d: %w", name, n.MTU, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("%s: set up: %w", name, err)
	}
	if n.DHCP() {
		if err := dhcp(link); err != nil {
			return fmt.Errorf("%s: dhcp: %w", name, err)
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
			return fmt.Errorf("%s: address %q: %w", name, a, err)
		}
		if addr.IP.To4() == nil {
			// The host checked the address in its own namespace: no
			// duplicate address detection (it holds the address
			// tentative, unusable, for a second or more).
			addr.Flags |= unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("%s: add address %s: %w", name, a, err)
		}
	}
	routes, err := linkRoutes(link.Attrs().Index, n)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	for _, r := range routes {
		if err := netlink.RouteReplace(&r); err != nil {
			return fmt.Errorf("%s: route to %s: %w", name, r.Dst, err)
		}
	}
	if len(n.DNS) > 0 {
		if err := os.WriteFile(resolvConf, []byte(resolvConfText(n.DNS)), 0o644); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// linkRoutes returns n's routes in the order they can be added: those
// on the link (a gateway may be reachable only through one, as with
// Calico's 169.254.1.1) before those via a gateway, the default route
// (Gateway) last.
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

// linkByMAC finds the interface with hardware address mac, waiting up to
// wait for it to appear.
func linkByMAC(mac string, wait time.Duration) (netlink.Link, error) {
	want, err := net.ParseMAC(mac)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list interfaces: %w", err)
		}
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() == want.String() {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no interface with this address after %v", wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dhcp asks for a DHCPv4 lease on link and applies it: address, routes,
// and resolv.conf (u-root's client writes it from the lease).
func dhcp(link netlink.Link) error {
	ctx, cancel := context.WithTimeout(context.Background(), dhcpTimeout*dhcpAttempts+linkWait)
	defer cancel()
	cfg := dhclient.Config{Timeout: dhcpTimeout, Retries: dhcpAttempts}
	var lastErr error
	for r := range dhclient.SendRequests(ctx, []netlink.Link{link}, true, false, cfg, linkWait) {
		if r.Err != nil {
			lastErr = r.Err
			continue
		}
		return r.Lease.Configure()
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("the link did not come up within %v", linkWait)
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

// ensureHosts makes sure /etc/hosts names localhost.
func ensureHosts() {
	const path = "/etc/hosts"
	b, err := os.ReadFile(path)
	if err == nil && strings.Contains(string(b), "localhost") {
		return
	}
	os.WriteFile(path, append(b, "127.0.0.1 localhost\n::1 localhost\n"...), 0o644)
}
