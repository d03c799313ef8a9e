package virtio

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
)

// vsockFuzzSeed lays out a small 16-entry queue (small, so that the
// fuzzer minimises fast) with the given packets as TX chains (one
// descriptor each), followed by two writable RX-style buffers.
func vsockFuzzSeed(pkts ...[]byte) []byte {
	const desc, avail, used, bufs = 0x100, 0x200, 0x280, 0x400
	seed := make([]byte, bufs, 0x1000)
	seed[0] = 4 // size 16
	binary.LittleEndian.PutUint16(seed[1:], desc)
	binary.LittleEndian.PutUint16(seed[3:], avail)
	binary.LittleEndian.PutUint16(seed[5:], used)
	add := func(i int, n uint32, flags uint16) {
		d := seed[desc+16*i:]
		binary.LittleEndian.PutUint64(d, uint64(len(seed)))
		binary.LittleEndian.PutUint32(d[8:], n)
		binary.LittleEndian.PutUint16(d[12:], flags)
		binary.LittleEndian.PutUint16(seed[avail+4+2*i:], uint16(i))
	}
	n := 0
	for _, p := range pkts {
		add(n, uint32(len(p)), 0)
		seed = append(seed, p...)
		seed = append(seed, make([]byte, -len(seed)&15)...)
		n++
	}
	for i := 0; i < 2; i++ {
		add(n, vsockHdrSize+64, descFWrite)
		seed = append(seed, make([]byte, vsockHdrSize+64)...)
		n++
	}
	binary.LittleEndian.PutUint16(seed[avail+2:], uint16(n)) // avail idx
	return seed
}

func vsockFuzzPkt(op uint16, srcPort, dstPort uint32, flags uint32, payload []byte) []byte {
	h := vsockHdr{srcCID: vsTestCID, dstCID: vsockHostCID, srcPort: srcPort, dstPort: dstPort,
		len: uint32(len(payload)), typ: vsockTypeStream, op: op, flags: flags, bufAlloc: 1 << 16}
	b := make([]byte, vsockHdrSize, vsockHdrSize+len(payload))
	h.encode(b)
	return append(b, payload...)
}

// FuzzVsockTX feeds fuzzed TX chains to the vsock packet parser of one
// activation, then lets it write its replies into whatever writable
// chains the same fuzzed queue offers. A host service listens on port 5,
// so that connections really open, take data and close. No panic, no
// hang, no error other than ErrQueue, used lengths within the chains,
// bounded state, and every goroutine gone at the end.
//
// Coverage varies a little between runs (host sockets, goroutines), so the
// fuzzer keeps finding "new" inputs and minimising them; run with a short
// -fuzzminimizetime (e.g. 1s) to spend the time fuzzing instead.
func FuzzVsockTX(f *testing.F) {
	uds := filepath.Join(f.TempDir(), "v.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: uds + "_5", Net: "unix"})
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()

	f.Add(vsockFuzzSeed(
		vsockFuzzPkt(vsockOpRequest, 100, 5, 0, nil),
		vsockFuzzPkt(vsockOpRW, 100, 5, 0, []byte("hello host")),
		vsockFuzzPkt(vsockOpCreditRequest, 100, 5, 0, nil),
		vsockFuzzPkt(vsockOpShutdown, 100, 5, vsockShutRCV|vsockShutSEND, nil),
	))
	f.Add(vsockFuzzSeed(
		vsockFuzzPkt(vsockOpRequest, 101, 6, 0, nil), // nobody on port 6
		vsockFuzzPkt(vsockOpRW, 102, 5, 0, []byte("unknown connection")),
		vsockFuzzPkt(99, 103, 5, 0, nil),
		vsockFuzzPkt(vsockOpRST, 104, 5, 0, nil),
	))
	f.Add(vsockFuzzSeed(
		vsockFuzzPkt(vsockOpRequest, 100, 5, 0, nil),
		vsockFuzzPkt(vsockOpRW, 100, 5, 0, make([]byte, 200))[:vsockHdrSize+50], // len beyond the chain
		vsockFuzzPkt(vsockOpRW, 100, 5, 0, nil)[:20],                            // short header
	))
	f.Fuzz(func(t *testing.T, data []byte) { vsockFuzzOne(t, uds, data) })
}

func vsockFuzzOne(t *testing.T, uds string, data []byte) {
	{
		q, ok := fuzzQueue(t, data)
		if !ok {
			return
		}
		r := newVsockRun(vsTestCID, uds, &Queues{Queues: []*Queue{q, q, q}}, nil)
		defer r.stop()
		for i := 0; i < 64; i++ {
			c, err := q.Pop()
			if err != nil || c == nil {
				break
			}
			if c.WritableLen() >= vsockHdrSize && c.ReadableLen() == 0 {
				// An RX-style buffer: fill it with a reply, if any.
				n, ok, err := r.fill(c)
				if err != nil {
					t.Fatalf("fill: %v", err) // the buffer holds a header
				}
				if uint64(n) > c.WritableLen() || (!ok && n != 0) {
					t.Fatalf("rx used length %d for %d writable bytes (sent %v)", n, c.WritableLen(), ok)
				}
				q.Push(c.Head, n)
				continue
			}
			n, err := r.handleTX(c)
			if err != nil {
				if !errors.Is(err, ErrQueue) {
					t.Fatalf("tx error not wrapping ErrQueue: %v", err)
				}
				break
			}
			if n != 0 {
				t.Fatalf("tx used length %d", n)
			}
			q.Push(c.Head, 0)
		}
		r.mu.Lock()
		nconns, nrst := len(r.conns), len(r.rsts)
		r.mu.Unlock()
		if nconns > vsockMaxConns || nrst > vsockMaxQueuedRST+vsockMaxConns {
			t.Fatalf("%d connections, %d queued RSTs", nconns, nrst)
		}
	}
}
