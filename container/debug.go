package container

import (
	"fmt"
	"os"
	"strings"
)

// DebugEnv names the environment variable that, set to anything but ""
// or "0", makes vessel and vessel-runtime describe a VM whose guest
// stopped answering (each vCPU, the interrupt controllers, every virtio
// queue: vmm.VM.Diagnose) in the error they report.
const DebugEnv = "VESSEL_DEBUG"

// Debugging reports whether DebugEnv is set.
func Debugging() bool {
	v := os.Getenv(DebugEnv)
	return v != "" && v != "0"
}

// DiagnosisHeader starts a VM's description (vmm.Result.Diagnosis) in
// vessel's error messages (WriteDiagnosis).
const DiagnosisHeader = "the VM's state when vessel gave up on it:"

// WriteDiagnosis adds a VM's description (vmm.Result.Diagnosis), on a
// line of its own after DiagnosisHeader and indented, to a failure's
// message in b; nothing if diag is empty.
func WriteDiagnosis(b *strings.Builder, diag string) {
	if diag == "" {
		return
	}
	if b.Len() > 0 && !strings.HasSuffix(b.String(), "\n") {
		b.WriteString("\n")
	}
	b.WriteString(DiagnosisHeader + "\n")
	for _, l := range strings.Split(strings.TrimRight(diag, "\n"), "\n") {
		fmt.Fprintf(b, "    %s\n", l)
	}
}
