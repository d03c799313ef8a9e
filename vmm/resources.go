package vmm

import (
	"fmt"

	"github.com/vesselvm/vessel/boot"
)

// CheckResources reports whether New accepts a VM of cpus vCPUs and
// memory bytes of RAM (an ErrInvalidConfig naming --cpus or --memory if
// not), so that a command can refuse them before it makes anything.
func CheckResources(cpus int, memory uint64) error {
	if cpus < 1 {
		return fmt.Errorf("%w: --cpus must be at least 1 (got %d)", ErrInvalidConfig, cpus)
	}
	if cpus > boot.MaxCPUs {
		return fmt.Errorf("%w: --cpus %d is above vessel's limit of %d", ErrInvalidConfig, cpus, boot.MaxCPUs)
	}
	if memory < minMemory {
		return fmt.Errorf("%w: --memory must be at least %d MiB (got %d bytes)", ErrInvalidConfig, minMemory>>20, memory)
	}
	if memory%4096 != 0 {
		return fmt.Errorf("%w: --memory must be a multiple of 4 KiB", ErrInvalidConfig)
	}
	if total, err := hostMemory(); err == nil && memory > total {
		return fmt.Errorf("%w: --memory %d MiB is more than the host's %d MiB", ErrInvalidConfig, memory>>20, total>>20)
	}
	return nil
}
