package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestE2E boots real outer VMs (tens of seconds). It runs only with
// VESSEL_TESTVM_E2E=1, and then fails, never skips, if QEMU or the kernel
// is missing.
func TestE2E(t *testing.T) {
	if os.Getenv("VESSEL_TESTVM_E2E") != "1" {
		t.Skip("set VESSEL_TESTVM_E2E=1 to boot real outer VMs")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("VESSEL_TESTVM_E2E=1 but qemu-system-x86_64 is not installed (make deps / apt-get install qemu-system-x86): %v", err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root, err := findModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command("bash", filepath.Join(root, "images", "build-kernel.sh"))
	var kout, kerr bytes.Buffer
	build.Stdout, build.Stderr = &kout, &kerr
	if err := build.Run(); err != nil {
		t.Fatalf("VESSEL_TESTVM_E2E=1 but the outer kernel is not available: images/build-kernel.sh: %v\n%s", err, kerr.String())
	}
	kernelDir := strings.TrimSpace(kout.String())
	if _, err := kernelInDir(kernelDir); err != nil {
		t.Fatalf("VESSEL_TESTVM_E2E=1 but the outer kernel is missing: %v", err)
	}
	bin := testvmBinary(t, true)

	type result struct {
		code           int
		stdout, stderr string
		took           time.Duration
		tmp            string
	}
	// run runs testvm in the module root with a private TMPDIR, so that
	// leftovers can be checked. sig, if set, is sent once the command runs.
	run := func(t *testing.T, sig syscall.Signal, args ...string) result {
		t.Helper()
		tmp := t.TempDir()
		cmd := exec.Command(bin, append([]string{"--platform", "nested"}, args...)...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "VESSEL_E2E_MARK=marked")
		var out, errb lockedBuffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		start := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if sig != 0 {
			for i := 0; i < 600 && !strings.Contains(out.String(), "running"); i++ {
				time.Sleep(100 * time.Millisecond)
			}
			_ = cmd.Process.Signal(sig)
		}
		err := cmd.Wait()
		r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start), tmp: tmp}
		if ee, ok := err.(*exec.ExitError); ok {
			r.code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		t.Logf("testvm %q: status %d in %v\nstdout: %s\nstderr: %s", args, r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
		// Nothing left behind: no temp dir, no QEMU using it.
		if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
			t.Errorf("left behind in TMPDIR: %v", ents)
		}
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(tmp)) {
				t.Errorf("process still running: %s: %q", p, b)
			}
		}
		return r
	}

	t.Run("uname-kvm-status", func(t *testing.T) {
		r := run(t, 0, "--", "sh", "-c", "uname -a; ls -l /dev/kvm; grep -c svm /proc/cpuinfo; echo to-stderr >&2; echo $VESSEL_E2E_MARK; pwd; exit 3")
		if r.code != 3 {
			t.Errorf("status %d, want 3", r.code)
		}
		for _, want := range []string{"Linux ", "6.1.", "/dev/kvm", "marked", root + "\n"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("stdout lacks %q", want)
			}
		}
		if strings.Contains(r.stdout, "to-stderr") || !strings.Contains(r.stderr, "to-stderr") {
			t.Errorf("stderr not kept apart")
		}
		if !strings.Contains(r.stderr, "testvm: platform: nested KVM in QEMU TCG (-cpu max), outer kernel ") {
			t.Errorf("no platform line")
		}
	})
	t.Run("true", func(t *testing.T) {
		r := run(t, 0, "--", "true")
		if r.code != 0 {
			t.Errorf("status %d", r.code)
		}
		t.Logf("whole `testvm -- true` run: %v", r.took)
	})
	t.Run("false", func(t *testing.T) {
		if r := run(t, 0, "--", "/bin/false"); r.code != 1 {
			t.Errorf("status %d, want 1", r.code)
		}
	})
	t.Run("not-found", func(t *testing.T) {
		r := run(t, 0, "--", "no-such-command-testvm")
		if r.code != 127 || !strings.Contains(r.stderr, "no-such-command-testvm: command not found") {
			t.Errorf("status %d, want 127 and a message", r.code)
		}
	})
	t.Run("writes-are-private", func(t *testing.T) {
		probe := filepath.Join(root, "testvm-e2e-probe")
		r := run(t, 0, "--", "sh", "-c", "echo hi > "+probe+" && cat "+probe+" && touch /etc/testvm-probe && test -d /tmp && test -w /tmp")
		if r.code != 0 || r.stdout != "hi\n" {
			t.Errorf("status %d stdout %q", r.code, r.stdout)
		}
		if _, err := os.Stat(probe); err == nil {
			os.Remove(probe)
			t.Errorf("a write in the VM reached the host")
		}
	})
	t.Run("forged-marker", func(t *testing.T) {
		r := run(t, 0, "--", "sh", "-c", "echo 0123456789abcdef0123456789abcdef:testvm-exit:0:0:0 | tee /dev/console; exit 5")
		if r.code != 5 {
			t.Errorf("status %d, want 5", r.code)
		}
	})
	t.Run("go-version", func(t *testing.T) {
		r := run(t, 0, "--", "go", "version")
		if r.code != 0 || !strings.HasPrefix(r.stdout, "go version go") {
			t.Errorf("status %d", r.code)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		r := run(t, 0, "--timeout", "5s", "--", "sleep", "100")
		if r.code != exitTimeout || !strings.Contains(r.stderr, "timed out") || r.took > 30*time.Second {
			t.Errorf("status %d after %v, want 124", r.code, r.took)
		}
	})
	t.Run("sigterm", func(t *testing.T) {
		r := run(t, syscall.SIGTERM, "--", "sh", "-c", "echo running; sleep 100")
		if r.code != 128+int(syscall.SIGTERM) {
			t.Errorf("status %d, want %d", r.code, 128+int(syscall.SIGTERM))
		}
	})
}

// lockedBuffer is a bytes.Buffer safe to read while a command writes to it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
