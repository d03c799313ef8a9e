package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Result is one measured transfer: what a workload prints on a RESULT
// line in the guest, or returns on the host.
type Result struct {
	Name    string  `json:"name"`
	Bytes   int64   `json:"bytes"`
	Ops     int64   `json:"ops,omitempty"`
	Seconds float64 `json:"seconds"`
	Note    string  `json:"note,omitempty"`
}

// MiBps is the throughput in MiB/s.
func (r Result) MiBps() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Bytes) / (1 << 20) / r.Seconds
}

// IOPS is operations per second.
func (r Result) IOPS() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Seconds
}

// resultPrefix marks result lines on the guest console.
const resultPrefix = "RESULT "

// listeningLine tells the host that a guest server is ready.
const listeningLine = "BENCH LISTENING"

func printResult(r Result) {
	b, _ := json.Marshal(r)
	fmt.Printf("%s%s\n", resultPrefix, b)
}

// parseResults picks the RESULT lines out of console output.
func parseResults(out string) ([]Result, error) {
	var rs []Result
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		i := strings.Index(line, resultPrefix)
		if i < 0 {
			continue
		}
		var r Result
		if err := json.Unmarshal([]byte(line[i+len(resultPrefix):]), &r); err != nil {
			return nil, fmt.Errorf("bad result line %q: %w", line, err)
		}
		rs = append(rs, r)
	}
	return rs, nil
}

const (
	seqRecord  = 1 << 20
	randRecord = 4 << 10
)

// alignedBuf returns a page-aligned buffer (O_DIRECT needs alignment),
// filled with pseudo-random bytes.
func alignedBuf(n int) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap %d: %w", n, err)
	}
	src := rand.NewChaCha8([32]byte{42})
	src.Read(b)
	return b, nil
}

// openDirect opens path with O_DIRECT, or without it (noted) where the
// file system refuses it (tmpfs).
func openDirect(path string, flag int) (*os.File, string, error) {
	f, err := os.OpenFile(path, flag|unix.O_DIRECT, 0)
	if err == nil {
		return f, "", nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return nil, "", err
	}
	f, err = os.OpenFile(path, flag, 0)
	return f, "no O_DIRECT on this file system: page cache", err
}

// blockWorkloads writes size bytes sequentially in 1 MiB records (then
// fdatasync), reads them back, and does 4 KiB random reads for at most
// ops operations or dur, on path.
func blockWorkloads(path string, size int64, ops int64, dur time.Duration) ([]Result, error) {
	buf, err := alignedBuf(seqRecord)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(buf)
	var rs []Result

	f, note, err := openDirect(path, os.O_RDWR)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	start := time.Now()
	for off := int64(0); off < size; off += seqRecord {
		if _, err := f.WriteAt(buf, off); err != nil {
			return nil, fmt.Errorf("write %s at %d: %w", path, off, err)
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return nil, fmt.Errorf("fdatasync %s: %w", path, err)
	}
	rs = append(rs, Result{Name: "block seq write 1 MiB", Bytes: size, Seconds: time.Since(start).Seconds(), Note: note})

	// A fresh descriptor, and the page cache of the host baseline
	// dropped where it can be, so reads come from the device or file.
	unix.Fadvise(int(f.Fd()), 0, size, unix.FADV_DONTNEED)
	start = time.Now()
	for off := int64(0); off < size; off += seqRecord {
		if _, err := f.ReadAt(buf, off); err != nil {
			return nil, fmt.Errorf("read %s at %d: %w", path, off, err)
		}
	}
	rs = append(rs, Result{Name: "block seq read 1 MiB", Bytes: size, Seconds: time.Since(start).Seconds(), Note: note})

	rng := rand.New(rand.NewPCG(1, 2))
	small := buf[:randRecord]
	blocks := size / randRecord
	start = time.Now()
	var n int64
	for n < ops && time.Since(start) < dur {
		off := rng.Int64N(blocks) * randRecord
		if _, err := f.ReadAt(small, off); err != nil {
			return nil, fmt.Errorf("random read %s at %d: %w", path, off, err)
		}
		n++
	}
	rs = append(rs, Result{Name: "block rand read 4 KiB", Bytes: n * randRecord, Ops: n, Seconds: time.Since(start).Seconds(), Note: note})
	return rs, nil
}

// stream is a TCP or vsock connection.
type stream interface {
	io.ReadWriteCloser
	CloseWrite() error
}

// sendAll writes n bytes to c in 64 KiB writes and returns the time it
// took until the peer acknowledged the end (closed its side).
func sendAll(c stream, n int64) (time.Duration, error) {
	buf := make([]byte, 64<<10)
	rand.NewChaCha8([32]byte{7}).Read(buf)
	start := time.Now()
	for left := n; left > 0; {
		k := min(left, int64(len(buf)))
		if _, err := c.Write(buf[:k]); err != nil {
			return 0, err
		}
		left -= k
	}
	if err := c.CloseWrite(); err != nil {
		return 0, err
	}
	// The receiver closes once it has read everything.
	io.Copy(io.Discard, c)
	return time.Since(start), nil
}

// recvAll reads c to its end and closes it; the time runs from the first
// byte.
func recvAll(c io.ReadCloser) (int64, time.Duration, error) {
	defer c.Close()
	buf := make([]byte, 256<<10)
	var n int64
	var start time.Time
	for {
		k, err := c.Read(buf)
		if k > 0 && n == 0 {
			start = time.Now()
		}
		n += int64(k)
		if err == io.EOF {
			return n, time.Since(start), nil
		}
		if err != nil {
			return n, 0, err
		}
	}
}

// vsockStream is an AF_VSOCK stream socket (net.FileConn does not take
// that family); the non-blocking descriptor waits in Go's poller.
type vsockStream struct {
	*os.File
	fd int
}

// CloseWrite shuts the sending side down.
func (v vsockStream) CloseWrite() error { return unix.Shutdown(v.fd, unix.SHUT_WR) }

func newVsockStream(fd int) vsockStream {
	return vsockStream{File: os.NewFile(uintptr(fd), "vsock"), fd: fd}
}

// dialVsock connects to the host (CID 2) on port.
func dialVsock(port uint32) (stream, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_HOST, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock connect 2:%d: %w", port, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return newVsockStream(fd), nil
}

// acceptVsock listens on port, says so, and accepts one connection.
func acceptVsock(port uint32) (stream, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		return nil, err
	}
	if err := unix.Listen(fd, 1); err != nil {
		return nil, err
	}
	fmt.Println(listeningLine)
	nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
	if err != nil {
		return nil, err
	}
	return newVsockStream(nfd), nil
}

// vsockListener is a host AF_VSOCK listener: guests of a vhost-vsock
// device reach it at CID 2.
type vsockListener struct{ f *os.File }

// listenVsock listens on the host's vsock port.
func listenVsock(port uint32) (*vsockListener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 4); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock listen port %d: %w", port, err)
	}
	// Non-blocking: the descriptor waits in Go's poller, and close ends
	// a pending accept.
	return &vsockListener{f: os.NewFile(uintptr(fd), "vsock-listener")}, nil
}

// accept waits for one connection.
func (l *vsockListener) accept() (io.ReadCloser, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		return aerr != unix.EAGAIN
	})
	if err != nil {
		return nil, err
	}
	if aerr != nil {
		return nil, fmt.Errorf("vsock accept: %w", aerr)
	}
	return newVsockStream(nfd), nil
}

func (l *vsockListener) close() { l.f.Close() }

// vsockSend connects to a guest's vsock port (CID cid) from the host,
// retrying while the guest's listener is not up, and sends n bytes.
func vsockSend(cid, port uint32, n int64) error {
	var err error
	for i := 0; i < 20; i++ {
		var fd int
		fd, err = unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("vsock socket: %w", err)
		}
		if err = unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: port}); err == nil {
			if err := unix.SetNonblock(fd, true); err != nil {
				unix.Close(fd)
				return err
			}
			c := newVsockStream(fd)
			defer c.Close()
			_, err = sendAll(c, n)
			return err
		}
		unix.Close(fd)
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("vsock connect %d:%d: %w", cid, port, err)
}
