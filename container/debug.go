package container

import "os"

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
