//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vesselvm/vessel/internal/proctree"
)

// balloonAlloc is what the container of TestBalloonReturnsMemory
// allocates and frees.
const balloonAlloc = 200 << 20

// TestBalloonReturnsMemory: a container writes 200 MiB into its
// writable layer (the guest's memory), then deletes it. The VM's balloon
// (free page reporting) hands the freed pages back, and the RSS of the
// processes that serve the container falls by most of the 200 MiB;
// without the balloon it would stay. The time it took is logged.
func TestBalloonReturnsMemory(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	env := runEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	script := fmt.Sprintf("head -c %d /dev/zero > /big && echo allocated && read x && rm /big && echo freed && read y", balloonAlloc)
	cmd := exec.CommandContext(ctx, vesselBin, "run", "--rm", "-i", "-m", "512M", runImage, "sh", "-c", script)
	cmd.Env = env
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGABRT) }
	cmd.WaitDelay = 10 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("vessel run: %v\n%s", err, stderr.String())
		}
	}()
	lines := bufio.NewScanner(stdout)
	expect := func(want string) {
		t.Helper()
		if !lines.Scan() || strings.TrimSpace(lines.Text()) != want {
			t.Fatalf("container said %q (%v), want %q\n--- stderr ---\n%s", lines.Text(), lines.Err(), want, stderr.String())
		}
	}
	expect("allocated")
	peak := treeRSS(t, cmd.Process.Pid)
	t.Logf("RSS of vessel's processes with %d MiB in the guest's memory: %d MiB", balloonAlloc>>20, peak>>20)
	if peak < balloonAlloc {
		t.Fatalf("RSS %d MiB is less than the %d MiB the guest holds: measuring the wrong processes?", peak>>20, balloonAlloc>>20)
	}
	io.WriteString(stdin, "\n")
	expect("freed")
	freed := time.Now()
	want := peak - balloonAlloc*3/4
	var rss uint64
	for {
		rss = treeRSS(t, cmd.Process.Pid)
		if rss <= want {
			break
		}
		if time.Since(freed) > 90*time.Second {
			t.Fatalf("RSS still %d MiB %v after the guest freed %d MiB (peak %d MiB): the memory did not come back",
				rss>>20, time.Since(freed).Round(time.Second), balloonAlloc>>20, peak>>20)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("RSS fell to %d MiB %v after the guest freed %d MiB (from %d MiB)", rss>>20, time.Since(freed).Round(10*time.Millisecond), balloonAlloc>>20, peak>>20)
	io.WriteString(stdin, "\n")
}

// treeRSS sums the resident memory (VmRSS) of pid and its descendants.
func treeRSS(t *testing.T, pid int) uint64 {
	t.Helper()
	tree, err := proctree.Tree(pid)
	if err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, p := range tree {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue // gone meanwhile
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				sum += kb << 10
			}
		}
	}
	return sum
}

// TestBalloonInflate drives a VM's balloon through the VM API: the guest
// inflates it to the target (its actual count follows, and vessel
// returns the pages to the host), reports its memory statistics, and
// deflates it again when the target falls back to 0.
func TestBalloonInflate(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	dir := t.TempDir()
	api := filepath.Join(dir, "api.sock")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, vesselBin, "vm", "run", "--kernel", filepath.Join(guestDir, "bzImage"), "--initrd", guestInitrd(t),
		"--memory", "256M", "--balloon", "deflate-on-oom,stats=500ms", "--api", api, "--", "sleep", "600")
	cancelDescribed(cmd)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Signal(syscall.SIGTERM)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", api)
	}}}
	call := func(method, path, body string) (map[string]any, error) {
		req, _ := http.NewRequest(method, "http://vessel"+path, strings.NewReader(body))
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var m map[string]any
		if resp.StatusCode == http.StatusOK {
			err = json.NewDecoder(resp.Body).Decode(&m)
		} else if resp.StatusCode != http.StatusNoContent {
			b, _ := io.ReadAll(resp.Body)
			err = fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
		}
		return m, err
	}
	// waitFor polls the statistics until ok holds of them.
	waitFor := func(what string, ok func(map[string]any) bool) map[string]any {
		t.Helper()
		start := time.Now()
		for {
			st, err := call("GET", "/balloon/statistics", "")
			if err == nil && ok(st) {
				t.Logf("%s after %v: %v", what, time.Since(start).Round(10*time.Millisecond), st)
				return st
			}
			if time.Since(start) > 2*time.Minute {
				t.Fatalf("%s: not within 2 minutes (last: %v, %v)\n%s", what, st, err, out.String())
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	// The guest's driver is up once it reported its statistics.
	waitFor("statistics", func(st map[string]any) bool { _, ok := st["free_memory"]; return ok })
	if _, err := call("PATCH", "/balloon", `{"amount_mib": 64}`); err != nil {
		t.Fatal(err)
	}
	st := waitFor("inflated to 64 MiB", func(st map[string]any) bool { return st["actual_mib"] == 64.0 })
	if got := st["inflated_bytes"].(float64); got < 60<<20 {
		t.Errorf("the guest gave 64 MiB, vessel returned %.0f bytes to the host", got)
	}
	if _, err := call("PATCH", "/balloon", `{"amount_mib": 1024}`); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("a target past the VM's memory: %v, want 400", err)
	}
	if _, err := call("PATCH", "/balloon", `{"amount_mib": 0}`); err != nil {
		t.Fatal(err)
	}
	waitFor("deflated", func(st map[string]any) bool { return st["actual_mib"] == 0.0 })
}
