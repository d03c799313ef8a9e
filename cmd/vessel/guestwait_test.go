package main

import (
	"strings"
	"testing"
)

// TestConsoleTailCleaned: the guest's console lines in a failure report
// cannot carry terminal escapes or break the report's lines.
func TestConsoleTailCleaned(t *testing.T) {
	var b strings.Builder
	writeConsoleTail(&b, []string{"ok line", "\x1b]0;title\x07\x1b[2Jcleared\rover"})
	got := b.String()
	if strings.ContainsAny(got, "\x1b\x07\r") {
		t.Errorf("control characters passed: %q", got)
	}
	if want := `  | \u001b]0;title\u0007\u001b[2Jcleared over` + "\n"; !strings.HasSuffix(got, want) {
		t.Errorf("report %q, want it to end with %q", got, want)
	}
}
