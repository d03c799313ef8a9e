package kvm

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrAPIVersion is returned when /dev/kvm speaks another API version.
var ErrAPIVersion = errors.New("kvm: unsupported API version")

// ErrMissingCap is returned (wrapped) when a capability vessel needs is absent.
var ErrMissingCap = errors.New("kvm: required capability missing")

// DefaultDevice is the path of the KVM device node.
const DefaultDevice = "/dev/kvm"

// System is an open /dev/kvm.
type System struct {
	f        *os.File
	fd       int
	mmapSize int
}

// Open opens the KVM device at path (usually DefaultDevice) and checks the
// API version and the capabilities vessel relies on. The error wraps the
// open errno, so errors.Is(err, fs.ErrNotExist) / fs.ErrPermission work.
func Open(path string) (*System, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: open %s: %w", path, err)
	}
	s := &System{f: f, fd: int(f.Fd())}
	v, err := ioctl(s.fd, kvmGetAPIVersion, 0)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("kvm: get API version: %w", err)
	}
	if v != APIVersion {
		f.Close()
		return nil, fmt.Errorf("%w: %d (want %d)", ErrAPIVersion, v, APIVersion)
	}
	for _, c := range []struct {
		cap  Cap
		name string
	}{
		{CapIRQChip, "IRQCHIP"}, {CapUserMemory, "USER_MEMORY"}, {CapSetTSSAddr, "SET_TSS_ADDR"},
		{CapExtCPUID, "EXT_CPUID"}, {CapIRQFD, "IRQFD"}, {CapPIT2, "PIT2"},
		{CapIOEventFD, "IOEVENTFD"}, {CapImmediateExit, "IMMEDIATE_EXIT"},
	} {
		if n, _ := s.CheckExtension(c.cap); n <= 0 {
			f.Close()
			return nil, fmt.Errorf("%w: KVM_CAP_%s", ErrMissingCap, c.name)
		}
	}
	sz, err := ioctl(s.fd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("kvm: get vCPU mmap size: %w", err)
	}
	if sz < runMinSize {
		f.Close()
		return nil, fmt.Errorf("kvm: vCPU mmap size %d smaller than struct kvm_run", sz)
	}
	s.mmapSize = int(sz)
	return s, nil
}

// Close closes /dev/kvm. VMs created from it stay valid. A second Close
// does nothing.
func (s *System) Close() error {
	if s.f == nil {
		return nil
	}
	f := s.f
	s.f, s.fd = nil, -1
	if err := f.Close(); err != nil {
		return fmt.Errorf("kvm: close: %w", err)
	}
	return nil
}

// CheckExtension returns KVM_CHECK_EXTENSION's answer for cap (0 = absent).
func (s *System) CheckExtension(c Cap) (int, error) {
	r, err := ioctl(s.fd, kvmCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("kvm: check extension %d: %w", c, err)
	}
	return int(r), nil
}

// MaxVCPUs returns the largest vCPU count a VM may have (KVM_CAP_MAX_VCPUS,
// falling back to KVM_CAP_NR_VCPUS, then 4, as api.rst prescribes).
func (s *System) MaxVCPUs() int {
	if n, _ := s.CheckExtension(CapMaxVCPUs); n > 0 {
		return n
	}
	if n, _ := s.CheckExtension(CapNRVCPUs); n > 0 {
		return n
	}
	return 4
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID: every CPUID leaf KVM can
// present to a guest, with the features host and KVM both support.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	e, err := getSupportedCPUID(s.fd)
	if err != nil {
		return nil, fmt.Errorf("kvm: get supported cpuid: %w", err)
	}
	return e, nil
}

// MSRIndexList returns the MSRs KVM saves and restores (KVM_GET_MSR_INDEX_LIST).
func (s *System) MSRIndexList() ([]uint32, error) {
	l, err := getMSRIndexList(s.fd)
	if err != nil {
		return nil, fmt.Errorf("kvm: get msr index list: %w", err)
	}
	return l, nil
}

// CreateVM creates a VM (KVM_CREATE_VM, machine type 0).
func (s *System) CreateVM() (*VM, error) {
	fd, err := ioctl(s.fd, kvmCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: create vm: %w", err)
	}
	unix.CloseOnExec(int(fd))
	return &VM{fd: int(fd), mmapSize: s.mmapSize}, nil
}
