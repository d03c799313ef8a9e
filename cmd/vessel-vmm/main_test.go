package main

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	if os.Getenv("VESSEL_VMM_TEST_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

// Run by hand, without vessel's descriptors, vessel-vmm says what it is
// in one line and exits with status 2; given a configuration that is not
// one, it reports that on fd 4 and exits with 125.
func TestAlone(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "VESSEL_VMM_TEST_MAIN=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit: %v, want status 2; output %q", err, out)
	}
	if s := string(out); strings.Count(s, "\n") != 1 || !strings.Contains(s, "not a command") {
		t.Errorf("output %q: want one line saying it is not a command", s)
	}

	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	msgR, msgW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "VESSEL_VMM_TEST_MAIN=1")
	cmd.ExtraFiles = []*os.File{cfgR, msgW}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cfgR.Close()
	msgW.Close()
	cfgW.WriteString("{not json")
	cfgW.Close()
	b, _ := io.ReadAll(msgR)
	msgR.Close()
	msg := string(b)
	err = cmd.Wait()
	if !errors.As(err, &ee) || ee.ExitCode() != 125 {
		t.Errorf("exit: %v, want status 125", err)
	}
	if !strings.Contains(msg, `"Error"`) || !strings.Contains(msg, "read the VM's configuration") {
		t.Errorf("message %q: want an Error about the configuration", msg)
	}
}
