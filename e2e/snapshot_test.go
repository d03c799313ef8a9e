//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
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
	initrd := guestInitrd(t)
	dir := t.TempDir()
	api := filepath.Join(dir, "api.sock")
	snap := filepath.Join(dir, "snap")
	seed := fmt.Sprintf("vessel-%d", time.Now().UnixNano())
	want := countResult(seed, nil)

	// The first vessel: boots and computes, serving the API.
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	a := exec.CommandContext(ctx, vesselBin, "vm", "run", "--kernel", filepath.Join(guestDir, "bzImage"), "--initrd", initrd,
		"--api", api, "--", "/e2e.test", "-e2e.guest", "-test.run", "^TestGuestSnapshotCount$", "-test.v", "-e2e.seed="+seed)
	a.Cancel = func() error { return a.Process.Signal(syscall.SIGQUIT) }
	a.WaitDelay = 10 * time.Second
	var aOut, aErr syncBuffer
	a.Stdout, a.Stderr = &aOut, &aErr
	start := time.Now()
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	aDone := make(chan error, 1)
	go func() { aDone <- a.Wait() }()
	mark := fmt.Sprintf("step %d ", countSnapAt)
	for !strings.Contains(aOut.String(), mark) {
		select {
		case err := <-aDone:
			t.Fatalf("the first vessel ended before step %d (%v):\n--- stdout ---\n%s\n--- stderr ---\n%s", countSnapAt, err, aOut.String(), aErr.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Logf("guest at step %d after %v; snapshotting", countSnapAt, time.Since(start).Round(time.Millisecond))

	s := time.Now()
	r := vessel(t, "vm", "snapshot", "--api", api, snap)
	if r.code != 0 {
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
	before := aOut.String()
	if strings.Contains(before, "result ") {
		t.Fatalf("the guest finished before the snapshot:\n%s", before)
	}
	if _, err := os.Lstat(api); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("API socket left after the first vessel exited: %v", err)
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
		sum := sha256.Sum256(body)
		other := []byte(fmt.Sprintf("%s\nsha256 %s\n%s", parts[0], hex.EncodeToString(sum[:]), body))
		checkRestoreRefused(t, other, `written by vessel "0.0.0-elsewhere"`)
	})

	// The second vessel: restores and finishes.
	r = vessel(t, "vm", "run", "--restore", snap)
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
