package compare

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vesselvm/vessel/container"
)

// TestRunCmdDescribes: when a step's time is up, a vessel-vmm process
// below the command is asked to describe its VM (SIGUSR2) before the
// group is killed, and the description vessel prints reaches the error.
func TestRunCmdDescribes(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep on this host")
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	vmm := filepath.Join(t.TempDir(), vmmName)
	if err := os.WriteFile(vmm, b, 0o755); err != nil {
		t.Fatal(err)
	}
	// A stand-in for vessel: waits for its "VMM", then reports as
	// vessel does when the VMM described the VM and stopped.
	script := vmm + ` 100 & wait; echo "vessel: the container failed" >&2; echo "` + container.DiagnosisHeader + `" >&2; echo "    vcpu 0: rip 0x1234" >&2; exit 125`
	limit := errors.New("the step's limit")
	ctx, cancel := context.WithTimeoutCause(context.Background(), 500*time.Millisecond, limit)
	defer cancel()
	start := time.Now()
	_, err = runCmd(ctx, exec.Command("sh", "-c", script))
	if !errors.Is(err, limit) || !strings.Contains(err.Error(), "vcpu 0: rip 0x1234") {
		t.Errorf("runCmd = %v, want the step's limit with the VM's description", err)
	}
	if d := time.Since(start); d > describeWait/2 {
		t.Errorf("runCmd took %v: the described VMM's exit was not waited for", d)
	}

	// Without a VMM below it, the command is killed at once.
	ctx2, cancel2 := context.WithTimeoutCause(context.Background(), 200*time.Millisecond, limit)
	defer cancel2()
	start = time.Now()
	if _, err := runCmd(ctx2, exec.Command("sleep", "100")); !errors.Is(err, limit) {
		t.Errorf("runCmd = %v, want the step's limit", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("runCmd took %v to kill a command without a VMM", d)
	}
}

func TestFailureMessage(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    outcome
		want string
	}{
		{"vessel's error after the workload's output",
			outcome{code: 125, stderr: []byte("memhog: 16 MiB\nmemhog: 32 MiB\nvessel: the container failed: the guest agent is gone\n")},
			"exit status 125: vessel: the container failed: the guest agent is gone"},
		{"runc's log line", outcome{code: 1, stderr: []byte(`time="x" level=error msg="runc run failed: \"boom\""` + "\n")},
			`exit status 1: runc run failed: "boom"`},
		{"only the workload's", outcome{code: 2, stderr: []byte("memhog: 16 MiB\n")}, "exit status 2: memhog: 16 MiB"},
		{"stdout when stderr is empty", outcome{code: 3, stdout: []byte("out\n")}, "exit status 3: out"},
	} {
		if got := failure(nil, tc.o); got != tc.want {
			t.Errorf("%s: failure = %q, want %q", tc.name, got, tc.want)
		}
	}
}
