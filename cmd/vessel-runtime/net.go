package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/vmm"
)

// The container's network. The VMM process lives in the container's
// network namespace: a new one, or the one at the spec's path (docker
// and CNI set it up: docker in a prestart hook that finds it through the
// state's PID, CNI before create). Once the hooks have run, every
// interface there but lo is handed to the VM as Kata Containers'
// tcfilter mode does: a TAP device per interface, and tc redirects
// between the two in both directions, so that what reaches the
// interface reaches the guest and the other way round; the guest's
// interface gets the interface's MAC address, addresses (IPv4 and
// IPv6), routes and MTU. Then docker's published ports, podman's port mappings
// and Kubernetes pod IPs work unchanged.

// maxNets bounds the interfaces handed to a VM (virtio devices).
const maxNets = 4

// ifaceLink is one interface of the namespace and its guest settings.
type ifaceLink struct {
	link  netlink.Link
	tap   string
	guest cmdline.Net
}

// startInNetns starts cmd in the network namespace ns (a descriptor of
// it, opened once by create: a path opened again could name another
// namespace by then). fork takes the calling thread's namespaces, so it
// runs on a thread of its own that joins the namespace and is never
// given back to the runtime.
func startInNetns(cmd interface{ Start() error }, ns *os.File) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread ends with this goroutine.
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("network namespace %s: setns: %w", ns.Name(), err)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}

// openNetns opens the network namespace at the spec's path, once: the
// checks (hostNetns) and the VMM process's start (startInNetns) both use
// this descriptor.
func openNetns(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("network namespace path %q: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil || st.Type != unix.NSFS_MAGIC {
		f.Close()
		return nil, fmt.Errorf("network namespace path %q: not a namespace", path)
	}
	if t, err := unix.IoctlRetInt(int(f.Fd()), nsGetNsType); err != nil || t != unix.CLONE_NEWNET {
		f.Close()
		return nil, fmt.Errorf("network namespace path %q: not a network namespace", path)
	}
	return f, nil
}

// nsGetNsType is NS_GET_NSTYPE (<linux/nsfs.h>, _IO(0xb7, 0x3)): a
// namespace descriptor's kind, as its CLONE_NEW* flag.
const nsGetNsType = 0xb703

// findInterfaces reads the interfaces of the VMM process's network
// namespace that the VM takes over: every one but loopback (and TAP
// devices, and those without an Ethernet address) that has an address
// the guest can take over, in index order.
func findInterfaces() ([]*ifaceLink, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("network: list interfaces: %w", err)
	}
	sort.Slice(links, func(i, j int) bool { return links[i].Attrs().Index < links[j].Attrs().Index })
	var out []*ifaceLink
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || len(a.HardwareAddr) != 6 || l.Type() == "tuntap" {
			continue
		}
		g, err := guestNet(l)
		if err != nil {
			return nil, err
		}
		if g.Addr == "" && len(g.Addrs) == 0 {
			continue
		}
		if len(out) == maxNets {
			return nil, fmt.Errorf("network: more than %d interfaces in the container's network namespace", maxNets)
		}
		out = append(out, &ifaceLink{link: l, tap: fmt.Sprintf("vtap%d", len(out)), guest: g})
	}
	return out, nil
}

// guestNet reads what the guest init is to configure for l: its MAC,
// MTU, addresses (the first IPv4 one as Addr; link-local ones left out,
// the guest derives them from the same MAC) and the routes through it
// (but those the kernel made for the addresses): the first IPv4
// default route as Gateway, the others, link routes such as Calico's
// to 169.254.1.1 and IPv6 ones included, as Routes. It is static: no
// DHCP in the guest.
func guestNet(l netlink.Link) (cmdline.Net, error) {
	a := l.Attrs()
	g := cmdline.Net{MAC: a.HardwareAddr.String(), MTU: a.MTU, Static: true}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return g, fmt.Errorf("network: addresses of %s: %w", a.Name, err)
	}
	for _, ad := range addrs {
		if ad.IP.IsLinkLocalUnicast() || ad.Scope == unix.RT_SCOPE_LINK || ad.Scope == unix.RT_SCOPE_HOST {
			continue
		}
		if g.Addr == "" && ad.IP.To4() != nil {
			g.Addr = ad.IPNet.String()
		} else {
			g.Addrs = append(g.Addrs, ad.IPNet.String())
		}
	}
	routes, err := netlink.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		return g, fmt.Errorf("network: routes of %s: %w", a.Name, err)
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST || len(r.MultiPath) > 0 {
			continue
		}
		gw := ""
		if r.Gw != nil {
			gw = r.Gw.String()
		}
		if r.Dst != nil && !isZeroMask(r.Dst.Mask) {
			g.Routes = append(g.Routes, cmdline.Route{Dst: r.Dst.String(), Gateway: gw})
			continue
		}
		if r.Gw != nil && r.Gw.To4() != nil && g.Gateway == "" {
			g.Gateway = gw
			continue
		}
		dst := "0.0.0.0/0"
		if r.Family == unix.AF_INET6 {
			dst = "::/0"
		}
		g.Routes = append(g.Routes, cmdline.Route{Dst: dst, Gateway: gw})
	}
	if len(g.Addrs) > cmdline.MaxAddrs || len(g.Routes) > cmdline.MaxRoutes {
		return g, fmt.Errorf("network: %s has %d addresses and %d routes, more than a VM takes (%d, %d)",
			a.Name, len(g.Addrs)+1, len(g.Routes), cmdline.MaxAddrs+1, cmdline.MaxRoutes)
	}
	if err := g.Validate(); err != nil {
		return g, fmt.Errorf("network: %s: %w", a.Name, err)
	}
	return g, nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

// vmNets are the VM's network devices for the interfaces: a TAP each,
// with the interface's MAC.
func vmNets(ifs []*ifaceLink) []vmm.Net {
	var nets []vmm.Net
	for _, i := range ifs {
		nets = append(nets, vmm.Net{MAC: i.link.Attrs().HardwareAddr, Tap: i.tap})
	}
	return nets
}

// guestNets are the guest init's settings for the interfaces.
func guestNets(ifs []*ifaceLink) []cmdline.Net {
	var g []cmdline.Net
	for _, i := range ifs {
		g = append(g, i.guest)
	}
	return g
}

// ingressHandle is the ingress qdisc's handle (ffff:).
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// redirect joins each interface and its TAP (which the VM has opened by
// now): both up, an ingress qdisc on each, and a filter on each that
// sends every frame out of the other. It returns an undo for what it
// added to the interfaces (the TAPs go with the VM).
func redirect(ifs []*ifaceLink) (undo func(), err error) {
	var added []netlink.Link
	undo = func() {
		for _, l := range added {
			netlink.QdiscDel(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}})
		}
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()
	for _, i := range ifs {
		tap, err := netlink.LinkByName(i.tap)
		if err != nil {
			return undo, fmt.Errorf("network: %s: %w", i.tap, err)
		}
		for _, l := range []netlink.Link{tap, i.link} {
			if err := netlink.LinkSetUp(l); err != nil {
				return undo, fmt.Errorf("network: set %s up: %w", l.Attrs().Name, err)
			}
			q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
			if err := netlink.QdiscAdd(q); err != nil {
				if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT) {
					return undo, fmt.Errorf("network: ingress qdisc on %s: %w (the host kernel needs CONFIG_NET_SCH_INGRESS, CONFIG_NET_CLS_U32 and CONFIG_NET_ACT_MIRRED)", l.Attrs().Name, err)
				}
				return undo, fmt.Errorf("network: ingress qdisc on %s: %w", l.Attrs().Name, err)
			}
			added = append(added, l)
		}
		for _, pair := range [][2]netlink.Link{{i.link, tap}, {tap, i.link}} {
			f := &netlink.U32{
				FilterAttrs: netlink.FilterAttrs{LinkIndex: pair[0].Attrs().Index, Parent: ingressHandle, Priority: 1, Protocol: unix.ETH_P_ALL},
				Actions: []netlink.Action{&netlink.MirredAction{
					ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
					MirredAction: netlink.TCA_EGRESS_REDIR,
					Ifindex:      pair[1].Attrs().Index,
				}},
			}
			if err := netlink.FilterAdd(f); err != nil {
				return undo, fmt.Errorf("network: redirect %s to %s: %w", pair[0].Attrs().Name, pair[1].Attrs().Name, err)
			}
		}
	}
	return undo, nil
}

// hostNetns reports whether the network namespace ns is the host's:
// init's, or the one create runs in (the caller's). Only create asks:
// the VMM process runs in the container's namespace by then. The VM
// would take over every interface of the namespace it is given, so a
// spec naming the host's (/proc/1/ns/net, docker's --network
// container: of a host-network container) is refused, as Kata does.
func hostNetns(ns *os.File) bool {
	var st unix.Stat_t
	if unix.Fstat(int(ns.Fd()), &st) != nil {
		return false
	}
	for _, host := range []string{"/proc/1/ns/net", "/proc/self/ns/net"} {
		var h unix.Stat_t
		if unix.Stat(host, &h) == nil && h.Dev == st.Dev && h.Ino == st.Ino {
			return true
		}
	}
	return false
}
