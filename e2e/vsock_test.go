//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Vsock test traffic: vsockStreams connections each way at once, 64 MiB in
// all per direction.
const (
	vsockStreams   = 4
	vsockPerStream = 16 << 20
	vsockHostPort  = 5000 // guest -> host: the host listens on UDS_5000
	vsockGuestPort = 6000 // host -> guest: the guest listens
)

// sendStream writes n deterministic pseudo-random bytes (seeded by seed)
// with write and returns their SHA-256.
func sendStream(write func([]byte) error, seed byte, n int) (string, error) {
	src := rand.NewChaCha8([32]byte{seed})
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for n > 0 {
		b := buf[:min(n, len(buf))]
		src.Read(b)
		h.Write(b)
		if err := write(b); err != nil {
			return "", err
		}
		n -= len(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// TestVsock moves 64 MiB each way over vsock, in several concurrent
// streams, checksummed at both ends: host programs reach a guest
// listener through the hybrid socket (CONNECT <port>), and guest
// connections to CID 2 reach a host listener on UDS_<port>.
func TestVsock(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	uds := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", uds, vsockHostPort))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var errs []string
	fail := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, fmt.Sprintf(format, a...))
	}
	received := 0
	go func() { // guest -> host: hash what arrives, answer the hash
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				n, err := io.Copy(h, c)
				if err != nil {
					fail("guest->host stream: %v after %d bytes", err, n)
					return
				}
				mu.Lock()
				received++
				mu.Unlock()
				fmt.Fprintf(c, "%s\n", hex.EncodeToString(h.Sum(nil)))
			}()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, vesselBin, "vm", "run", "--kernel", filepath.Join(guestDir, "bzImage"),
		"--initrd", guestInitrd(t), "--memory", "512M", "--vsock", uds,
		"--", "/e2e.test", "-e2e.guest", "-test.run", "^TestGuestVsock$", "-test.v")
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	var wg sync.WaitGroup
	for i := 0; i < vsockStreams; i++ {
		wg.Add(1)
		go func() { // host -> guest
			defer wg.Done()
			if err := hostToGuest(ctx, uds, byte(i)); err != nil {
				fail("host->guest stream %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	err = <-done
	elapsed := time.Since(start)
	out := stdout.String()
	if err != nil || !strings.Contains(out, "--- PASS: TestGuestVsock") {
		t.Fatalf("vessel: %v after %v\n--- stdout ---\n%s\n--- stderr ---\n%s", err, elapsed, out, stderr.String())
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range errs {
		t.Error(e)
	}
	if received != vsockStreams {
		t.Errorf("host received %d complete guest streams, want %d", received, vsockStreams)
	}
	t.Logf("%d MiB each way in %d streams; whole run %v", vsockStreams*vsockPerStream>>20, vsockStreams, elapsed.Round(time.Millisecond))
	if _, err := os.Stat(uds); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("vessel left its socket %s behind (%v)", uds, err)
	}
}

// hostToGuest connects through the hybrid socket (retrying until the guest
// listens), sends one stream and checks the hash the guest answers.
func hostToGuest(ctx context.Context, uds string, seed byte) error {
	var c *net.UnixConn
	var r *bufio.Reader
	for {
		if ctx.Err() != nil {
			return fmt.Errorf("no guest listener on port %d before the timeout", vsockGuestPort)
		}
		conn, err := net.Dial("unix", uds)
		if err == nil {
			c = conn.(*net.UnixConn)
			fmt.Fprintf(c, "CONNECT %d\n", vsockGuestPort)
			r = bufio.NewReader(c)
			line, err := r.ReadString('\n')
			if err == nil && strings.HasPrefix(line, "OK ") {
				break
			}
			c.Close()
		}
		time.Sleep(500 * time.Millisecond)
	}
	defer c.Close()
	want, err := sendStream(func(b []byte) error { _, err := c.Write(b); return err }, seed, vsockPerStream)
	if err != nil {
		return err
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("no hash from the guest: %v", err)
	}
	if strings.TrimSpace(got) != want {
		return fmt.Errorf("guest hashed %s, host sent %s", strings.TrimSpace(got), want)
	}
	return nil
}

// TestGuestVsock is the guest half of TestVsock.
func TestGuestVsock(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of TestVsock; runs inside the VM")
	}
	lfd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("vsock socket: %v", err)
	}
	defer unix.Close(lfd)
	if err := unix.Bind(lfd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: vsockGuestPort}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, vsockStreams); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errc := make(chan error, 2*vsockStreams)
	for i := 0; i < vsockStreams; i++ { // host -> guest: hash and answer
		fd, _, err := unix.Accept(lfd)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer unix.Close(fd)
			h := sha256.New()
			buf := make([]byte, 64<<10)
			for {
				n, err := unix.Read(fd, buf)
				if n > 0 {
					h.Write(buf[:n])
				}
				if n == 0 || (err != nil && err != unix.EINTR) {
					break
				}
			}
			writeAll(fd, []byte(hex.EncodeToString(h.Sum(nil))+"\n"))
		}()
		if i == 0 {
			// The host is sending: now stream to it at the same time.
			for j := 0; j < vsockStreams; j++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errc <- guestToHost(byte(100 + j))
				}()
			}
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Error(err)
		}
	}
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// guestToHost sends one stream to the host listener and checks its hash.
func guestToHost(seed byte) error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_HOST, Port: vsockHostPort}); err != nil {
		return fmt.Errorf("connect to the host: %w", err)
	}
	want, err := sendStream(func(b []byte) error { return writeAll(fd, b) }, seed, vsockPerStream)
	if err != nil {
		return fmt.Errorf("guest->host stream %d: %w", seed, err)
	}
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		return err
	}
	var reply []byte
	buf := make([]byte, 128)
	for {
		n, err := unix.Read(fd, buf)
		reply = append(reply, buf[:max(n, 0)]...)
		if n <= 0 || err != nil {
			break
		}
	}
	if got := strings.TrimSpace(string(reply)); got != want {
		return fmt.Errorf("guest->host stream %d: host hashed %q, guest sent %s", seed, got, want)
	}
	return nil
}
