package vmm

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/boot/acpi"
)

// genIDGSI is the IOAPIC input of the VM Generation ID's event (the
// DSDT's GED0): ISA IRQ 3, COM2's, a port vessel does not have.
const genIDGSI = 3

// genIDACPI describes the generation ID device to the ACPI tables.
func genIDACPI() *acpi.GenerationID { return &acpi.GenerationID{GSI: genIDGSI} }

// newGenerationID writes a fresh random VM Generation ID into guest
// memory. At boot it is the guest's first ID (Linux mixes it into its
// random state); on restore it is the clone's own, which the guest reads
// when the GED's interrupt tells it to (see newClone).
func (v *VM) newGenerationID() error {
	// The kernel's CSPRNG, with getrandom(2) as crypto/rand reads it:
	// 16 bytes come whole once the kernel's pool is ready. (crypto/rand
	// itself would link its DRBG and ciphers into the VMM, about 150 KB
	// that stay resident for these 16 bytes.)
	var id [16]byte
	if n, err := unix.Getrandom(id[:], 0); err != nil || n != len(id) {
		return fmt.Errorf("vmm: generation ID: getrandom: %d bytes, %v", n, err)
	}
	if _, err := v.mem.WriteAt(id[:], acpi.GenerationIDAddr); err != nil {
		return fmt.Errorf("vmm: generation ID: %w", err)
	}
	return nil
}

// newClone gives a restored VM a generation ID of its own and raises the
// generation ID's event: Linux's vmgenid driver sees the new ID and
// reseeds the kernel's random number generator before it hands out more
// bytes (add_vmfork_randomness), so clones of one snapshot do not share
// their /dev/urandom output. The edge waits in the restored interrupt
// controllers until the guest takes it.
func (v *VM) newClone() error {
	if err := v.newGenerationID(); err != nil {
		return err
	}
	return v.genIRQ.Trigger()
}
