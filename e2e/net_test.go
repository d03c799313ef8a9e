//go:build e2e

package e2e

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

var (
	netPeer     = flag.String("e2e.net.peer", "", "guest half: HOST:PORT the guest sends a stream to")
	netAddr     = flag.String("e2e.net.addr", "", "guest half: the address eth0 must have (CIDR)")
	netOffloads = flag.Bool("e2e.net.offloads", false, "guest half: eth0 must have negotiated checksum and TSO offloads")
	netBytes    = flag.Int("e2e.net.bytes", 0, "guest half: bytes to send and to expect")
)

// netGuestPort is where the guest half listens for the host's stream.
const netGuestPort = 8080

// netRun is the host half of a network test: it serves the guest's
// stream on ln, boots vessel with netArgs, and once the guest listens
// sends its own stream to dialAddr. Both streams are checksummed.
func netRun(t *testing.T, ln net.Listener, netArgs []string, peer, addr, dialAddr string, offloads bool, n int) {
	t.Helper()
	// A run retried for a platform fault connects and listens again:
	// the host serves every connection and keeps the last attempt's
	// results.
	var mu sync.Mutex
	got := ""
	go func() { // guest -> host: hash, answer the hash
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				start := time.Now()
				k, err := answerHash(c, nil)
				mu.Lock()
				got = fmt.Sprintf("%d bytes in %v (%v)", k, time.Since(start).Round(time.Millisecond), err)
				mu.Unlock()
			}()
		}
	}()
	type attempt struct {
		wg   sync.WaitGroup
		err  error
		sent bool
	}
	var last *attempt
	setup := func(cmd *exec.Cmd) {
		a := &attempt{}
		last = a
		cmd.Stdout = &lineWatch{w: cmd.Stdout, line: "NET LISTENING", f: func() {
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				a.err, a.sent = hostStream(dialAddr, n), true
			}()
		}}
	}
	args := append([]string{"vm", "run", "--kernel", filepath.Join(guestDir, "bzImage"), "--initrd", guestInitrd(t), "--memory", "384M"}, netArgs...)
	args = append(args, "--", "/e2e.test", "-e2e.guest", "-test.run", "^TestGuestNet$", "-test.v",
		"-e2e.net.peer="+peer, "-e2e.net.addr="+addr, "-e2e.net.offloads="+strconv.FormatBool(offloads), "-e2e.net.bytes="+strconv.Itoa(n))
	r := vesselCmd(t, setup, args...)
	if r.code != 0 || !strings.Contains(r.stdout, "--- PASS: TestGuestNet") {
		t.Fatalf("guest check failed:\n%v", r)
	}
	mu.Lock()
	t.Logf("guest -> host: %s", got)
	mu.Unlock()
	last.wg.Wait() // the guest passed: it has the host's stream and answered
	switch {
	case !last.sent:
		t.Error("the host never sent its stream to the guest")
	case last.err != nil:
		t.Errorf("host -> guest: %v", last.err)
	}
}

// lineWatch passes output on and calls f once when a line appears.
type lineWatch struct {
	w    io.Writer
	line string
	f    func()
	buf  []byte
	done bool
}

func (l *lineWatch) Write(p []byte) (int, error) {
	if !l.done {
		l.buf = append(l.buf, p...)
		if strings.Contains(string(l.buf), l.line) {
			l.done = true
			l.buf = nil
			l.f()
		}
		if len(l.buf) > 1<<16 {
			l.buf = l.buf[len(l.buf)-1024:]
		}
	}
	return l.w.Write(p)
}

// hostStream sends n pseudo-random bytes to addr and checks the hash the
// guest answers.
func hostStream(addr string, n int) error {
	var c net.Conn
	var err error
	for i := 0; i < 20; i++ { // the guest listens before it says so; a published port may lag
		if c, err = net.DialTimeout("tcp", addr, 10*time.Second); err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Minute))
	return sendChecked(c.(*net.TCPConn), 7, n, nil)
}

// TestNetUser: the userspace network. The guest gets its address by DHCP,
// resolves the host's name through the network's DNS, reaches a server on
// the host's loopback (host-loopback), and a published host port reaches
// a server in the guest.
func TestNetUser(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hostPort := ln.Addr().(*net.TCPAddr).Port
	pub := freePort(t)
	metrics := filepath.Join(t.TempDir(), "metrics.json")
	netRun(t, ln, []string{"--metrics", metrics, "--net", fmt.Sprintf("user,host-loopback,publish=127.0.0.1:%d:%d", pub, netGuestPort)},
		fmt.Sprintf("host.vessel.internal:%d", hostPort), "192.168.127.2/24",
		fmt.Sprintf("127.0.0.1:%d", pub), false, 4<<20)
	checkNetMetrics(t, metrics, false)
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", pub)); err == nil {
		c.Close()
		t.Errorf("the published port %d still listens after the VM ended", pub)
	}
}

// TestNetTap: a TAP device with a static guest address; the guest
// negotiates checksum and TSO offloads, and TCP flows both ways between
// the guest and the host's end of the TAP device.
func TestNetTap(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	const name = "vesseltap0"
	la := netlink.NewLinkAttrs()
	la.Name = name
	tap := &netlink.Tuntap{LinkAttrs: la, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR}
	if err := netlink.LinkAdd(tap); err != nil {
		t.Fatalf("create TAP device %s (the e2e tests run as root in the test platform): %v", name, err)
	}
	defer netlink.LinkDel(tap)
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	hostAddr, _ := netlink.ParseAddr("172.30.0.1/24")
	if err := netlink.AddrAdd(link, hostAddr); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "172.30.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	metrics := filepath.Join(t.TempDir(), "metrics.json")
	netRun(t, ln, []string{"--metrics", metrics, "--net", "tap=" + name + ",ip=172.30.0.2/24,gw=172.30.0.1,mac=52:54:00:aa:bb:01"},
		ln.Addr().String(), "172.30.0.2/24", fmt.Sprintf("172.30.0.2:%d", netGuestPort), true, 16<<20)
	checkNetMetrics(t, metrics, true)

	// A TAP device vessel creates itself is gone when the VM ends. (A
	// static address: DHCP would wait for a server that is not there.)
	const own = "vesseltap1"
	r := vessel(t, "vm", "run", "--net", "tap="+own+",ip=172.30.1.2/24", "--", "cat", "/sys/class/net/eth0/operstate")
	if r.code != 0 || !strings.Contains(r.stdout, "up") {
		t.Fatalf("boot with a TAP device vessel creates:\n%v", r)
	}
	if _, err := net.InterfaceByName(own); err == nil {
		netlink.LinkDel(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: own}})
		t.Errorf("vessel left its TAP device %s behind", own)
	}
}

// checkNetMetrics reads vessel's --metrics after a network run and checks
// what the guest's traffic cost: every queue notification went through
// the ioeventfd (none as an MMIO write, which would be a userspace exit);
// and, with offloads, that they were used: the largest packet each way is
// larger than an Ethernet frame can be, so the guest sent TSO packets and
// took large (GSO) ones from the host.
func checkNetMetrics(t *testing.T, path string, offloads bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Devices []struct {
			Type         string `json:"type"`
			Notifies     uint64 `json:"notifies"`
			ExitNotifies uint64 `json:"notify_exits"`
			Net          *struct {
				RxPackets uint64 `json:"rx_packets"`
				TxPackets uint64 `json:"tx_packets"`
				RxMax     uint64 `json:"rx_max"`
				TxMax     uint64 `json:"tx_max"`
			} `json:"net"`
		} `json:"devices"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("metrics: %v\n%s", err, b)
	}
	for _, d := range m.Devices {
		if d.ExitNotifies != 0 {
			t.Errorf("%s device: %d of %d notifications took a userspace exit", d.Type, d.ExitNotifies, d.Notifies)
		}
		if d.Type != "net" || d.Net == nil {
			continue
		}
		n := d.Net
		if n.TxPackets == 0 || n.RxPackets == 0 || d.Notifies == 0 {
			t.Fatalf("net device counters %+v, notifies %d: no traffic counted", *n, d.Notifies)
		}
		t.Logf("net: %d notifies; guest sent %d packets (largest %d bytes), received %d (largest %d bytes)",
			d.Notifies, n.TxPackets, n.TxMax, n.RxPackets, n.RxMax)
		const frame = 1514 // the largest untagged Ethernet frame
		if offloads && (n.TxMax <= frame || n.RxMax <= frame) {
			t.Errorf("largest packet %d bytes out, %d in: no larger than a frame, so TSO/GSO was not used", n.TxMax, n.RxMax)
		}
	}
}

// freePort returns a TCP port free on 127.0.0.1 at the time of the call.
func freePort(t *testing.T) int {
	return freePorts(t, 1)[0]
}

// freePorts returns n distinct free TCP ports on 127.0.0.1: all are held
// until the last is chosen (ports chosen one after another, each closed
// at once, can repeat: the last CI's TestLoadConcurrent got one twice).
func freePorts(t *testing.T, n int) []int {
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// TestGuestNet is the guest half of TestNetUser and TestNetTap.
func TestGuestNet(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of the network tests; runs inside the VM")
	}
	eth, err := net.InterfaceByName("eth0")
	if err != nil {
		t.Fatalf("no eth0: %v", err)
	}
	addrs, _ := eth.Addrs()
	found := false
	for _, a := range addrs {
		found = found || a.String() == *netAddr
	}
	if !found {
		t.Fatalf("eth0 has %v, want %s", addrs, *netAddr)
	}
	if *netOffloads {
		checkOffloads(t)
	}

	// Listen first, then send: the host dials in once we say so.
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", netGuestPort))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fmt.Println("NET LISTENING")
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		start := time.Now()
		k, err := answerHash(c, nil)
		fmt.Printf("NET host->guest %d bytes in %v (%v)\n", k, time.Since(start).Round(time.Millisecond), err)
		served <- err
	}()

	c, err := net.DialTimeout("tcp", *netPeer, 30*time.Second)
	if err != nil {
		t.Fatalf("dial the host at %s: %v (resolv.conf: %s)", *netPeer, err, readFile("/etc/resolv.conf"))
	}
	start := time.Now()
	err = sendChecked(c.(*net.TCPConn), 3, *netBytes, nil)
	c.Close()
	if err != nil {
		t.Fatalf("guest -> host stream: %v", err)
	}
	fmt.Printf("NET guest->host %d bytes in %v\n", *netBytes, time.Since(start).Round(time.Millisecond))
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("host -> guest stream: %v", err)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("the host's stream never came")
	}
}

// checkOffloads reads eth0's negotiated virtio features: a string of bits,
// feature 0 first.
func checkOffloads(t *testing.T) {
	dev, err := filepath.EvalSymlinks("/sys/class/net/eth0/device")
	if err != nil {
		t.Fatal(err)
	}
	bits := strings.TrimSpace(readFile(filepath.Join(dev, "features")))
	for name, bit := range map[string]int{"CSUM": 0, "GUEST_CSUM": 1, "GUEST_TSO4": 7, "HOST_TSO4": 11, "MRG_RXBUF": 15} {
		if len(bits) <= bit || bits[bit] != '1' {
			t.Errorf("feature %s (bit %d) not negotiated: %s", name, bit, bits)
		}
	}
}

func readFile(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
