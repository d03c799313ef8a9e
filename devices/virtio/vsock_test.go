package virtio

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestVsockConfig(t *testing.T) {
	g := newVsGuest(t, vsOpts{})
	if rd(g.m, regDeviceID) != TypeVsock {
		t.Errorf("device id %d", rd(g.m, regDeviceID))
	}
	if lo, hi := rd(g.m, regConfig), rd(g.m, regConfig+4); lo != vsTestCID || hi != 0 {
		t.Errorf("guest_cid %#x:%#x", hi, lo)
	}
	b := make([]byte, 8)
	g.m.Read(regConfig+8, b)
	if !bytes.Equal(b, make([]byte, 8)) {
		t.Errorf("config past guest_cid reads %x", b)
	}
	wr(g.m, regDeviceFeatSel, 0)
	if f := rd(g.m, regDeviceFeatures); f&^uint32(transportFeatures&0xffffffff) != 0 {
		t.Errorf("device features %#x: vsock offers none", f)
	}
	for _, cid := range []uint64{0, 1, 2, 0xffffffff, 1 << 40} {
		if v, err := NewVsock(cid, filepath.Join(t.TempDir(), "x.sock"), nil); err == nil {
			v.Close()
			t.Errorf("NewVsock(cid %d) succeeded", cid)
		}
	}
}

// establishHost runs a host-initiated connection to guest port port up to
// the OK line and returns the host client and the host-side port.
func establishHost(t *testing.T, g *vsGuest, port, guestBuf uint32) (*net.UnixConn, *bufio.Reader, uint32) {
	t.Helper()
	c := g.dialHost(port)
	h, _ := g.recvOp(vsockOpRequest)
	if h.srcCID != vsockHostCID || h.dstCID != vsTestCID || h.dstPort != port || h.typ != vsockTypeStream || h.srcPort < vsockFirstHostPort {
		t.Fatalf("request %+v", h)
	}
	if h.bufAlloc != vsockBufAlloc {
		t.Errorf("request advertises buf_alloc %d", h.bufAlloc)
	}
	resp := pkt(vsockOpResponse, port, h.srcPort)
	resp.bufAlloc = guestBuf
	g.send(resp, nil)
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := br.ReadString('\n')
	if err != nil || line != fmt.Sprintf("OK %d\n", h.srcPort) {
		t.Fatalf("host read %q, %v", line, err)
	}
	return c, br, h.srcPort
}

// recvData collects n bytes of RW payload for the connection (gp, hp),
// checking the credit the guest gave: buf_alloc guestBuf with nothing
// consumed (the test never reports consumption).
func recvData(t *testing.T, g *vsGuest, gp, hp uint32, n int) []byte {
	t.Helper()
	var got []byte
	for len(got) < n {
		h, d := g.recvOp(vsockOpRW)
		if h.srcPort != hp || h.dstPort != gp || int(h.len) != len(d) || h.len == 0 {
			t.Fatalf("rw %+v", h)
		}
		got = append(got, d...)
	}
	return got
}

func TestVsockHostInitiated(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run(fmt.Sprintf("split=%v", split), func(t *testing.T) {
			g := newVsGuest(t, vsOpts{split: split, eventIdx: split})
			c, br, hp := establishHost(t, g, 52, 1<<20)
			if g.conns() != 1 {
				t.Fatalf("%d connections", g.conns())
			}
			// host -> guest, more than one RX buffer's worth
			msg := bytes.Repeat([]byte("0123456789abcdef"), 1000)
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			if got := recvData(t, g, 52, hp, len(msg)); !bytes.Equal(got, msg) {
				t.Fatal("guest received different data")
			}
			// guest -> host
			g.send(pkt(vsockOpRW, 52, hp), []byte("hello from the guest"))
			buf := make([]byte, 20)
			if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "hello from the guest" {
				t.Fatalf("host read %q, %v", buf, err)
			}
			// The host closes: SHUTDOWN with both flags, then the
			// guest's RST ends the connection.
			c.Close()
			h, _ := g.recvOp(vsockOpShutdown)
			if h.flags != vsockShutRCV|vsockShutSEND || h.dstPort != 52 || h.srcPort != hp {
				t.Fatalf("shutdown %+v", h)
			}
			g.send(pkt(vsockOpRST, 52, hp), nil)
			waitFor(t, "connection removed", func() bool { return g.conns() == 0 })
			g.quiet(20 * time.Millisecond)
			if g.needsReset() {
				t.Error("NEEDS_RESET")
			}
		})
	}
}

func TestVsockHostInitiatedRefused(t *testing.T) {
	g := newVsGuest(t, vsOpts{})
	c := g.dialHost(1234)
	h, _ := g.recvOp(vsockOpRequest)
	// Nothing listens on 1234 in the guest.
	g.send(pkt(vsockOpRST, 1234, h.srcPort), nil)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("host read %q, %v: want EOF without OK", b, err)
	}
	waitFor(t, "connection removed", func() bool { return g.conns() == 0 })

	// Bad CONNECT lines are closed without reaching the guest.
	for _, line := range []string{"CONNECT\n", "CONNECT x\n", "CONNECT 99999999999\n", "HELLO 5\n", strings.Repeat("C", 100)} {
		c, err := net.Dial("unix", g.uds)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(line))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		// Closing with unread bytes may reset the connection.
		if b, err := io.ReadAll(c); (err != nil && !errors.Is(err, syscall.ECONNRESET)) || len(b) != 0 {
			t.Errorf("%q: host read %q, %v", line, b, err)
		}
		c.Close()
	}
	g.quiet(20 * time.Millisecond)
}

func TestVsockGuestInitiated(t *testing.T) {
	g := newVsGuest(t, vsOpts{eventIdx: true})
	ln := g.hostListen(5000)
	req := pkt(vsockOpRequest, 777, 5000)
	req.bufAlloc = 1 << 20
	g.send(req, nil)
	h, _ := g.recvOp(vsockOpResponse)
	if h.srcCID != vsockHostCID || h.srcPort != 5000 || h.dstCID != vsTestCID || h.dstPort != 777 || h.bufAlloc != vsockBufAlloc {
		t.Fatalf("response %+v", h)
	}
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	s, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(10 * time.Second))

	// guest -> host, split over packets and descriptors
	want := []byte("ping from the guest, in two packets")
	g.send(pkt(vsockOpRW, 777, 5000), want[:10])
	hdr := pkt(vsockOpRW, 777, 5000)
	hdr.len = uint32(len(want) - 10)
	b := make([]byte, vsockHdrSize)
	hdr.encode(b)
	g.sendChain(b[:20], b[20:], want[10:15], want[15:])
	got := make([]byte, len(want))
	if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("host read %q, %v", got, err)
	}
	// host -> guest
	s.Write([]byte("pong"))
	if d := recvData(t, g, 777, 5000, 4); string(d) != "pong" {
		t.Fatalf("guest got %q", d)
	}
	// The guest closes: the host sees EOF and the guest gets its RST.
	sh := pkt(vsockOpShutdown, 777, 5000)
	sh.flags = vsockShutRCV | vsockShutSEND
	g.send(sh, nil)
	if b, err := io.ReadAll(s); err != nil || len(b) != 0 {
		t.Fatalf("host read %q, %v after the guest's shutdown", b, err)
	}
	h, _ = g.recvOp(vsockOpRST)
	if h.srcPort != 5000 || h.dstPort != 777 {
		t.Fatalf("rst %+v", h)
	}
	waitFor(t, "connection removed", func() bool { return g.conns() == 0 })
}

func TestVsockRST(t *testing.T) {
	g := newVsGuest(t, vsOpts{})
	g.hostListen(4000)
	for _, tc := range []struct {
		name    string
		h       vsockHdr
		payload []byte
		rst     bool // the device answers RST
	}{
		{"no host socket for the port", pkt(vsockOpRequest, 900, 4001), nil, true},
		{"other destination CID", func() vsockHdr { h := pkt(vsockOpRequest, 901, 4000); h.dstCID = 7; return h }(), nil, true},
		{"seqpacket", func() vsockHdr { h := pkt(vsockOpRequest, 902, 4000); h.typ = 2; return h }(), nil, true},
		{"rw for an unknown connection", pkt(vsockOpRW, 903, 4000), []byte("data"), true},
		{"response for an unknown connection", pkt(vsockOpResponse, 904, 4000), nil, true},
		{"shutdown for an unknown connection", pkt(vsockOpShutdown, 905, 4000), nil, true},
		{"credit request for an unknown connection", pkt(vsockOpCreditRequest, 906, 4000), nil, true},
		{"unknown op for an unknown connection", pkt(99, 907, 4000), nil, true},
		{"rst for an unknown connection", pkt(vsockOpRST, 908, 4000), nil, false},
		{"wrong source CID", func() vsockHdr { h := pkt(vsockOpRequest, 909, 4000); h.srcCID = 99; return h }(), nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g.t = t
			g.send(tc.h, tc.payload)
			if !tc.rst {
				g.quiet(30 * time.Millisecond)
				return
			}
			h, _ := g.recvOp(vsockOpRST)
			if h.srcCID != tc.h.dstCID || h.dstCID != vsTestCID || h.srcPort != tc.h.dstPort || h.dstPort != tc.h.srcPort || h.typ != vsockTypeStream || h.len != 0 {
				t.Errorf("rst %+v answering %+v", h, tc.h)
			}
		})
	}
	g.t = t
	if g.needsReset() || g.conns() != 0 {
		t.Errorf("needs reset %v, %d connections", g.needsReset(), g.conns())
	}
}

// TestVsockMalformed sends broken packets on a live connection: each is
// answered by an RST of that connection, never by NEEDS_RESET.
func TestVsockMalformed(t *testing.T) {
	g := newVsGuest(t, vsOpts{})
	ln := g.hostListen(4100)
	for i, tc := range []struct {
		name string
		send func(gp uint32)
	}{
		{"length beyond the chain", func(gp uint32) {
			h := pkt(vsockOpRW, gp, 4100)
			h.len = 100
			b := make([]byte, vsockHdrSize)
			h.encode(b)
			g.sendChain(b, make([]byte, 50))
		}},
		{"length beyond the maximum packet", func(gp uint32) {
			h := pkt(vsockOpRW, gp, 4100)
			h.len = vsockMaxPkt + 1
			b := make([]byte, vsockHdrSize)
			h.encode(b)
			g.sendChain(b, make([]byte, 32<<10), make([]byte, 32<<10), make([]byte, 64))
		}},
		{"unknown op", func(gp uint32) { g.send(pkt(42, gp, 4100), nil) }},
		{"second request", func(gp uint32) { g.send(pkt(vsockOpRequest, gp, 4100), nil) }},
		{"response on a guest-initiated connection", func(gp uint32) { g.send(pkt(vsockOpResponse, gp, 4100), nil) }},
		{"data after shutdown", func(gp uint32) {
			sh := pkt(vsockOpShutdown, gp, 4100)
			sh.flags = vsockShutSEND
			g.send(sh, nil)
			g.send(pkt(vsockOpRW, gp, 4100), []byte("late"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g.t = t
			gp := uint32(2000 + i)
			g.send(pkt(vsockOpRequest, gp, 4100), nil)
			g.recvOp(vsockOpResponse)
			ln.SetDeadline(time.Now().Add(10 * time.Second))
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			tc.send(gp)
			h, _ := g.recvOp(vsockOpRST)
			if h.dstPort != gp || h.srcPort != 4100 {
				t.Errorf("rst %+v", h)
			}
			s.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.Copy(io.Discard, s) // the host end is closed
			waitFor(t, "connection removed", func() bool { return g.conns() == 0 })
		})
	}
	g.t = t
	if g.needsReset() {
		t.Error("malformed packets made the device need a reset")
	}
}

// TestVsockChainErrors: chains that cannot hold a packet header are driver
// bugs and make the device need a reset.
func TestVsockChainErrors(t *testing.T) {
	t.Run("tx chain shorter than the header", func(t *testing.T) {
		g := newVsGuest(t, vsOpts{})
		g.sendChain(make([]byte, 20))
		waitFor(t, "NEEDS_RESET", g.needsReset)
		if l := g.log.all(); len(l) == 0 || !strings.Contains(strings.Join(l, "\n"), "less than a packet header") {
			t.Errorf("log %q", l)
		}
	})
	t.Run("tx chain with writable descriptors only", func(t *testing.T) {
		g := newVsGuest(t, vsOpts{})
		g.tx.writeDesc(g.tx.cfg.Desc, 0, vsTxBase, 64, descFWrite, 0)
		g.tx.offer(0)
		wr(g.m, RegQueueNotify, 1)
		waitFor(t, "NEEDS_RESET", g.needsReset)
	})
	t.Run("rx buffer shorter than the header", func(t *testing.T) {
		g := newVsGuest(t, vsOpts{})
		// The device pops RX buffers only when it has a packet to send:
		// shrink the first one before giving it one (an RST for an
		// unknown connection).
		g.rx.writeDesc(g.rx.cfg.Desc, 0, vsRxBase, 16, descFWrite, 0)
		g.send(pkt(vsockOpRW, 1, 2), []byte("x"))
		waitFor(t, "NEEDS_RESET", g.needsReset)
	})
	t.Run("reset and reuse", func(t *testing.T) {
		g := newVsGuest(t, vsOpts{})
		g.sendChain(make([]byte, 8))
		waitFor(t, "NEEDS_RESET", g.needsReset)
		g.init(true)
		c, _, _ := establishHost(t, g, 9, 1<<20)
		c.Close()
		g.recvOp(vsockOpShutdown)
	})
}

// TestVsockCredit checks flow control both ways.
func TestVsockCredit(t *testing.T) {
	t.Run("guest window", func(t *testing.T) {
		g := newVsGuest(t, vsOpts{})
		const window = 1000
		c, _, hp := establishHost(t, g, 60, window)
		msg := make([]byte, 5000)
		rand.New(rand.NewSource(1)).Read(msg)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		var got []byte
		var fwd uint32
		for {
			// Exactly the window arrives, then nothing until the guest
			// reports progress.
			chunk := recvData(t, g, 60, hp, window)
			if len(chunk) != window {
				t.Fatalf("received %d bytes with a window of %d", len(chunk), window)
			}
			g.quiet(20 * time.Millisecond)
			if got = append(got, chunk...); len(got) == len(msg) {
				break
			}
			fwd += window
			up := pkt(vsockOpCreditUpdate, 60, hp)
			up.bufAlloc, up.fwdCnt = window, fwd
			g.send(up, nil)
		}
		if !bytes.Equal(got, msg) {
			t.Fatal("data differs")
		}
		// A guest claiming to have consumed more than it was sent gets
		// nothing more.
		up := pkt(vsockOpCreditUpdate, 60, hp)
		up.bufAlloc, up.fwdCnt = window, fwd+10000
		g.send(up, nil)
		g.flushTX()
		c.Write([]byte("more"))
		g.quiet(30 * time.Millisecond)
		up.fwdCnt = fwd + window
		g.send(up, nil)
		if d := recvData(t, g, 60, hp, 4); string(d) != "more" {
			t.Fatalf("got %q", d)
		}
	})
	t.Run("credit request", func(t *testing.T) {
		g := newVsGuest(t, vsOpts{})
		_, br, hp := establishHost(t, g, 61, 1<<20)
		g.send(pkt(vsockOpRW, 61, hp), make([]byte, 3000))
		if _, err := io.ReadFull(br, make([]byte, 3000)); err != nil {
			t.Fatal(err)
		}
		g.send(pkt(vsockOpCreditRequest, 61, hp), nil)
		h, _ := g.recvOp(vsockOpCreditUpdate)
		if h.bufAlloc != vsockBufAlloc || h.fwdCnt != 3000 {
			t.Fatalf("credit update %+v, want fwd_cnt 3000", h)
		}
	})
	t.Run("slow host stalls only its own connection", func(t *testing.T) {
		g := newVsGuest(t, vsOpts{})
		ln := g.hostListen(63)
		open := func(gp uint32) net.Conn {
			g.send(pkt(vsockOpRequest, gp, 63), nil)
			g.recvOp(vsockOpResponse)
			ln.SetDeadline(time.Now().Add(10 * time.Second))
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
		stuck, fast := open(1), open(2)
		// Fill the stuck connection's whole window: the host socket
		// buffer, then the device's buffer.
		chunk := make([]byte, 32<<10)
		var sent, fwd uint32
		for {
			for sent-fwd < vsockBufAlloc {
				n := min(uint32(len(chunk)), vsockBufAlloc-(sent-fwd))
				g.send(pkt(vsockOpRW, 1, 63), chunk[:n])
				sent += n
			}
			// Wait for the credit updates of what the host socket
			// took; stop when none come.
			g.flushTX()
			time.Sleep(50 * time.Millisecond)
			old := fwd
			for {
				h, _, ok := g.poll()
				if !ok {
					break
				}
				if h.op != vsockOpCreditUpdate || h.dstPort != 1 {
					t.Fatalf("unexpected %+v", h)
				}
				fwd = h.fwdCnt
			}
			if fwd == old {
				break
			}
		}
		t.Logf("stuck connection: %d KiB taken by the host socket, %d KiB buffered", fwd>>10, (sent-fwd)>>10)
		// The other connection still flows both ways.
		for i := 0; i < 20; i++ {
			g.send(pkt(vsockOpRW, 2, 63), []byte("ping"))
			b := make([]byte, 4)
			fast.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(fast, b); err != nil || string(b) != "ping" {
				t.Fatalf("fast connection read %q, %v", b, err)
			}
			fast.Write([]byte("pong"))
			if d := recvData(t, g, 2, 63, 4); string(d) != "pong" {
				t.Fatalf("got %q", d)
			}
		}
		// The stuck host finally reads everything.
		stuck.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := io.ReadFull(stuck, make([]byte, sent)); err != nil {
			t.Fatalf("stuck connection delivered %d of %d bytes: %v", n, sent, err)
		}
		if g.needsReset() || g.conns() != 2 {
			t.Errorf("needs reset %v, %d connections", g.needsReset(), g.conns())
		}
	})
	t.Run("device window", func(t *testing.T) {
		// The host does not read: the device takes what its socket and
		// its buffer hold, and a guest ignoring the credit is reset.
		g := newVsGuest(t, vsOpts{})
		ln := g.hostListen(62)
		g.send(pkt(vsockOpRequest, 62, 62), nil)
		g.recvOp(vsockOpResponse)
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		chunk := make([]byte, 32<<10)
		sent := 0
		for ; sent < 16<<20; sent += len(chunk) {
			g.send(pkt(vsockOpRW, 62, 62), chunk)
			if h, _, ok := g.poll(); ok {
				if h.op == vsockOpRST {
					break
				}
				if h.op != vsockOpCreditUpdate || h.fwdCnt > uint32(sent+len(chunk)) {
					t.Fatalf("unexpected %+v", h)
				}
			}
		}
		if sent >= 16<<20 {
			t.Fatal("a guest sending beyond its credit was never reset")
		}
		t.Logf("reset after %d KiB", sent>>10)
		waitFor(t, "connection removed", func() bool { return g.conns() == 0 })
		if g.needsReset() {
			t.Error("NEEDS_RESET")
		}
	})
}

func TestVsockShutdown(t *testing.T) {
	t.Run("host half-close", func(t *testing.T) {
		g := newVsGuest(t, vsOpts{})
		c, br, hp := establishHost(t, g, 70, 1<<20)
		c.Write([]byte("last words"))
		c.CloseWrite()
		if d := recvData(t, g, 70, hp, 10); string(d) != "last words" {
			t.Fatalf("got %q", d)
		}
		h, _ := g.recvOp(vsockOpShutdown)
		if h.flags != vsockShutSEND {
			t.Fatalf("shutdown flags %d after a half-close, want SEND", h.flags)
		}
		// The guest can still send.
		g.send(pkt(vsockOpRW, 70, hp), []byte("reply"))
		b := make([]byte, 5)
		if _, err := io.ReadFull(br, b); err != nil || string(b) != "reply" {
			t.Fatalf("host read %q, %v", b, err)
		}
		// The guest is done too: the host sees EOF, the guest gets RST.
		sh := pkt(vsockOpShutdown, 70, hp)
		sh.flags = vsockShutSEND
		g.send(sh, nil)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(br); err != nil || len(b) != 0 {
			t.Fatalf("host read %q, %v", b, err)
		}
		g.recvOp(vsockOpRST)
		waitFor(t, "connection removed", func() bool { return g.conns() == 0 })
	})
	t.Run("guest half-close", func(t *testing.T) {
		g := newVsGuest(t, vsOpts{})
		c, br, hp := establishHost(t, g, 71, 1<<20)
		g.send(pkt(vsockOpRW, 71, hp), []byte("request"))
		sh := pkt(vsockOpShutdown, 71, hp)
		sh.flags = vsockShutSEND
		g.send(sh, nil)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(br); err != nil || string(b) != "request" {
			t.Fatalf("host read %q, %v", b, err)
		}
		c.Write([]byte("response"))
		if d := recvData(t, g, 71, hp, 8); string(d) != "response" {
			t.Fatalf("got %q", d)
		}
		c.Close()
		h, _ := g.recvOp(vsockOpShutdown)
		if h.flags&vsockShutSEND == 0 {
			t.Fatalf("shutdown %+v", h)
		}
		// The connection is over either way; the RST (or the timer)
		// removes it.
		g.send(pkt(vsockOpRST, 71, hp), nil)
		waitFor(t, "connection removed", func() bool { return g.conns() == 0 })
	})
	t.Run("guest rst", func(t *testing.T) {
		g := newVsGuest(t, vsOpts{})
		c, _, hp := establishHost(t, g, 72, 1<<20)
		g.send(pkt(vsockOpRST, 72, hp), nil)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "connection removed", func() bool { return g.conns() == 0 })
		g.quiet(20 * time.Millisecond)
	})
	t.Run("guest never answers the close", func(t *testing.T) {
		g := newVsGuest(t, vsOpts{})
		c, _, hp := establishHost(t, g, 73, 1<<20)
		c.Close()
		g.recvOp(vsockOpShutdown)
		start := time.Now()
		h, _ := g.recvOp(vsockOpRST)
		if h.dstPort != 73 || h.srcPort != hp || time.Since(start) < vsockCloseTimeout/2 {
			t.Fatalf("rst %+v after %v", h, time.Since(start))
		}
		waitFor(t, "connection removed", func() bool { return g.conns() == 0 })
	})
}

// TestVsockBeforeActivation: host connections made before the driver is
// up wait for it.
func TestVsockBeforeActivation(t *testing.T) {
	g := newVsGuest(t, vsOpts{noInit: true})
	c := g.dialHost(80)
	time.Sleep(20 * time.Millisecond) // let the CONNECT line be read
	g.init(false)
	h, _ := g.recvOp(vsockOpRequest)
	if h.dstPort != 80 {
		t.Fatalf("request %+v", h)
	}
	g.send(pkt(vsockOpResponse, 80, h.srcPort), nil)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != fmt.Sprintf("OK %d\n", h.srcPort) {
		t.Fatalf("host read %q, %v", line, err)
	}
}

// TestVsockReset: a driver reset drops every connection; the device works
// again afterwards.
func TestVsockReset(t *testing.T) {
	g := newVsGuest(t, vsOpts{})
	c, _, _ := establishHost(t, g, 90, 1<<20)
	wr(g.m, regStatus, 0)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("host read after reset: %v", err)
	}
	g.init(true)
	c2, br, hp := establishHost(t, g, 90, 1<<20)
	g.send(pkt(vsockOpRW, 90, hp), []byte("again"))
	b := make([]byte, 5)
	if _, err := io.ReadFull(br, b); err != nil || string(b) != "again" {
		t.Fatalf("host read %q, %v", b, err)
	}
	c2.Close()
}

// TestVsockCloseLeavesNothing: Close removes the socket file, closes every
// host connection and stops every goroutine.
func TestVsockCloseLeavesNothing(t *testing.T) {
	before := runtime.NumGoroutine()
	g := newVsGuest(t, vsOpts{})
	ln := g.hostListen(100)
	established, _, _ := establishHost(t, g, 100, 1<<20)
	g.send(pkt(vsockOpRequest, 555, 100), nil)
	g.recvOp(vsockOpResponse)
	hs, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	requested := g.dialHost(101) // REQUEST sent, no answer
	g.recvOp(vsockOpRequest)
	silent, err := net.Dial("unix", g.uds) // never sends CONNECT
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	time.Sleep(20 * time.Millisecond)

	g.m.Close()
	if err := g.dev.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g.uds); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after Close: %v", err)
	}
	for name, c := range map[string]net.Conn{"established": established, "guest-initiated": hs, "requested": requested, "silent": silent} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("%s host connection not closed: %v", name, err)
		}
	}
	if err := g.dev.Activate(&Queues{Queues: make([]*Queue, 3)}); !errors.Is(err, ErrVsockClosed) {
		t.Errorf("Activate after Close: %v", err)
	}
	if err := g.dev.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestVsockStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.sock")
	// A socket file nobody accepts on is replaced.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	v, err := NewVsock(3, path, nil)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	// A live one is not.
	if v2, err := NewVsock(4, path, nil); err == nil {
		v2.Close()
		t.Error("NewVsock took over a live socket")
	}
	v.Close()
	// Nor is a regular file.
	os.WriteFile(path, nil, 0o644)
	if v3, err := NewVsock(3, path, nil); err == nil {
		v3.Close()
		t.Error("NewVsock replaced a regular file")
	}
}

// TestVsockStreams runs several connections at once through a guest that
// plays a full vsock stack with its own small window: host-initiated
// connections echoed by the guest, and guest-initiated ones echoed by a
// host service.
func TestVsockStreams(t *testing.T) {
	const (
		conns    = 4
		size     = 512 << 10
		guestBuf = 32 << 10
	)
	for _, hostInit := range []bool{true, false} {
		t.Run(fmt.Sprintf("hostInitiated=%v", hostInit), func(t *testing.T) {
			g := newVsGuest(t, vsOpts{eventIdx: true})
			s := &streamGuest{g: g, t: t, window: guestBuf}
			var wg sync.WaitGroup
			errs := make(chan error, 2*conns)
			if hostInit {
				// Host clients send size random bytes and read them back
				// from the guest's echo.
				for i := 0; i < conns; i++ {
					c := g.dialHost(5000)
					wg.Add(2)
					data := make([]byte, size)
					rand.New(rand.NewSource(int64(i))).Read(data)
					br := bufio.NewReader(c)
					go func() {
						defer wg.Done()
						if _, err := br.ReadString('\n'); err != nil {
							errs <- err
							wg.Done() // no writer
							return
						}
						go func() {
							defer wg.Done()
							if _, err := c.Write(data); err != nil {
								errs <- err
							}
						}()
						got := make([]byte, size)
						if _, err := io.ReadFull(br, got); err != nil {
							errs <- fmt.Errorf("host read: %w", err)
						} else if !bytes.Equal(got, data) {
							errs <- errors.New("host read different data")
						}
						c.Close()
					}()
				}
				s.want = conns
			} else {
				// A host echo service; the guest sends and checks.
				ln := g.hostListen(6000)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < conns; i++ {
						c, err := ln.Accept()
						if err != nil {
							errs <- err
							return
						}
						wg.Add(1)
						go func() {
							defer wg.Done()
							io.Copy(c, c)
							c.Close()
						}()
					}
				}()
				for i := 0; i < conns; i++ {
					data := make([]byte, size)
					rand.New(rand.NewSource(int64(100 + i))).Read(data)
					gc := &gconn{gp: uint32(3000 + i), hp: 6000, source: data, out: data}
					s.conns = append(s.conns, gc)
					g.send(s.hdr(gc, vsockOpRequest), nil)
				}
				s.want = conns
			}
			s.run()
			var rcv, snd uint32
			for _, c := range s.conns {
				rcv += c.rcvCnt
				snd += c.txCnt
			}
			if rcv != conns*size || snd != conns*size {
				t.Errorf("the guest received %d bytes and sent %d, want %d each way", rcv, snd, conns*size)
			}
			t.Logf("%d connections, %d KiB each way, %d credit updates from the device", len(s.conns), rcv>>10, s.updates)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			waitFor(t, "connections removed", func() bool { return g.conns() == 0 })
			if g.needsReset() {
				t.Error("NEEDS_RESET")
			}
		})
	}
}

// gconn is one connection in streamGuest.
type gconn struct {
	gp, hp  uint32
	source  []byte // guest-initiated: what the guest sends and expects back
	out     []byte // to send: the rest of source, or data to echo
	in      []byte // guest-initiated: received so far
	rcvCnt  uint32 // bytes received
	fwdCnt  uint32 // bytes consumed
	lastFwd uint32 // fwd_cnt last told to the device
	txCnt   uint32
	peerBuf uint32
	peerFwd uint32
	open    bool // RESPONSE seen (guest-initiated) or sent (host-initiated)
	shut    bool // guest-initiated: SHUTDOWN(SEND) sent
	done    bool
}

// streamGuest is a minimal guest vsock stack: it answers REQUESTs on any
// port with an echo, or drives connections it opened, honouring credit
// both ways and checking the device honours its own.
type streamGuest struct {
	g       *vsGuest
	sendf   func(vsockHdr, []byte) // how packets go out; g.send if nil
	t       *testing.T
	window  uint32
	conns   []*gconn
	want    int // connections to finish
	updates int // CREDIT_UPDATEs received
}

func (s *streamGuest) send(h vsockHdr, payload []byte) {
	if s.sendf != nil {
		s.sendf(h, payload)
		return
	}
	s.g.send(h, payload)
}

func (s *streamGuest) hdr(c *gconn, op uint16) vsockHdr {
	h := pkt(op, c.gp, c.hp)
	h.bufAlloc, h.fwdCnt = s.window, c.fwdCnt
	c.lastFwd = c.fwdCnt
	return h
}

func (s *streamGuest) run() {
	t := s.t
	finished := 0
	deadline := time.Now().Add(60 * time.Second)
	for finished < s.want {
		if time.Now().After(deadline) {
			t.Fatalf("streams did not finish: %d of %d", finished, s.want)
		}
		busy := false
		for {
			h, d, ok := s.g.poll()
			if !ok {
				break
			}
			busy = true
			if s.packet(h, d) {
				finished++
			}
		}
		for _, c := range s.conns {
			if s.push(c) {
				busy = true
			}
		}
		if !busy {
			time.Sleep(50 * time.Microsecond)
		}
	}
}

// packet handles one packet from the device; it reports a finished
// connection.
func (s *streamGuest) packet(h vsockHdr, d []byte) bool {
	t := s.t
	if h.op == vsockOpRequest {
		c := &gconn{gp: h.dstPort, hp: h.srcPort, peerBuf: h.bufAlloc, peerFwd: h.fwdCnt, open: true}
		s.conns = append(s.conns, c)
		s.send(s.hdr(c, vsockOpResponse), nil)
		return false
	}
	var c *gconn
	for _, x := range s.conns {
		if x.gp == h.dstPort && x.hp == h.srcPort && !x.done {
			c = x
		}
	}
	if c == nil {
		if h.op != vsockOpRST {
			t.Fatalf("packet %+v for no connection", h)
		}
		return false
	}
	c.peerBuf, c.peerFwd = h.bufAlloc, h.fwdCnt
	switch h.op {
	case vsockOpResponse:
		c.open = true
	case vsockOpRW:
		c.rcvCnt += uint32(len(d))
		if c.rcvCnt-c.lastFwd > s.window {
			t.Fatalf("device sent %d bytes beyond the guest's credit", c.rcvCnt-c.lastFwd-s.window)
		}
		if c.source != nil {
			c.in = append(c.in, d...)
			c.fwdCnt += uint32(len(d)) // consumed at once
		} else {
			c.out = append(c.out, d...) // consumed when echoed
		}
	case vsockOpShutdown:
		if c.source != nil && !bytes.Equal(c.in, c.source) {
			t.Fatalf("connection %d: echo of %d bytes differs (got %d)", c.gp, len(c.source), len(c.in))
		}
		if h.flags&vsockShutSEND != 0 && (c.source != nil || h.flags&vsockShutRCV != 0) {
			s.send(s.hdr(c, vsockOpRST), nil)
			c.done = true
			return true
		}
	case vsockOpRST:
		t.Fatalf("connection %d reset by the device", c.gp)
	case vsockOpCreditUpdate:
		s.updates++
	case vsockOpCreditRequest:
		s.send(s.hdr(c, vsockOpCreditUpdate), nil)
	}
	return false
}

// push sends what c may send; it reports whether it sent anything.
func (s *streamGuest) push(c *gconn) bool {
	if c.done || !c.open {
		return false
	}
	sent := false
	for len(c.out) > 0 {
		inFlight := c.txCnt - c.peerFwd
		if inFlight >= c.peerBuf {
			break
		}
		n := min(len(c.out), int(c.peerBuf-inFlight), 16<<10)
		if c.source == nil {
			c.fwdCnt += uint32(n) // echoing consumes
		}
		s.send(s.hdr(c, vsockOpRW), c.out[:n])
		c.out = c.out[n:]
		c.txCnt += uint32(n)
		sent = true
	}
	if c.source != nil && len(c.out) == 0 && !c.shut {
		h := s.hdr(c, vsockOpShutdown)
		h.flags = vsockShutSEND
		s.send(h, nil)
		c.shut = true
		sent = true
	}
	if c.fwdCnt-c.lastFwd >= s.window/2 {
		s.send(s.hdr(c, vsockOpCreditUpdate), nil)
		sent = true
	}
	return sent
}

// TestVsockBounded: a guest that never gives RX buffers cannot make the
// device queue unbounded replies, and the connection cap holds.
func TestVsockBounded(t *testing.T) {
	uds := filepath.Join(t.TempDir(), "v.sock")
	r := newVsockRun(vsTestCID, uds, &Queues{}, t.Logf)
	defer r.stop()
	for i := 0; i < 3*vsockMaxQueuedRST; i++ {
		h := pkt(vsockOpRW, uint32(i), 1)
		r.packet(&h, &Reader{})
	}
	if len(r.rsts) != vsockMaxQueuedRST {
		t.Errorf("%d RSTs queued, want the cap %d", len(r.rsts), vsockMaxQueuedRST)
	}
	r.rsts = nil

	// At the connection cap, guest REQUESTs get RST and host
	// connections are closed.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: uds + "_7", Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for i := 0; i < vsockMaxConns; i++ {
		r.conns[vsockKey{local: 1 << 20, peer: uint32(i)}] = nil
	}
	h := pkt(vsockOpRequest, 5, 7)
	r.packet(&h, &Reader{})
	if len(r.rsts) != 1 || len(r.conns) != vsockMaxConns {
		t.Errorf("request at the cap: %d RSTs, %d connections", len(r.rsts), len(r.conns))
	}
	a, b, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r.hostConnect(a, 9)
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(b); err != nil || len(r.conns) != vsockMaxConns {
		t.Errorf("host connection at the cap: %v, %d connections", err, len(r.conns))
	}
	clear(r.conns)

	// Connections broken before any RX buffer leave nothing behind in
	// the ready list.
	for i := 0; i < 50; i++ {
		h := pkt(vsockOpRequest, uint32(100+i), 7)
		r.packet(&h, &Reader{})
		h.op = 42
		r.packet(&h, &Reader{})
	}
	if len(r.ready) != 0 || len(r.conns) != 0 || len(r.rsts) != 51 {
		t.Errorf("%d ready, %d connections, %d RSTs", len(r.ready), len(r.conns), len(r.rsts))
	}
}

// socketPair returns two connected Unix stream sockets.
func socketPair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var cs [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		cs[i] = c.(*net.UnixConn)
	}
	return cs[0], cs[1], nil
}
