package helperproc

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vesselvm/vessel/internal/seccomp"
)

// TestRelayStderrBounded: a helper that writes without end (one the
// guest took over) puts at most StderrLimit bytes and one note on
// vessel's standard error, and a crash report after that still becomes
// its one line.
func TestRelayStderrBounded(t *testing.T) {
	flood := bytes.Repeat([]byte("x"), 4<<20)
	report := "SIGSYS: bad system call\nPC=0x1 m=0\nrax    0x65\nrbx 0x0\ngs     0x0\nexit status 2\n"
	var out bytes.Buffer
	RelayStderr(io.NopCloser(io.MultiReader(bytes.NewReader(flood), strings.NewReader(report))), &out, seccomp.Usernet)
	got := out.String()
	if len(got) > StderrLimit+1024 {
		t.Errorf("%d bytes relayed, want at most %d and a note", len(got), StderrLimit)
	}
	if !strings.Contains(got, "further output of the user network helper suppressed") {
		t.Errorf("no note of the suppressed output in %d bytes relayed", len(got))
	}
	if !strings.Contains(got, "system call") || strings.Contains(got, "rax    0x65") {
		t.Errorf("the crash report is not one line at the end: %q", got[max(0, len(got)-300):])
	}
}

// TestStartNoExecutableDescriptor: a helper started with a Credential
// is exec'd through /proc/self/fd/N of a descriptor of its executable,
// which stays open in it (ExtraFiles are inherited without
// close-on-exec) for the helper's whole life: a descriptor of a host
// file outside the jail (and its mount), held by vessel-share with
// CAP_DAC_OVERRIDE, and by vessel-usernet.
func TestStartNoExecutableDescriptor(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a Credential needs root")
	}
	exe, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Skip(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd, err := Start(Spec{Path: "/bin/sh", Args: []string{"-c", "for f in /proc/$$/fd/*; do echo $f $(readlink $f); done >&3"},
		Files: []*os.File{w}, Credential: &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true}, Profile: seccomp.Share})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(r)
	cmd.Wait()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[1] == exe {
			t.Errorf("the helper holds a descriptor of its executable: %s -> %s", f[0], f[1])
		}
	}
}
