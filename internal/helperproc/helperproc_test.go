package helperproc

import (
	"bytes"
	"io"
	"strings"
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
