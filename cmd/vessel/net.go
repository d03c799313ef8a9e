package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vesselvm/vessel/devices/usernet"
	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/vmm"
)

// netHelp documents --net.
const netHelp = `attach a network interface (repeatable; eth0 onwards):
  user[,publish=[HOSTIP:]HOSTPORT:GUESTPORT]...[,host-loopback][,mac=MAC]
      userspace NAT network, no privileges needed: the guest is
      ` + usernet.GuestIP + ` (set at boot, no DHCP wait); publish forwards a host TCP port to the guest;
      host-loopback makes the host's 127.0.0.1 reachable at ` + usernet.HostName + `
      (` + usernet.HostIP + `), which is refused without it
  tap=NAME[,ip=ADDR/PREFIX][,gw=IP][,dns=IP]...[,mac=MAC]
      host TAP device with checksum and TSO offloads; the guest takes
      ip/gw/dns as a static configuration, or asks DHCP without ip=`

// parseNet parses one --net value into the device and what the guest init
// configures on it.
func parseNet(s string) (vmm.Net, cmdline.Net, error) {
	parts := strings.Split(s, ",")
	var n vmm.Net
	var g cmdline.Net
	kind, name, _ := strings.Cut(parts[0], "=")
	switch kind {
	case "user":
		if name != "" {
			return n, g, fmt.Errorf("user takes no value (got %q)", parts[0])
		}
		n.User = &vmm.UserNet{}
	case "tap":
		if name == "" {
			return n, g, errors.New("tap needs a device name: tap=NAME")
		}
		n.Tap = name
	default:
		return n, g, fmt.Errorf("unknown network %q (want user or tap=NAME)", parts[0])
	}
	for _, opt := range parts[1:] {
		if opt == hostLoopback && n.User != nil {
			n.User.HostLoopback = true
			continue
		}
		k, val, ok := strings.Cut(opt, "=")
		if !ok || val == "" {
			return n, g, fmt.Errorf("option %q: want KEY=VALUE", opt)
		}
		switch {
		case k == "mac":
			mac, err := net.ParseMAC(val)
			if err != nil || len(mac) != 6 {
				return n, g, fmt.Errorf("mac %q: want six hex bytes, like 52:54:00:12:34:56", val)
			}
			if mac[0]&1 != 0 {
				return n, g, fmt.Errorf("mac %s is a multicast address", val)
			}
			n.MAC = mac
		case k == "publish" && n.User != nil:
			p, err := parsePublish(val)
			if err != nil {
				return n, g, err
			}
			n.User.Publish = append(n.User.Publish, p)
		case k == "ip" && n.Tap != "":
			pfx, err := netip.ParsePrefix(val)
			if err != nil || !pfx.Addr().Is4() && !pfx.Addr().Is6() {
				return n, g, fmt.Errorf("ip %q: want ADDRESS/PREFIX, like 172.16.0.2/24", val)
			}
			g.Addr = pfx.String()
		case k == "gw" && n.Tap != "":
			a, err := netip.ParseAddr(val)
			if err != nil {
				return n, g, fmt.Errorf("gw %q: not an IP address", val)
			}
			g.Gateway = a.String()
		case k == "dns" && n.Tap != "":
			a, err := netip.ParseAddr(val)
			if err != nil {
				return n, g, fmt.Errorf("dns %q: not an IP address", val)
			}
			g.DNS = append(g.DNS, a.String())
		default:
			return n, g, fmt.Errorf("unknown option %q for %s", opt, kind)
		}
	}
	if g.Addr == "" && (g.Gateway != "" || len(g.DNS) > 0) {
		return n, g, errors.New("gw= and dns= need ip= (without ip= the guest asks DHCP)")
	}
	if n.MAC == nil {
		n.MAC = randomMAC()
	}
	if n.User != nil {
		return n, userGuestNet(n.MAC), nil
	}
	g.MAC = n.MAC.String()
	return n, g, nil
}

// userGuestNet is the guest's side of a user network: the fixed address,
// gateway, name server and MTU usernet's DHCP server would lease it,
// given on the command line so that the guest configures its interface
// at once instead of after a DHCP exchange.
func userGuestNet(mac net.HardwareAddr) cmdline.Net {
	bits := netip.MustParsePrefix(usernet.Subnet).Bits()
	return cmdline.Net{MAC: mac.String(), Addr: fmt.Sprintf("%s/%d", usernet.GuestIP, bits), Gateway: usernet.GatewayIP,
		DNS: []string{usernet.GatewayIP}, MTU: usernet.MTU}
}

// hostLoopback is the user network's option that opens the host's
// loopback to the guest.
const hostLoopback = "host-loopback"

// parseUserNetwork parses `vessel run --network`: user[,host-loopback]
// or none (nil).
func parseUserNetwork(s string) (*vmm.UserNet, error) {
	if s == "none" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if parts[0] != "user" {
		return nil, fmt.Errorf("--network %q: want user[,%s] or none", s, hostLoopback)
	}
	un := &vmm.UserNet{}
	for _, opt := range parts[1:] {
		if opt != hostLoopback {
			return nil, fmt.Errorf("--network %q: unknown option %q (want user[,%s] or none)", s, opt, hostLoopback)
		}
		un.HostLoopback = true
	}
	return un, nil
}

// parsePublish parses [HOSTIP:]HOSTPORT:GUESTPORT[/tcp], like docker's -p.
func parsePublish(s string) (usernet.Publish, error) {
	bad := func(why string) (usernet.Publish, error) {
		return usernet.Publish{}, fmt.Errorf("publish %q: %s (want [HOSTIP:]HOSTPORT:GUESTPORT)", s, why)
	}
	spec, proto, _ := strings.Cut(s, "/")
	if proto != "" && proto != "tcp" {
		return bad("only tcp ports can be published")
	}
	i := strings.LastIndex(spec, ":")
	if i < 0 {
		return bad("no guest port")
	}
	host, guest := spec[:i], spec[i+1:]
	gp, err := strconv.ParseUint(guest, 10, 16)
	if err != nil || gp == 0 {
		return bad("guest port must be 1 to 65535")
	}
	hostIP, hostPort := "", host
	if j := strings.LastIndex(host, ":"); j >= 0 {
		hostIP, hostPort = strings.Trim(host[:j], "[]"), host[j+1:]
		if _, err := netip.ParseAddr(hostIP); err != nil {
			return bad(fmt.Sprintf("host address %q is not an IP address", hostIP))
		}
	}
	hp, err := strconv.ParseUint(hostPort, 10, 16)
	if err != nil || hp == 0 {
		return bad("host port must be 1 to 65535")
	}
	return usernet.Publish{Host: net.JoinHostPort(hostIP, hostPort), GuestPort: uint16(gp)}, nil
}

// randomMAC returns a locally administered unicast address in QEMU's
// 52:54:00 range.
func randomMAC() net.HardwareAddr {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0, 0, 0}
	rand.Read(mac[3:])
	return mac
}
