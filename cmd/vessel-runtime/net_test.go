package main

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/devices/tap"
	"github.com/vesselvm/vessel/guest/cmdline"
)

// netnsPair puts the calling goroutine's thread, which it locks for
// good (the thread ends with the test), into a new network namespace,
// the container's, after making another one, the host's, with a veth
// pair between them: eth0 in the container's with 10.200.0.2/24,
// 2001:db8::2/64 and the given MTU, peer0 in the host's with
// 10.200.0.1/24. It returns both namespaces' descriptors; it skips the
// test where namespaces cannot be made.
func netnsPair(t *testing.T, mtu int) (host, ctr *os.File) {
	t.Helper()
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("no network namespace for the test: %v", err)
	}
	host = threadNetns(t)
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	ctr = threadNetns(t)
	setns(t, host)
	must(t, netlink.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}))
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "peer0", MTU: mtu}, PeerName: "eth0"}
	must(t, netlink.LinkAdd(veth))
	eth0, err := netlink.LinkByName("eth0")
	must(t, err)
	must(t, netlink.LinkSetNsFd(eth0, int(ctr.Fd())))
	peer, err := netlink.LinkByName("peer0")
	must(t, err)
	must(t, netlink.AddrAdd(peer, mustAddr(t, "10.200.0.1/24")))
	must(t, netlink.LinkSetUp(peer))
	setns(t, ctr)
	must(t, netlink.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}))
	eth0, err = netlink.LinkByName("eth0")
	must(t, err)
	must(t, netlink.AddrAdd(eth0, mustAddr(t, "10.200.0.2/24")))
	a6 := mustAddr(t, "2001:db8::2/64")
	a6.Flags = unix.IFA_F_NODAD
	must(t, netlink.AddrAdd(eth0, a6))
	must(t, netlink.LinkSetUp(eth0))
	return host, ctr
}

func threadNetns(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func setns(t *testing.T, f *os.File) {
	t.Helper()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mustAddr(t *testing.T, s string) *netlink.Addr {
	t.Helper()
	a, err := netlink.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func mustRoute(t *testing.T, dst, gw string) {
	t.Helper()
	eth0, err := netlink.LinkByName("eth0")
	must(t, err)
	r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP(gw)}
	if dst != "" {
		_, r.Dst, err = net.ParseCIDR(dst)
		must(t, err)
	}
	if gw == "" {
		r.Scope = netlink.SCOPE_LINK
	}
	must(t, netlink.RouteAdd(r))
}

// TestNetwork reads a veth end's settings, joins it to the TAP device
// the VMM would open, checks the filters, that frames pass both ways
// between the TAP device and the veth's peer, and that undo and the
// TAP's end leave the namespace as it was.
func TestNetwork(t *testing.T) {
	host, ctr := netnsPair(t, 1400)
	mustRoute(t, "", "10.200.0.1")
	mustRoute(t, "169.254.1.1/32", "")
	mustRoute(t, "192.168.0.0/16", "169.254.1.1")
	mustRoute(t, "::/0", "2001:db8::1")
	eth0, err := netlink.LinkByName("eth0")
	must(t, err)
	mac := eth0.Attrs().HardwareAddr

	ifs, err := findInterfaces()
	if err != nil {
		t.Fatal(err)
	}
	wantGuest := []cmdline.Net{{MAC: mac.String(), Addr: "10.200.0.2/24", Addrs: []string{"2001:db8::2/64"}, Static: true,
		Gateway: "10.200.0.1", MTU: 1400,
		Routes: []cmdline.Route{{Dst: "169.254.1.1/32"}, {Dst: "192.168.0.0/16", Gateway: "169.254.1.1"}, {Dst: "::/0", Gateway: "2001:db8::1"}}}}
	if got := guestNets(ifs); !reflect.DeepEqual(got, wantGuest) {
		t.Errorf("guestNets = %+v\nwant %+v", got, wantGuest)
	}
	vn := vmNets(ifs)
	if len(vn) != 1 || vn[0].Tap != "vtap0" || vn[0].MAC.String() != mac.String() || vn[0].User != nil {
		t.Fatalf("vmNets = %+v, want TAP vtap0 with MAC %s", vn, mac)
	}

	// The VMM's end: it creates the TAP device, redirect joins it.
	tp, err := tap.Open("vtap0")
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	undo, err := redirect(ifs)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := netlink.LinkByName("vtap0")
	must(t, err)
	if tl.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("vtap0 is not up")
	}
	for _, p := range [][2]netlink.Link{{eth0, tl}, {tl, eth0}} {
		fs, err := netlink.FilterList(p[0], netlink.HANDLE_MIN_INGRESS)
		must(t, err)
		if len(fs) != 1 {
			t.Fatalf("%s: %d ingress filters, want 1", p[0].Attrs().Name, len(fs))
		}
		u, ok := fs[0].(*netlink.U32)
		if !ok || len(u.Actions) != 1 {
			t.Fatalf("%s: filter %+v, want u32 with one action", p[0].Attrs().Name, fs[0])
		}
		m, ok := u.Actions[0].(*netlink.MirredAction)
		if !ok || m.MirredAction != netlink.TCA_EGRESS_REDIR || m.Ifindex != p[1].Attrs().Index {
			t.Errorf("%s: action %+v, want a redirect to %s's egress", p[0].Attrs().Name, u.Actions[0], p[1].Attrs().Name)
		}
	}

	// Ask the host side for 10.200.0.1's MAC from 10.200.0.2 through
	// the TAP device, as the guest would; the reply comes back there.
	setns(t, host)
	peer, err := netlink.LinkByName("peer0")
	must(t, err)
	setns(t, ctr)
	arpReq := arpFrame(1, mac, net.IPv4(10, 200, 0, 2), net.HardwareAddr{0, 0, 0, 0, 0, 0}, net.IPv4(10, 200, 0, 1))
	broadcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if err := tp.WriteFrame([][]byte{make([]byte, 12), broadcast, arpReq}); err != nil {
		t.Fatalf("write to vtap0: %v", err)
	}
	tp.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	for {
		nr, err := tp.ReadFrame(buf)
		if err != nil {
			t.Fatalf("no ARP reply from peer0 through vtap0: %v", err)
		}
		f := buf[12:nr]
		// dst, src, type 0x0806, ..., op 2 (reply) with sender peer0.
		if len(f) >= 42 && bytes.Equal(f[:6], mac) && binary.BigEndian.Uint16(f[12:]) == unix.ETH_P_ARP &&
			binary.BigEndian.Uint16(f[20:]) == 2 && bytes.Equal(f[22:28], peer.Attrs().HardwareAddr) {
			break
		}
	}

	undo()
	tp.Close()
	if _, err := netlink.LinkByName("vtap0"); err == nil {
		t.Error("vtap0 is left after the VMM closed it")
	}
	qs, err := netlink.QdiscList(eth0)
	must(t, err)
	for _, q := range qs {
		if q.Type() == "ingress" {
			t.Errorf("eth0 keeps an ingress qdisc after undo")
		}
	}
}

// TestFindInterfacesSkips: loopback, an interface without an address
// and a TAP device are not the container's; an IPv6-only interface is.
func TestFindInterfacesSkips(t *testing.T) {
	netnsPair(t, 1500)
	eth0, err := netlink.LinkByName("eth0")
	must(t, err)
	a4, err := netlink.ParseAddr("10.200.0.2/24")
	must(t, err)
	must(t, netlink.AddrDel(eth0, a4))
	must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "bare0"}, PeerName: "bare1"}))
	tp, err := tap.Open("vtap9")
	must(t, err)
	defer tp.Close()
	ifs, err := findInterfaces()
	must(t, err)
	want := []cmdline.Net{{MAC: eth0.Attrs().HardwareAddr.String(), Addrs: []string{"2001:db8::2/64"}, Static: true, MTU: 1500}}
	if got := guestNets(ifs); !reflect.DeepEqual(got, want) {
		t.Errorf("guestNets = %+v, want %+v", got, want)
	}
}

// arpFrame is an Ethernet source and type and an ARP packet after the
// destination address.
func arpFrame(op uint16, sha net.HardwareAddr, spa net.IP, tha net.HardwareAddr, tpa net.IP) []byte {
	b := append([]byte{}, sha...)
	b = binary.BigEndian.AppendUint16(b, unix.ETH_P_ARP)
	b = append(b, 0, 1, 8, 0, 6, 4)
	b = binary.BigEndian.AppendUint16(b, op)
	b = append(b, sha...)
	b = append(b, spa.To4()...)
	b = append(b, tha...)
	b = append(b, tpa.To4()...)
	return b
}

// TestFindInterfacesLoopbackOnly: a namespace with only lo gives a VM
// without a NIC.
func TestFindInterfacesLoopbackOnly(t *testing.T) {
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("no network namespace for the test: %v", err)
	}
	ifs, err := findInterfaces()
	if err != nil || len(ifs) != 0 {
		t.Errorf("findInterfaces in a namespace with lo only: %+v, %v", ifs, err)
	}
}

// otherNetns is a network namespace of its own, held by a child process
// for the test's duration: its /proc path, and its name as readlink
// tells it.
func otherNetns(t *testing.T) (path, name string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace of its own")
	}
	self, err := os.Readlink("/proc/thread-self/ns/net")
	must(t, err)
	other := exec.Command("unshare", "-n", "sleep", "60")
	if err := other.Start(); err != nil {
		t.Fatalf("unshare: %v", err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	// unshare execs sleep once the namespace is made.
	path = "/proc/" + strconv.Itoa(other.Process.Pid) + "/ns/net"
	for range 100 {
		if name, err = os.Readlink(path); err == nil && name != self {
			return path, name
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the unshare -n helper did not get a namespace of its own")
	return "", ""
}

// netnsOfProcess is the network namespace cmd's process runs in; it is
// killed and waited for.
func netnsOfProcess(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	got, err := os.Readlink("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/net")
	cmd.Process.Kill()
	cmd.Wait()
	must(t, err)
	return got
}

// TestStartInNetns starts a process in a network namespace given by its
// descriptor, and checks that it got that one and the caller's thread
// kept its own; a namespace of another kind is refused when opened.
func TestStartInNetns(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Readlink("/proc/thread-self/ns/net")
	must(t, err)
	otherPath, otherNS := otherNetns(t)
	ns, err := openNetns(otherPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if hostNetns(ns) {
		t.Error("hostNetns says another namespace is the host's")
	}
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := startInNetns(cmd, ns); err != nil {
		t.Fatal(err)
	}
	if got := netnsOfProcess(t, cmd); got != otherNS {
		t.Errorf("the child is in %s, want %s", got, otherNS)
	}
	if now, _ := os.Readlink("/proc/thread-self/ns/net"); now != self {
		t.Errorf("the test's thread moved to %s", now)
	}
	if f, err := openNetns("/proc/self/ns/pid"); err == nil {
		f.Close()
		t.Error("openNetns took a PID namespace")
	}
}

// TestNetnsOpenedOnce: the namespace create checks is the one the VMM
// process starts in, whatever its path names afterwards (session 9
// review, F8: a symbolic link swapped between the check and the start
// put the VMM in the host's namespace); the host's own is recognised
// through a link too, and a path that is no namespace is refused.
func TestNetnsOpenedOnce(t *testing.T) {
	otherPath, otherNS := otherNetns(t)
	dir := t.TempDir()
	link := filepath.Join(dir, "ns")
	must(t, os.Symlink(otherPath, link))
	ns, err := openNetns(link)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if hostNetns(ns) {
		t.Fatal("hostNetns says another namespace is the host's")
	}
	// The author swaps the link to the caller's namespace.
	must(t, os.Remove(link))
	must(t, os.Symlink("/proc/self/ns/net", link))
	cmd := exec.Command("sleep", "60")
	if err := startInNetns(cmd, ns); err != nil {
		t.Fatal(err)
	}
	if got := netnsOfProcess(t, cmd); got != otherNS {
		t.Errorf("the VMM process started in %s, want the checked %s", got, otherNS)
	}
	host, err := openNetns(link)
	must(t, err)
	defer host.Close()
	if !hostNetns(host) {
		t.Error("hostNetns does not see the caller's namespace through a link")
	}
	f := filepath.Join(dir, "file")
	must(t, os.WriteFile(f, nil, 0o600))
	if _, err := openNetns(f); err == nil {
		t.Error("openNetns took a regular file")
	}
}
