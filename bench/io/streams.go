package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
)

// setupTap creates the benchmark's TAP device with the host end's address
// and returns its removal.
func setupTap() (func(), error) {
	la := netlink.NewLinkAttrs()
	la.Name = tapName
	tap := &netlink.Tuntap{LinkAttrs: la, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR}
	if err := netlink.LinkAdd(tap); err != nil {
		return nil, fmt.Errorf("create TAP device %s (needs root): %w", tapName, err)
	}
	remove := func() { netlink.LinkDel(tap) }
	link, err := netlink.LinkByName(tapName)
	if err == nil {
		addr, _ := netlink.ParseAddr(tapHost + "/24")
		err = netlink.AddrAdd(link, addr)
	}
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		remove()
		return nil, fmt.Errorf("set up %s: %w", tapName, err)
	}
	return remove, nil
}

// freePort returns a TCP port free on 127.0.0.1 now.
func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// netSetup is how one VMM's guest reaches the host and back on one
// network kind.
type netSetup struct {
	dev  vmDevices
	peer string // the host's listener address as the guest dials it (no port)
	// target is the address the host dials to reach the guest's
	// listener.
	target string
}

// netFor returns the setup of network kind for VMM v.
func netFor(kind, v string) netSetup {
	if kind == "tap" {
		return netSetup{
			dev:    vmDevices{Tap: tapName, TapAddr: tapGuest + "/24", TapGW: tapHost},
			peer:   tapHost,
			target: net.JoinHostPort(tapGuest, strconv.Itoa(guestPort)),
		}
	}
	port := freePort()
	s := netSetup{dev: vmDevices{UserPort: port}, target: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	// vessel's user network names the host; slirp's is its gateway.
	// Both reach the host's loopback.
	s.peer = "host.vessel.internal"
	if v == vmmQEMU {
		s.peer = slirpHost
	}
	return s
}

// tcp measures TCP over one network kind under each VMM: guest->host to
// a listener on the host (the TAP device's address, or loopback for the
// user networks), host->guest to the guest's address (or the port the
// user network forwards from 127.0.0.1), and host loopback as the
// baseline.
func (b *bench) tcp(kind string) error {
	listenIP := tapHost
	if kind == "user" {
		listenIP = "127.0.0.1"
	}
	vmms := b.vmmsFor(kind)
	setups := map[string]netSetup{}
	idle := map[string]*guestRun{}
	for _, v := range vmms {
		setups[v] = netFor(kind, v)
		r, err := b.boot(v, setups[v].dev, []string{"idle"}, nil)
		if err != nil {
			return err
		}
		idle[v] = r
	}
	g2h, h2g := newMeasurement(), newMeasurement()
	var loop []float64
	mib := float64(b.cfg.Size) / (1 << 20)
	for i := 0; i < b.cfg.Runs; i++ {
		for _, v := range runOrder(vmms, i) {
			b.log("%s TCP run %d/%d: %s", kind, i+1, b.cfg.Runs, vmmTitle[v])
			s := setups[v]
			// guest -> host
			ln, err := net.Listen("tcp", net.JoinHostPort(listenIP, "0"))
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			go serve(func() (io.ReadCloser, error) { return ln.Accept() })
			port := ln.Addr().(*net.TCPAddr).Port
			r, err := b.boot(v, s.dev, []string{"tcp-send", net.JoinHostPort(s.peer, strconv.Itoa(port)), strconv.FormatInt(b.cfg.Size, 10)}, nil)
			ln.Close()
			if err != nil {
				return err
			}
			g2h.values[v] = append(g2h.values[v], mibps(r.results))
			g2h.costs[v] = append(g2h.costs[v], runCost("net", mib, r, idle[v]))

			// host -> guest
			var snd sender
			r, err = b.boot(v, s.dev, []string{"tcp-recv", strconv.Itoa(guestPort)}, snd.start(func() error { return dialAndSend(s.target, b.cfg.Size) }))
			if err != nil {
				return err
			}
			if err := snd.wait(); err != nil {
				return fmt.Errorf("%s host -> guest: %w", vmmTitle[v], err)
			}
			h2g.values[v] = append(h2g.values[v], mibps(r.results))
			h2g.costs[v] = append(h2g.costs[v], runCost("net", mib, r, idle[v]))
		}
		l, err := loopback(b.cfg.Size)
		if err != nil {
			return fmt.Errorf("host baseline: %w", err)
		}
		loop = append(loop, l)
	}
	what := "host loopback TCP"
	b.addRow("tcp "+kind, "guest -> host", "MiB/s", g2h, loop, what)
	b.addRow("tcp "+kind, "host -> guest", "MiB/s", h2g, loop, what)
	b.addCost("tcp "+kind+" guest -> host", kind, "net", g2h)
	b.addCost("tcp "+kind+" host -> guest", kind, "net", h2g)
	return nil
}

// sender runs the host half of a host -> guest transfer each time the
// guest says it listens (a retried run says it twice) and reports the
// last one's result.
type sender struct {
	wg  sync.WaitGroup
	mu  sync.Mutex
	err error
}

// start returns the listening callback: it must not block (it runs in
// the console writer), so the transfer gets its own goroutine.
func (s *sender) start(send func() error) func() {
	return func() {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			err := send()
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
		}()
	}
}

func (s *sender) wait() error {
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// serve reads every connection accept returns to its end, until accept
// fails (its listener closed; a retried run connects again).
func serve(accept func() (io.ReadCloser, error)) {
	for {
		c, err := accept()
		if err != nil {
			return
		}
		go recvAll(c)
	}
}

// dialAndSend connects to addr (retrying while a published port's guest
// side is not ready) and sends n bytes.
func dialAndSend(addr string, n int64) error {
	var c net.Conn
	var err error
	for i := 0; i < 20; i++ {
		if c, err = net.DialTimeout("tcp", addr, 10*time.Second); err == nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	_, err = sendAll(c.(*net.TCPConn), n)
	return err
}

// recvRate receives one connection on ln and sends its throughput in
// MiB/s (0 on failure).
func recvRate(ln net.Listener) <-chan float64 {
	got := make(chan float64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- 0
			return
		}
		k, d, _ := recvAll(c)
		got <- Result{Bytes: k, Seconds: d.Seconds()}.MiBps()
	}()
	return got
}

// loopback measures host TCP throughput over 127.0.0.1 with the same code.
func loopback(n int64) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	got := recvRate(ln)
	if err := dialAndSend(ln.Addr().String(), n); err != nil {
		return 0, err
	}
	return <-got, nil
}

// mibps is the receiving side's throughput: the RESULT of the run.
func mibps(rs []Result) float64 {
	if len(rs) == 0 {
		return 0
	}
	return rs[0].MiBps()
}

// vsockSetup is how the host talks to one VMM's guest over vsock.
type vsockSetup struct {
	dev vmDevices
	// listen listens for the guest's connections to the host's port.
	listen func(port int) (accept func() (io.ReadCloser, error), closeFn func(), err error)
	// send connects to the guest's port and sends n bytes.
	send func(port int, n int64) error
}

// vsockFor returns the vsock setup of VMM v: vessel's hybrid vsock (a
// Unix socket per port) or QEMU's vhost-vsock (the host kernel's AF_VSOCK).
func (b *bench) vsockFor(v string) vsockSetup {
	if v == vmmQEMU {
		cid := uint32(1000 + os.Getpid()%100000)
		return vsockSetup{
			dev: vmDevices{VsockCID: cid},
			listen: func(port int) (func() (io.ReadCloser, error), func(), error) {
				ln, err := listenVsock(uint32(port))
				if err != nil {
					return nil, nil, err
				}
				return ln.accept, ln.close, nil
			},
			send: func(port int, n int64) error { return vsockSend(cid, uint32(port), n) },
		}
	}
	uds := filepath.Join(b.dir, "v.sock")
	return vsockSetup{
		dev: vmDevices{VsockUDS: uds},
		listen: func(port int) (func() (io.ReadCloser, error), func(), error) {
			ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", uds, port))
			if err != nil {
				return nil, nil, err
			}
			return func() (io.ReadCloser, error) { return ln.Accept() }, func() { ln.Close() }, nil
		},
		send: func(port int, n int64) error { return hybridSend(uds, port, n) },
	}
}

// vsock measures both directions under each VMM, and the host baseline
// over a Unix socket with the same code.
func (b *bench) vsock() error {
	vmms := b.vmmsFor("vsock")
	setups := map[string]vsockSetup{}
	idle := map[string]*guestRun{}
	for _, v := range vmms {
		setups[v] = b.vsockFor(v)
		r, err := b.boot(v, setups[v].dev, []string{"idle"}, nil)
		if err != nil {
			return err
		}
		idle[v] = r
	}
	g2h, h2g := newMeasurement(), newMeasurement()
	var base []float64
	mib := float64(b.cfg.Size) / (1 << 20)
	for i := 0; i < b.cfg.Runs; i++ {
		for _, v := range runOrder(vmms, i) {
			b.log("vsock run %d/%d: %s", i+1, b.cfg.Runs, vmmTitle[v])
			s := setups[v]
			accept, closeLn, err := s.listen(vsockPort)
			if err != nil {
				return fmt.Errorf("%s: listen on vsock port %d: %w", vmmTitle[v], vsockPort, err)
			}
			go serve(accept)
			r, err := b.boot(v, s.dev, []string{"vsock-send", strconv.Itoa(vsockPort), strconv.FormatInt(b.cfg.Size, 10)}, nil)
			closeLn()
			if err != nil {
				return err
			}
			g2h.values[v] = append(g2h.values[v], mibps(r.results))
			g2h.costs[v] = append(g2h.costs[v], runCost("vsock", mib, r, idle[v]))

			var snd sender
			r, err = b.boot(v, s.dev, []string{"vsock-recv", strconv.Itoa(vsockPort)}, snd.start(func() error { return s.send(vsockPort, b.cfg.Size) }))
			if err != nil {
				return err
			}
			if err := snd.wait(); err != nil {
				return fmt.Errorf("%s host -> guest: %w", vmmTitle[v], err)
			}
			h2g.values[v] = append(h2g.values[v], mibps(r.results))
			h2g.costs[v] = append(h2g.costs[v], runCost("vsock", mib, r, idle[v]))
		}
		u, err := unixBaseline(b.dir, b.cfg.Size)
		if err != nil {
			return fmt.Errorf("host baseline: %w", err)
		}
		base = append(base, u)
	}
	what := "host Unix socket"
	b.addRow("vsock", "guest -> host", "MiB/s", g2h, base, what)
	b.addRow("vsock", "host -> guest", "MiB/s", h2g, base, what)
	b.addCost("vsock guest -> host", "vsock", "vsock", g2h)
	b.addCost("vsock host -> guest", "vsock", "vsock", h2g)
	return nil
}

// hybridSend connects through Firecracker's hybrid vsock protocol and
// sends n bytes.
func hybridSend(uds string, port int, n int64) error {
	c, err := net.Dial("unix", uds)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT %d\n", port)
	// Read the answer byte by byte: nothing after it may be consumed.
	var line []byte
	one := make([]byte, 1)
	for len(line) < 64 {
		if _, err := c.Read(one); err != nil {
			return fmt.Errorf("CONNECT %d: %w", port, err)
		}
		if one[0] == '\n' {
			break
		}
		line = append(line, one[0])
	}
	if !strings.HasPrefix(string(line), "OK ") {
		return fmt.Errorf("CONNECT %d: answer %q", port, line)
	}
	_, err = sendAll(c.(*net.UnixConn), n)
	return err
}

// unixBaseline measures a host Unix stream socket with the same code.
func unixBaseline(dir string, n int64) (float64, error) {
	path := filepath.Join(dir, "baseline.sock")
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	got := recvRate(ln)
	c, err := net.Dial("unix", path)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if _, err := sendAll(c.(*net.UnixConn), n); err != nil {
		return 0, err
	}
	return <-got, nil
}
