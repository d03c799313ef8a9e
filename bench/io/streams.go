package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vesselvm/vessel/bench/internal/benchutil"
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

// tcp measures TCP over one network kind: guest->host to a listener on
// hostIP, host->guest to guestIP (or, for the user network, to the port
// published on 127.0.0.1), and host loopback as the baseline.
func (b *bench) tcp(kind string, devs []string, hostIP, guestIP string) error {
	idle, err := b.vessel(devs, []string{"idle"}, nil)
	if err != nil {
		return err
	}
	peer := hostIP
	if kind == "user" {
		peer = "host.vessel.internal"
	}
	var g2h, h2g, loop []float64
	var lastG2H, lastH2G *guestRun
	for i := 0; i < b.cfg.Runs; i++ {
		b.log("%s TCP run %d/%d", kind, i+1, b.cfg.Runs)
		// guest -> host
		ln, err := net.Listen("tcp", net.JoinHostPort(hostIP, "0"))
		if err != nil {
			return err
		}
		go serve(ln)
		port := ln.Addr().(*net.TCPAddr).Port
		r, err := b.vessel(devs, []string{"tcp-send", net.JoinHostPort(peer, strconv.Itoa(port)), strconv.FormatInt(b.cfg.Size, 10)}, nil)
		ln.Close()
		if err != nil {
			return err
		}
		g2h, lastG2H = append(g2h, mibps(r.results)), r

		// host -> guest
		target := net.JoinHostPort(guestIP, strconv.Itoa(guestPort))
		if kind == "user" {
			target = publishedAddr(devs)
		}
		var s sender
		r, err = b.vessel(devs, []string{"tcp-recv", strconv.Itoa(guestPort)}, s.start(func() error { return dialAndSend(target, b.cfg.Size) }))
		if err != nil {
			return err
		}
		if err := s.wait(); err != nil {
			return fmt.Errorf("host -> guest: %w", err)
		}
		h2g, lastH2G = append(h2g, mibps(r.results)), r

		l, err := loopback(b.cfg.Size)
		if err != nil {
			return err
		}
		loop = append(loop, l)
	}
	what := "host loopback TCP"
	b.rep.Rows = append(b.rep.Rows,
		row{Area: "tcp " + kind, Name: "guest -> host", Unit: "MiB/s", Guest: benchutil.Summarize(g2h).Median, Host: benchutil.Summarize(loop).Median, HostWhat: what},
		row{Area: "tcp " + kind, Name: "host -> guest", Unit: "MiB/s", Guest: benchutil.Summarize(h2g).Median, Host: benchutil.Summarize(loop).Median, HostWhat: what})
	mib := float64(b.cfg.Size) / (1 << 20)
	b.addCost("tcp "+kind+" guest -> host", "net", mib, lastG2H.metrics, idle.metrics)
	b.addCost("tcp "+kind+" host -> guest", "net", mib, lastH2G.metrics, idle.metrics)
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

// publishedAddr finds the host address of the first publish= in devs.
func publishedAddr(devs []string) string {
	for _, d := range devs {
		if _, p, ok := strings.Cut(d, "publish="); ok {
			hp, _, _ := strings.Cut(p, ",")
			i := strings.LastIndex(hp, ":")
			return hp[:i]
		}
	}
	return ""
}

// serve reads every connection accepted on ln to its end, until ln is
// closed (a retried run connects again).
func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
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

// vsock measures both directions through the hybrid vsock socket, and
// the host baseline over a Unix socket pair path with the same code.
func (b *bench) vsock() error {
	uds := filepath.Join(b.dir, "v.sock")
	devs := []string{"--vsock", uds}
	idle, err := b.vessel(devs, []string{"idle"}, nil)
	if err != nil {
		return err
	}
	var g2h, h2g, base []float64
	var lastG2H, lastH2G *guestRun
	for i := 0; i < b.cfg.Runs; i++ {
		b.log("vsock run %d/%d", i+1, b.cfg.Runs)
		ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", uds, vsockPort))
		if err != nil {
			return err
		}
		go serve(ln)
		r, err := b.vessel(devs, []string{"vsock-send", strconv.Itoa(vsockPort), strconv.FormatInt(b.cfg.Size, 10)}, nil)
		ln.Close()
		if err != nil {
			return err
		}
		g2h, lastG2H = append(g2h, mibps(r.results)), r

		var s sender
		r, err = b.vessel(devs, []string{"vsock-recv", strconv.Itoa(vsockPort)}, s.start(func() error { return hybridSend(uds, vsockPort, b.cfg.Size) }))
		if err != nil {
			return err
		}
		if err := s.wait(); err != nil {
			return fmt.Errorf("host -> guest: %w", err)
		}
		h2g, lastH2G = append(h2g, mibps(r.results)), r

		u, err := unixBaseline(b.dir, b.cfg.Size)
		if err != nil {
			return err
		}
		base = append(base, u)
	}
	what := "host Unix socket"
	b.rep.Rows = append(b.rep.Rows,
		row{Area: "vsock", Name: "guest -> host", Unit: "MiB/s", Guest: benchutil.Summarize(g2h).Median, Host: benchutil.Summarize(base).Median, HostWhat: what},
		row{Area: "vsock", Name: "host -> guest", Unit: "MiB/s", Guest: benchutil.Summarize(h2g).Median, Host: benchutil.Summarize(base).Median, HostWhat: what})
	mib := float64(b.cfg.Size) / (1 << 20)
	b.addCost("vsock guest -> host", "vsock", mib, lastG2H.metrics, idle.metrics)
	b.addCost("vsock host -> guest", "vsock", mib, lastH2G.metrics, idle.metrics)
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
