package container

import (
	"strings"
	"testing"
)

// TestWriteDiagnosis: a VM's description follows the message on lines of
// its own, after the header, indented; an empty one adds nothing.
func TestWriteDiagnosis(t *testing.T) {
	for _, tc := range []struct {
		name, msg, diag, want string
	}{
		{"none", "it failed", "", "it failed"},
		{"after a line", "it failed", "vCPU 0: halted\nIOAPIC: irr 0x0\n",
			"it failed\n" + DiagnosisHeader + "\n    vCPU 0: halted\n    IOAPIC: irr 0x0\n"},
		{"after a newline", "it failed\n", "vCPU 0: halted",
			"it failed\n" + DiagnosisHeader + "\n    vCPU 0: halted\n"},
		{"alone", "", "vCPU 0: halted", DiagnosisHeader + "\n    vCPU 0: halted\n"},
	} {
		var b strings.Builder
		b.WriteString(tc.msg)
		WriteDiagnosis(&b, tc.diag)
		if b.String() != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, b.String(), tc.want)
		}
	}
}
