//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdlayher/vsock"
)

// Vsock test traffic: vsockStreams connections each way at once, 64 MiB in
// all per direction.
const (
	vsockStreams   = 4
	vsockPerStream = 16 << 20
	vsockHostPort  = 5000 // guest -> host: the host listens on UDS_5000
	vsockGuestPort = 6000 // host -> guest: the guest listens
)

// TestVsock moves 64 MiB each way over vsock, in several concurrent
// streams, checksummed at both ends: host programs reach a guest
// listener through the hybrid socket (CONNECT <port>), and guest
// connections to CID 2 reach a host listener on UDS_<port>.
func TestVsock(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	a := vsockAttempt(t)
	if why, flaky := platformFlake(a.r); flaky {
		t.Logf("RETRY: vessel vsock run: %s; retrying once:\n%v", why, a.r)
		a = vsockAttempt(t)
	}
	if a.err != nil || a.r.code != 0 || !strings.Contains(a.r.stdout, "--- PASS: TestGuestVsock") {
		t.Fatalf("vessel: %v, %s; %v", a.err, a.progress(), a.r)
	}
	for _, e := range a.errs {
		t.Error(e)
	}
	if a.received != vsockStreams {
		t.Errorf("host received %d complete guest streams, want %d", a.received, vsockStreams)
	}
	t.Logf("%d MiB each way in %d streams; whole run %v", vsockStreams*vsockPerStream>>20, vsockStreams, a.r.elapsed.Round(time.Millisecond))
	if _, err := os.Stat(a.uds); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("vessel left its socket %s behind (%v)", a.uds, err)
	}
}

// vsockRun is one run of the vsock traffic test.
type vsockRun struct {
	uds      string
	r        result
	err      error    // the run did not end by itself (timeout or stall)
	errs     []string // stream failures seen on the host
	received int      // guest -> host streams received completely
	sent     atomic.Int64
	got      atomic.Int64
}

func (a *vsockRun) progress() string {
	return fmt.Sprintf("host sent %d and received %d bytes", a.sent.Load(), a.got.Load())
}

// The run is bounded by progress, not by its total time, which depends on
// how loaded the host of the emulated platform is (a busy host core
// doubles it): it fails when the traffic stands still (no byte moving
// either way on the host side) for vsockStall, or has not begun within
// vsockBoot (a guest that never came up), and a stalled vessel gets
// SIGUSR2, so that it describes its VM (vCPUs, rings) in stderr and exits
// 125, which tells the platform's known faults (platformFlake) from a
// stall of vessel's. vsockTimeout bounds the whole run.
const (
	vsockStall   = 60 * time.Second
	vsockBoot    = 3 * time.Minute
	vsockTimeout = 10 * time.Minute
)

func vsockAttempt(t *testing.T) *vsockRun {
	a := &vsockRun{uds: filepath.Join(t.TempDir(), "v.sock")}
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", a.uds, vsockHostPort))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		a.errs = append(a.errs, fmt.Sprintf(format, args...))
	}
	go func() { // guest -> host: hash what arrives, answer the hash
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if n, err := answerHash(c, &a.got); err != nil {
					fail("guest->host stream: %v after %d bytes", err, n)
					return
				}
				mu.Lock()
				a.received++
				mu.Unlock()
			}()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), vsockTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, vesselBin, "vm", "run", "--kernel", filepath.Join(guestDir, "bzImage"),
		"--initrd", guestInitrd(t), "--memory", "512M", "--vsock", a.uds,
		"--", "/e2e.test", "-e2e.guest", "-test.run", "^TestGuestVsock$", "-test.v")
	cancelDescribed(cmd)
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	go func() { // stall watchdog
		last, since := int64(-1), time.Now()
		for ctx.Err() == nil {
			time.Sleep(time.Second)
			if n := a.sent.Load() + a.got.Load(); n != last {
				last, since = n, time.Now()
			} else if n > 0 && time.Since(since) > vsockStall {
				mu.Lock()
				a.err = fmt.Errorf("no vsock traffic for %v", vsockStall)
				mu.Unlock()
				cancel()
			} else if n <= 0 && time.Since(since) > vsockBoot {
				mu.Lock()
				a.err = fmt.Errorf("no vsock traffic within %v of the start", vsockBoot)
				mu.Unlock()
				cancel()
			}
		}
	}()

	var wg sync.WaitGroup
	for i := 0; i < vsockStreams; i++ {
		wg.Add(1)
		go func() { // host -> guest
			defer wg.Done()
			if err := hostToGuest(ctx, a.uds, byte(i), &a.sent); err != nil {
				fail("host->guest stream %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	err = <-done
	cancel()
	a.r = result{stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		a.r.code = ee.ExitCode()
	} else if err != nil {
		a.r.code = -1
	}
	mu.Lock()
	defer mu.Unlock()
	if a.err == nil && ctx.Err() == context.DeadlineExceeded {
		a.err = fmt.Errorf("not done within %v", vsockTimeout)
	}
	return a
}

// hostToGuest connects through the hybrid socket (retrying until the guest
// listens), sends one stream and checks the hash the guest answers.
func hostToGuest(ctx context.Context, uds string, seed byte, sent *atomic.Int64) error {
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
	return sendChecked(c, seed, vsockPerStream, sent) // nothing follows the OK line before the hash
}

// TestGuestVsock is the guest half of TestVsock.
func TestGuestVsock(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of TestVsock; runs inside the VM")
	}
	ln, err := vsock.Listen(vsockGuestPort, nil)
	if err != nil {
		t.Fatalf("vsock listen: %v", err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	errc := make(chan error, 2*vsockStreams)
	for i := 0; i < vsockStreams; i++ { // host -> guest: hash and answer
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			if n, err := answerHash(c, nil); err != nil {
				errc <- fmt.Errorf("host->guest stream: %v after %d bytes", err, n)
			}
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

// guestToHost sends one stream to the host listener and checks its hash.
func guestToHost(seed byte) error {
	c, err := vsock.Dial(vsock.Host, vsockHostPort, nil)
	if err != nil {
		return fmt.Errorf("connect to the host: %w", err)
	}
	defer c.Close()
	if err := sendChecked(c, seed, vsockPerStream, nil); err != nil {
		return fmt.Errorf("guest->host stream %d: %w", seed, err)
	}
	return nil
}
