//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"
)

// checkFiltered checks that every thread of process pid runs under a
// seccomp filter (Seccomp: 2 in its status).
func checkFiltered(t *testing.T, pid int, what string) {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		t.Errorf("%s (PID %d): no threads: %v", what, pid, err)
		return
	}
	bad := 0
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue // the thread ended
		}
		mode := ""
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Seccomp:"); ok {
				mode = strings.TrimSpace(v)
			}
		}
		if mode != "2" {
			bad++
			t.Errorf("%s (PID %d): thread %s has Seccomp: %q, want 2 (filter)", what, pid, task.Name(), mode)
		}
	}
	if bad == 0 {
		t.Logf("%s (PID %d): %d threads, each in seccomp filter mode", what, pid, len(tasks))
	}
}

// onlyProcess is the one live process whose arguments match, or fails.
func onlyProcess(t *testing.T, what string, match func(args []string) bool) int {
	t.Helper()
	procs := liveProcesses(match)
	if len(procs) != 1 {
		t.Fatalf("%s: want one process, found %v", what, procs)
	}
	for pid := range procs {
		return pid
	}
	return 0
}

// TestSeccomp: every VMM process (vessel vm run's, vessel run -d's,
// vessel-runtime's), the user network's helper and the shares' server run with every thread
// under their seccomp filter, and the filter is enforced: in a test build
// (build/seccomptest, with the seccomptest tag) that makes a system call
// outside the list on request, the process is stopped and vessel says so
// in one line.
func TestSeccomp(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	t.Run("vm-run", func(t *testing.T) {
		cmd := exec.Command(vesselBin, "vm", "run", "--jail=false", "--net", "user", "--", "sh", "-c", "echo up; sleep 600")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr syncBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		waitUp(t, cmd, stdout, &stderr, 3*time.Minute)
		checkFiltered(t, cmd.Process.Pid, "vessel vm run")
		checkFiltered(t, onlyProcess(t, "vessel-usernet", func(args []string) bool {
			// The helper itself, with its flags (its VMM relays its
			// standard error: no relay process of its own).
			return strings.HasSuffix(args[0], "vessel-usernet") && len(args) > 1
		}), "vessel-usernet")
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})

	t.Run("vm-run-jailed", func(t *testing.T) {
		// The jailed VMM process (the default as root) filters itself.
		cmd := exec.Command(vesselBin, "vm", "run", "--jail", "--", "sh", "-c", "echo up; sleep 600")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr syncBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		waitUp(t, cmd, stdout, &stderr, 3*time.Minute)
		checkFiltered(t, onlyProcess(t, "the jailed VMM process", func(args []string) bool {
			return filepath.Base(args[0]) == "vessel-vmm"
		}), "the jailed VMM process")
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})

	t.Run("run-detached", func(t *testing.T) {
		env := runEnv(t)
		// A volume: its share's server is checked too.
		r := vesselRun(t, env, "", "-d", "--jail=false", "--name", "filtered", "-v", t.TempDir()+":/data", runImage, "sleep", "600")
		if r.code != 0 {
			t.Fatalf("vessel run -d:\n%v", r)
		}
		defer func() {
			cmd := exec.Command(vesselBin, "rm", "-f", "filtered")
			cmd.Env = env
			cmd.Run()
		}()
		pid := onlyProcess(t, "the container's vessel process", func(args []string) bool {
			return strings.HasSuffix(args[0], "/vessel") && slicesContains(args, "run") && slicesContains(args, "filtered")
		})
		checkFiltered(t, pid, "vessel run -d")
		// Its volume's server.
		checkFiltered(t, onlyProcess(t, "vessel-share", func(args []string) bool {
			return strings.HasSuffix(args[0], "vessel-share") && len(args) > 1
		}), "vessel-share")
	})

	t.Run("runtime", func(t *testing.T) {
		becomeSubreaper(t)
		ctx := context.Background()
		r, state := runtimeClient(t)
		bundle, _ := makeBundle(t, "sleep", "600")
		_, pid := createContainer(t, ctx, r, "filtered", bundle)
		checkFiltered(t, pid, "vessel-runtime's VMM process")
		if err := r.Delete(ctx, "filtered", &runc.DeleteOpts{Force: true}); err != nil {
			t.Fatalf("delete: %v", err)
		}
		waitPid(t, pid)
		checkNothingLeft(t, state)
	})

	// ptrace (101) is in no list.
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	testBin := filepath.Join(root, "build", "seccomptest", "vessel")
	if _, err := os.Stat(testBin); err != nil {
		t.Fatalf("the test build %s: %v (make test-e2e builds it: go build -tags seccomptest)", testBin, err)
	}
	t.Run("enforced/share-server", func(t *testing.T) {
		env := runEnv(t)
		cmd := exec.Command(testBin, "run", "--rm", "--jail=false", "-v", t.TempDir()+":/data", runImage, "sh", "-c", "ls /data; sleep 600")
		cmd.Env = append(env, "VESSEL_SECCOMP_TEST_SYSCALL=101", "VESSEL_SECCOMP_TEST_WHO=share server")
		var stderr syncBuffer
		cmd.Stdout, cmd.Stderr = io.Discard, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		defer cmd.Process.Kill()
		line := "vessel: seccomp: the share server made a system call outside its filter, ptrace (101), and was stopped\n"
		deadline := time.Now().Add(4 * time.Minute)
		for !strings.Contains(stderr.String(), line) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if !strings.Contains(stderr.String(), line) {
			t.Fatalf("stderr %q: no %q", stderr.String(), line)
		}
	})
	for _, tc := range []struct {
		who, line string
		jail      bool
	}{
		{"VMM", "vessel: seccomp: the VMM made a system call outside its filter, ptrace (101), and was stopped\n", false},
		{"user network helper", "vessel: seccomp: the user network helper made a system call outside its filter, ptrace (101), and was stopped\n", false},
		// Jailed, vessel reports the VM's end with the line's words.
		{"VMM", "seccomp: the VMM made a system call outside its filter, ptrace (101), and was stopped", true},
	} {
		name := "enforced/" + strings.ReplaceAll(tc.who, " ", "-")
		if tc.jail {
			name += "-jailed"
		}
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(testBin, "vm", "run", fmt.Sprintf("--jail=%v", tc.jail), "--net", "user", "--", "sh", "-c", "echo up; sleep 600")
			cmd.Env = append(os.Environ(), "VESSEL_SECCOMP_TEST_SYSCALL=101", "VESSEL_SECCOMP_TEST_WHO="+tc.who)
			var stderr syncBuffer
			cmd.Stdout, cmd.Stderr = io.Discard, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			deadline := time.Now().Add(4 * time.Minute)
			for !strings.Contains(stderr.String(), tc.line) && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
			if !strings.Contains(stderr.String(), tc.line) {
				t.Fatalf("stderr %q: no %q", stderr.String(), tc.line)
			}
			if tc.who == "VMM" {
				want := 2 // the VMM's own status
				if tc.jail {
					want = 125 // vessel's: its jailed VMM process failed
				}
				err := cmd.Wait()
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != want {
					t.Errorf("vessel vm run: %v, want exit status %d", err, want)
				}
			} else {
				cmd.Process.Signal(os.Interrupt)
				cmd.Wait()
			}
			if s := stderr.String(); strings.Contains(s, "goroutine ") || strings.Contains(s, "SIGSYS") {
				t.Errorf("the crash report reached the user: %q", s)
			}
		})
	}
}

// waitLine reads r until a line equal to want and reports whether it
// came within d (the rest of r is read and dropped).
func waitLine(t *testing.T, r interface{ Read([]byte) (int, error) }, want string, d time.Duration) bool {
	t.Helper()
	got := make(chan bool, 1)
	go func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			if strings.TrimSpace(s.Text()) == want {
				got <- true
				for s.Scan() {
				}
				return
			}
		}
		got <- false
	}()
	select {
	case ok := <-got:
		if !ok {
			t.Logf("the guest's output ended before %q", want)
		}
		return ok
	case <-time.After(d):
		t.Logf("no %q from the guest in %v", want, d)
		return false
	}
}

// waitUp waits for the line "up" on out, the standard output of cmd, a
// vessel vm run. When it does not come within d, vessel is asked to
// describe its VM (SIGUSR2: it stops the VM and exits with the
// description on stderr), and the test fails with that description,
// which tells a hung guest on the emulated platform's known faults
// (e2e/runblock) from a vessel bug.
func waitUp(t *testing.T, cmd *exec.Cmd, out io.Reader, stderr fmt.Stringer, d time.Duration) {
	t.Helper()
	if waitLine(t, out, "up", d) {
		return
	}
	cmd.Process.Signal(diagnoseSignal)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
	}
	t.Fatalf("no \"up\" from the guest in %v; vessel's stderr, SIGUSR2 sent:\n%s", d, stderr.String())
}
