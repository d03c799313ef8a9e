//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"hash/crc64"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/devices/usernet"
)

// The guest computation of TestSnapshotRestore: countSteps steps of
// countHashes chained SHA-256 rounds each, with a pause between steps
// so that the host can snapshot it mid-way whatever the platform's
// speed, and so that the guest's timers run across the restore.
const (
	countSteps  = 40
	countHashes = 2000
	countPause  = 300 * time.Millisecond
	// countSnapAt is the step after which the host takes the snapshot.
	countSnapAt = 3
)

var countSeed = flag.String("e2e.seed", "", "guest half of TestSnapshotRestore: the computation's seed")

// countResult is the computation both halves make.
func countResult(seed string, step func(i int, sum [32]byte)) [32]byte {
	sum := sha256.Sum256([]byte(seed))
	for i := 0; i < countSteps; i++ {
		for j := 0; j < countHashes; j++ {
			sum = sha256.Sum256(sum[:])
		}
		if step != nil {
			step(i, sum)
		}
	}
	return sum
}

// TestSnapshotRestore boots a guest that computes a chain of hashes and
// prints its progress, snapshots it mid-computation through the API of
// one vessel process (which then exits), and restores it in another,
// where it finishes with the right result. Before that, a corrupt copy
// of the snapshot and one whose vessel version was changed (its checksum
// made right again) are refused with one line and exit status 2, leaving
// no process and no API socket behind.
func TestSnapshotRestore(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	dir := t.TempDir()
	seed := fmt.Sprintf("vessel-%d", time.Now().UnixNano())
	want := countResult(seed, nil)
	// The first vessel boots and computes, serving the API.
	snap, before := snapshotGuest(t, dir, fmt.Sprintf("step %d ", countSnapAt), nil,
		[]string{"-test.run", "^TestGuestSnapshotCount$", "-e2e.seed=" + seed})
	if strings.Contains(before, "result ") {
		t.Fatalf("the guest finished before the snapshot:\n%s", before)
	}
	mem, err := os.Stat(filepath.Join(snap, "memory"))
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := mem.Sys().(*syscall.Stat_t); ok {
		t.Logf("memory file: %d MiB, %d MiB on disk", mem.Size()>>20, st.Blocks*512>>20)
	}

	state, err := os.ReadFile(filepath.Join(snap, "vm.state"))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("corrupt", func(t *testing.T) {
		bad := bytes.Replace(state, []byte(`"CPUs":1`), []byte(`"CPUs":2`), 1)
		if bytes.Equal(bad, state) {
			t.Fatal("no vCPU count in the state file")
		}
		checkRestoreRefused(t, bad, "corrupt (checksum mismatch)")
	})
	t.Run("other version", func(t *testing.T) {
		re := regexp.MustCompile(`"Vessel":"[^"]*"`)
		parts := bytes.SplitN(state, []byte("\n"), 3)
		body := re.ReplaceAll(parts[2], []byte(`"Vessel":"0.0.0-elsewhere"`))
		sum := crc64.Checksum(body, crc64.MakeTable(crc64.ECMA))
		other := []byte(fmt.Sprintf("%s\ncrc64 %016x\n%s", parts[0], sum, body))
		checkRestoreRefused(t, other, `written by vessel "0.0.0-elsewhere"`)
	})

	// The second vessel: restores and finishes.
	r := vessel(t, "vm", "run", "--restore", snap)
	if r.code != 0 {
		t.Fatalf("restored run:\n%v\n--- before the snapshot ---\n%s", r, before)
	}
	after := strings.ReplaceAll(r.stdout, "\r\n", "\n")
	if strings.Contains(after, "step 0 ") {
		t.Errorf("the restored guest started over:\n%s", after)
	}
	if !strings.Contains(after, fmt.Sprintf("result %x", want)) || !strings.Contains(after, "--- PASS: TestGuestSnapshotCount") {
		t.Fatalf("want result %x from the restored guest:\n%v\n--- before the snapshot ---\n%s", want, r, before)
	}
	t.Logf("restored guest finished with the right result in %v", r.elapsed.Round(time.Millisecond))
	if left := liveProcesses(func(args []string) bool { return strings.Contains(strings.Join(args, " "), dir) }); len(left) > 0 {
		t.Errorf("processes left: %v", left)
	}
}

// snapshotGuest boots a guest running the guest test named by guestArgs
// in a vessel serving the VM API (with vmArgs before the command), waits
// until the guest printed mark, snapshots it into dir/snap through the
// API and checks that the first vessel then exits cleanly. It returns the
// snapshot's directory and what the guest printed before it.
func snapshotGuest(t *testing.T, dir, mark string, vmArgs, guestArgs []string) (snap, before string) {
	t.Helper()
	api := filepath.Join(dir, "api.sock")
	snap = filepath.Join(dir, "snap")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	args := append([]string{"vm", "run", "--kernel", filepath.Join(guestDir, "bzImage"), "--initrd", guestInitrd(t), "--api", api}, vmArgs...)
	args = append(append(args, "--", "/e2e.test", "-e2e.guest", "-test.v"), guestArgs...)
	a := exec.CommandContext(ctx, vesselBin, args...)
	cancelDescribed(a) // a hung guest is described, not just stopped
	var aOut, aErr syncBuffer
	a.Stdout, a.Stderr = &aOut, &aErr
	start := time.Now()
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	aDone := make(chan error, 1)
	go func() { aDone <- a.Wait() }()
	for !strings.Contains(aOut.String(), mark) {
		select {
		case err := <-aDone:
			t.Fatalf("the first vessel ended before the guest printed %q (%v):\n--- stdout ---\n%s\n--- stderr ---\n%s", mark, err, aOut.String(), aErr.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Logf("guest printed %q after %v; snapshotting", mark, time.Since(start).Round(time.Millisecond))
	s := time.Now()
	if r := vessel(t, "vm", "snapshot", "--api", api, snap); r.code != 0 {
		t.Fatalf("vessel vm snapshot:\n%v\n--- first vessel's stdout ---\n%s\n--- stderr ---\n%s", r, aOut.String(), aErr.String())
	}
	t.Logf("snapshot taken in %v", time.Since(s).Round(time.Millisecond))
	select {
	case err := <-aDone:
		if err != nil {
			t.Fatalf("the first vessel, stopped after the snapshot: %v\n--- stderr ---\n%s", err, aErr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the first vessel did not exit after the snapshot")
	}
	if _, err := os.Lstat(api); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("API socket left after the first vessel exited: %v", err)
	}
	return snap, aOut.String()
}

// checkRestoreRefused writes a snapshot directory whose state file is
// state (and no memory file: a refused state must not get that far),
// restores it with an API socket asked for, and checks the refusal:
// exit status 2, one line mentioning want, nothing left behind.
func checkRestoreRefused(t *testing.T, state []byte, want string) {
	t.Helper()
	dir := t.TempDir()
	snap := filepath.Join(dir, "snap")
	if err := os.Mkdir(snap, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(snap, "vm.state"), state, 0o600); err != nil {
		t.Fatal(err)
	}
	api := filepath.Join(dir, "api.sock")
	checkBadInput(t, vessel(t, "vm", "run", "--restore", snap, "--api", api), want)
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("left in the test directory: %v, want only snap", names)
	}
	if ents, _ := os.ReadDir(snap); len(ents) != 1 {
		t.Errorf("the refused snapshot directory changed: %d entries", len(ents))
	}
}

// TestGuestSnapshotCount is the guest half of TestSnapshotRestore: it
// computes, printing each step, and checks that its monotonic clock
// never goes back (across the restore too).
func TestGuestSnapshotCount(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of TestSnapshotRestore; runs inside the VM")
	}
	prev := time.Now()
	sum := countResult(*countSeed, func(i int, sum [32]byte) {
		fmt.Printf("step %d %x\n", i, sum[:4])
		time.Sleep(countPause)
		now := time.Now()
		if now.Before(prev) {
			t.Errorf("step %d: the clock went back by %v", i, prev.Sub(now))
		}
		prev = now
	})
	fmt.Printf("result %x\n", sum)
}

// cloneVsockPort is the host port a restored clone dials over vsock.
const cloneVsockPort = 5150

// cloneLine is one line the guest half of TestSnapshotClones prints.
var cloneLine = regexp.MustCompile(`(?m)^clone (\d+) rand ([0-9a-f]{32}) cid (\d+) time (\d+) reseeded (true|false)\r?$`)

// TestSnapshotClones snapshots a guest that prints what it reads from
// /dev/urandom, its vsock CID and its wall clock, and restores two
// clones of it at once, each with its own CID. Each clone's kernel must
// say it reseeded its random number generator for a virtual machine
// fork (the VM Generation ID vessel changes on restore), the clones must
// then read different bytes, each must have its own CID, reach the host
// over vsock from it, and read the host's time, though the snapshot was
// taken seconds before.
func TestSnapshotClones(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	dir := t.TempDir()
	snap, before := snapshotGuest(t, dir, "clone 2 ", []string{"--vsock", filepath.Join(dir, "a.sock")},
		[]string{"-test.run", "^TestGuestClone$"})
	for _, m := range cloneLine.FindAllStringSubmatch(before, -1) {
		if m[5] == "true" {
			t.Fatalf("the guest reported a reseed for a fork before any restore:\n%s", before)
		}
	}
	// A restored guest whose clock went on from the snapshot would lag
	// the host by at least this much.
	time.Sleep(5 * time.Second)

	type clone struct {
		cid   uint64
		start time.Time
		res   result
		dial  string // what the clone sent over vsock
	}
	clones := []*clone{{cid: 41}, {cid: 42}}
	done := make(chan struct{})
	for i, c := range clones {
		uds := filepath.Join(dir, fmt.Sprintf("c%d.sock", i))
		ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", uds, cloneVsockPort))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
			conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
			b, _ := io.ReadAll(io.LimitReader(conn, 256))
			c.dial = string(b)
		}()
		go func() {
			defer func() { done <- struct{}{} }()
			c.start = time.Now()
			c.res = vessel(t, "vm", "run", "--restore", snap, "--vsock", fmt.Sprintf("%s,cid=%d", uds, c.cid))
		}()
	}
	for range clones {
		<-done
	}
	var rands []string
	for i, c := range clones {
		if c.res.code != 0 || !strings.Contains(c.res.stdout, "--- PASS: TestGuestClone") {
			t.Fatalf("clone %d:\n%v", i, c.res)
		}
		lines := cloneLine.FindAllStringSubmatch(c.res.stdout, -1)
		if len(lines) == 0 {
			t.Fatalf("clone %d printed no clone lines:\n%v", i, c.res)
		}
		end := c.start.Add(c.res.elapsed)
		for _, m := range lines {
			ms, _ := strconv.ParseInt(m[4], 10, 64)
			at := time.UnixMilli(ms)
			if at.Before(c.start.Add(-2*time.Second)) || at.After(end.Add(2*time.Second)) {
				t.Errorf("clone %d: guest time %v outside the run [%v, %v] (the clock did not follow the host's)", i, at.Format(time.RFC3339Nano), c.start.Format(time.RFC3339Nano), end.Format(time.RFC3339Nano))
			}
			if m[3] != strconv.FormatUint(c.cid, 10) {
				t.Errorf("clone %d: guest CID %s, want %d", i, m[3], c.cid)
			}
		}
		last := lines[len(lines)-1]
		if last[5] != "true" {
			t.Errorf("clone %d: the guest kernel never reseeded for the fork:\n%s", i, c.res.stdout)
		}
		rands = append(rands, last[2])
		if want := fmt.Sprintf("clone cid %d\n", c.cid); c.dial != want {
			t.Errorf("clone %d: over vsock the host got %q, want %q", i, c.dial, want)
		}
		t.Logf("clone %d (CID %d): restored and reseeded in %v; reads %s", i, c.cid, c.res.elapsed.Round(time.Millisecond), last[2])
	}
	if rands[0] == rands[1] {
		t.Errorf("both clones read %s from /dev/urandom after reseeding", rands[0])
	}
}

// TestGuestClone is the guest half of TestSnapshotClones: every 250 ms it
// prints 16 bytes of /dev/urandom, its vsock CID, the wall clock and
// whether the kernel has reseeded for a virtual machine fork. After a
// reseed it dials the host over vsock, says its CID, and ends.
func TestGuestClone(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of TestSnapshotClones; runs inside the VM")
	}
	for i := 0; i < 600; i++ {
		// The kernel's log first: bytes read after it says it reseeded
		// are the reseeded generator's.
		log := make([]byte, 1<<20)
		n, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, log)
		if err != nil {
			t.Fatal(err)
		}
		reseeded := bytes.Contains(log[:n], []byte("crng reseeded due to virtual machine fork"))
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		cid, err := vsock.ContextID()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("clone %d rand %x cid %d time %d reseeded %v\n", i, b, cid, time.Now().UnixMilli(), reseeded)
		if reseeded {
			c, err := vsock.Dial(vsock.Host, cloneVsockPort, nil)
			if err != nil {
				t.Fatalf("dial the host over vsock: %v", err)
			}
			fmt.Fprintf(c, "clone cid %d\n", cid)
			c.Close()
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatal("no reseed for a virtual machine fork in 150 s")
}

// TestSnapshotNetwork snapshots a guest that fetches a page from the
// host over the user network, and restores it with a new user network
// (the old VMM and its network are gone): the guest, with its MAC and
// address, fetches again.
func TestSnapshotNetwork(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	url := fmt.Sprintf("http://%s:%d/", usernet.HostIP, loopbackPage(t, "hello-from-host"))
	snap, before := snapshotGuest(t, t.TempDir(), "fetch 1 ok", []string{"--net", "user,host-loopback"},
		[]string{"-test.run", "^TestGuestFetchLoop$", "-e2e.url=" + url})
	r := vessel(t, "vm", "run", "--restore", snap, "--net", "user,host-loopback")
	if r.code != 0 || !strings.Contains(r.stdout, "--- PASS: TestGuestFetchLoop") {
		t.Fatalf("restored run:\n%v\n--- before the snapshot ---\n%s", r, before)
	}
	if !regexp.MustCompile(`fetch \d+ ok hello-from-host`).MatchString(r.stdout) {
		t.Fatalf("the restored guest fetched nothing:\n%v", r)
	}
	t.Logf("the restored guest fetched from the host over its new user network (run %v)", r.elapsed.Round(time.Millisecond))
}

// loopbackPage serves body on the host's loopback for the test's life
// (what a guest reaches at usernet.HostIP with host-loopback) and
// returns its port.
func loopbackPage(t *testing.T, body string) int {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port
}

var fetchURL = flag.String("e2e.url", "", "guest half of TestSnapshotNetwork: the URL to fetch")

// TestGuestFetchLoop is the guest half of TestSnapshotNetwork: it
// fetches the URL every 300 ms, printing each outcome, until it has
// fetched it six times.
func TestGuestFetchLoop(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of TestSnapshotNetwork; runs inside the VM")
	}
	c := &http.Client{Timeout: 2 * time.Second}
	ok := 0
	for i := 0; i < 400 && ok < 6; i++ {
		resp, err := c.Get(*fetchURL)
		if err == nil {
			var b []byte
			b, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				fmt.Printf("fetch %d ok %s\n", ok, b)
				ok++
			}
		}
		if err != nil {
			fmt.Printf("fetch error: %v\n", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if ok < 6 {
		t.Fatalf("fetched %d times", ok)
	}
}
