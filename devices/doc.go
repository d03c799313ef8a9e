// Package devices holds vessel's device models and the buses they sit on,
// following Firecracker's split between a bus (address decoding) and
// device models (register semantics).
//
// A Device sees only offsets from the base of the range it was inserted at
// and raises interrupts through the Interrupt interface; it never knows
// about KVM or the VMM. The VMM owns one Bus for port I/O and one for MMIO,
// inserts devices at their addresses, and forwards each vCPU I/O exit to
// Bus.Read or Bus.Write.
//
// The models here are the legacy PC devices a Linux guest console and
// reboot need (an 8250/16550A UART and a minimal i8042), plus vessel's own
// paravirtual control port (ControlPort) that the guest init uses to report
// boot progress and its exit status.
//
// Guests are untrusted: every Read and Write accepts any offset and any
// data length without panicking.
package devices
