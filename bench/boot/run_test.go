package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeVMM writes a shell script standing in for a VMM and returns a spec
// that runs it.
func fakeVMM(t *testing.T, script string, exits bool) vmmSpec {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fakevmm")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	return vmmSpec{Name: nameQEMU, Path: p, Args: func(string) []string { return nil }, ExitsOnItsOwn: exits}
}

func testRunner(t *testing.T, timeout time.Duration) *runner {
	return &runner{cfg: &config{Timeout: timeout, Grace: 5 * time.Second, MemMiB: 256}, tmpDir: t.TempDir()}
}

func TestRunOneMeasures(t *testing.T) {
	spec := fakeVMM(t, `echo "[    0.1] booting"; sleep 0.2; printf '1.23 0.45\r\n'; sleep 0.1; echo "[    2.0] reboot: Power down"; exit 0`, true)
	r := testRunner(t, 10*time.Second).runOne(context.Background(), spec, 1, false)
	if !r.OK {
		t.Fatalf("run failed: %s", r.Error)
	}
	if r.TimeToInit == nil || *r.TimeToInit < 0.2 || *r.TimeToInit > 5 {
		t.Errorf("time to init %v", r.TimeToInit)
	}
	if r.GuestUptime == nil || *r.GuestUptime != 1.23 {
		t.Errorf("guest uptime %v", r.GuestUptime)
	}
	if r.CPUTotal == nil || r.CPUToInit == nil || r.RSSMiB == nil || *r.RSSMiB <= 0 {
		t.Errorf("CPU %v / %v, RSS %v not measured", r.CPUTotal, r.CPUToInit, r.RSSMiB)
	}
	// A shell has no mapping of the guest RAM size: said, not hidden.
	if r.MemOverheadMiB != nil || !strings.Contains(strings.Join(r.Notes, ";"), "no anonymous mapping") {
		t.Errorf("overhead %v, notes %q", r.MemOverheadMiB, r.Notes)
	}
	if r.Ending != "exit status 0" {
		t.Errorf("ending %q", r.Ending)
	}
}

func TestRunOneKillsAfterGuestStops(t *testing.T) {
	// A VMM that stays up after its guest powered off (like gokvm).
	spec := fakeVMM(t, `echo "1.00 0.50"; echo "reboot: System halted"; exec sleep 60`, false)
	start := time.Now()
	r := testRunner(t, 30*time.Second).runOne(context.Background(), spec, 1, false)
	if !r.OK || !strings.Contains(r.Ending, "killed by benchboot after the guest stopped") || r.CPUBeforeKill == nil {
		t.Errorf("run %+v", r)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v: not killed shortly after the guest stopped", d)
	}
}

func TestRunOneTimeout(t *testing.T) {
	spec := fakeVMM(t, `echo $$ > "$0.pid"; echo "[    0.0] still booting"; exec sleep 60`, true)
	r := testRunner(t, 500*time.Millisecond).runOne(context.Background(), spec, 1, false)
	if r.OK || !strings.Contains(r.Error, "no uptime line within 500ms") || !strings.Contains(r.Error, "still booting") {
		t.Errorf("run %+v", r)
	}
	b, err := os.ReadFile(spec.Path + ".pid")
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &pid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("the timed-out VMM (pid %d) is still alive", pid)
	}
}

func TestRunOneCrash(t *testing.T) {
	spec := fakeVMM(t, `echo "[    0.5] something"; echo "fatal error: boom" >&2; exit 2`, true)
	r := testRunner(t, 10*time.Second).runOne(context.Background(), spec, 1, false)
	if r.OK || !strings.Contains(r.Error, "exit status 2 before printing the uptime line") || !strings.Contains(r.Error, "fatal error: boom") {
		t.Errorf("run %+v", r)
	}
}

func TestNoBootAborts(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(k, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run([]string{"--kernel", k, "--initrd", k, "--vmms", "qemu", "--qemu", "/bin/false",
		"--vessel", filepath.Join(dir, "novessel"), "--runs", "3", "--warmup", "1"}, &out, &errb)
	if code != exitNoBoot {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitNoBoot, errb.String())
	}
	if !strings.Contains(out.String(), "**incomplete**") || strings.Count(errb.String(), "FAILED") != 1 {
		t.Errorf("report:\n%s\nstderr:\n%s", out.String(), errb.String())
	}
}

func TestRunOneTerminal(t *testing.T) {
	// gokvm refuses to take input (and never exits) unless stdin is a
	// terminal: a spec that asks for one gets one.
	spec := fakeVMM(t, `if [ -t 0 ]; then echo "1.00 0.50"; else echo "stdin is not a terminal"; fi; sleep 1; echo "reboot: Power down"`, true)
	spec.Terminal = true
	r := testRunner(t, 10*time.Second).runOne(context.Background(), spec, 1, false)
	if !r.OK || r.GuestUptime == nil || *r.GuestUptime != 1 {
		t.Errorf("run %+v", r)
	}
	spec.Terminal = false
	r = testRunner(t, 2*time.Second).runOne(context.Background(), spec, 1, false)
	if r.OK {
		t.Errorf("without a terminal: run %+v", r)
	}
}

func TestSampleAtMarkerTree(t *testing.T) {
	// vessel's VMM runs in a child process: the tree is measured, and
	// its CPU and process count cover the child.
	spec := fakeVMM(t, `sleep 30 & sleep 0.2; echo "1.00 0.50"; sleep 1; echo "reboot: Power down"; kill $!`, true)
	r := testRunner(t, 10*time.Second).runOne(context.Background(), spec, 1, false)
	if !r.OK || r.Processes == nil || *r.Processes < 2 {
		t.Errorf("run %+v (processes %v)", r, r.Processes)
	}
}
