package vmm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"strconv"

	"github.com/vesselvm/vessel/devices"
	"github.com/vesselvm/vessel/devices/virtio"
	"github.com/vesselvm/vessel/guestmem"
	"github.com/vesselvm/vessel/kvm"
)

// A snapshot is a directory with two files:
//
//   - memory: guest RAM, the regions of boot.RAMLayout one after the
//     other, sparse where the guest never wrote (guestmem.WriteTo); a
//     restore maps it MAP_PRIVATE.
//
//   - vm.state: everything else, in a versioned, checksummed envelope:
//
//     vessel-snapshot 3\n
//     crc64 <16 hex digits: CRC-64/ECMA of the body>\n
//     <body: one JSON object, snapState>
//
// The body is JSON rather than a binary layout: it is small next to the
// memory (a few KiB per vCPU), Go decodes it strictly (unknown fields,
// trailing data and wrong types are errors, which matters because a
// state file is untrusted input), a person can read it when a restore
// fails, and it needs no schema evolution: a restore refuses any
// snapshot another vessel version wrote, and the first line's format
// number says when the envelope itself changes. KVM's opaque areas
// (XSAVE, local APIC page, PIC and IOAPIC) are base64 strings.
const (
	snapStateFile = "vm.state"
	snapMemFile   = "memory"
	snapMagic     = "vessel-snapshot"
	// SnapshotFormat is the version of the state file's envelope and
	// body. 2: the body records the shares (snapState.Shares). 3: the
	// checksum is CRC-64 (ECMA), not SHA-256.
	SnapshotFormat = 3
	// maxStateSize bounds the state file a restore reads: 64 KiB per
	// vCPU at most, and KVM allows far fewer vCPUs than would fill it.
	maxStateSize = 32 << 20
	// maxXSaveSize bounds one vCPU's XSAVE area (4 KiB, 11 KiB with
	// AMX's tile data).
	maxXSaveSize = 64 << 10
	// maxSnapMSRs bounds the MSRs of one vCPU (KVM lists a few hundred).
	maxSnapMSRs = 4096
	// maxShareTag is the longest mount tag (virtio.NewP9's limit).
	maxShareTag = 256
)

// ErrSnapshot is wrapped by every reason a snapshot cannot be restored
// (along with ErrInvalidConfig): a corrupt or truncated state file, a
// format, vessel version or host CPU other than this one's, state KVM
// or a device refuses.
var ErrSnapshot = errors.New("unusable snapshot")

// snapErr returns an error wrapping ErrInvalidConfig and ErrSnapshot.
func snapErr(format string, a ...any) error {
	return fmt.Errorf("%w: %w: %s", ErrInvalidConfig, ErrSnapshot, fmt.Sprintf(format, a...))
}

// snapState is the state file's body.
type snapState struct {
	// Vessel is the version of vessel that wrote it; a restore needs the
	// same.
	Vessel string
	// Host is the CPU the snapshot was taken on, for the error message
	// when CPUID differs.
	Host hostCPU

	CPUs    int
	Memory  uint64
	Regions []guestmem.RegionSpec
	Disks   []Disk `json:",omitempty"`
	// Nets are the network devices: the guest's MACs, and the backends
	// a restore attaches unless told others.
	Nets  []Net      `json:",omitempty"`
	Vsock *snapVsock `json:",omitempty"`
	// Balloon is the balloon's configuration, its target as it was;
	// BalloonActual the pages the guest's driver held.
	Balloon       *Balloon `json:",omitempty"`
	BalloonActual uint32   `json:",omitempty"`
	// Shares are the 9P shares, in device order: their tags only. Every
	// one had served no request (Snapshot refuses a mounted share), and
	// a restore serves each from the directory it is given
	// (RestoreOptions.Shares), never from the snapshot's.
	Shares []snapShare `json:",omitempty"`

	// TSCKHz is the guest's TSC frequency.
	TSCKHz uint32
	// XSaveSize is the size of every vCPU's XSAVE area
	// (KVM_CAP_XSAVE2's answer, or 4096 without it).
	XSaveSize int

	Clock     kvm.ClockData
	PIT       kvm.PITState2
	PICMaster []byte
	PICSlave  []byte
	IOAPIC    []byte

	VCPUs  []vcpuState
	Serial devices.SerialState
	I8042  devices.I8042State
	// Virtio has one entry per virtio-mmio device, in attach order (the
	// entropy device, the disks, the network devices, vsock, the
	// balloon, the shares).
	Virtio []virtio.TransportState
}

// snapVsock is the vsock device's configuration in a snapshot.
type snapVsock struct {
	CID  uint64
	Path string
}

// snapShare is a share in a snapshot: the tag the guest read from its
// device at boot and knows it by.
type snapShare struct {
	Tag string
}

// hostCPU identifies a host CPU model (CPUID leaves 0 and 1).
type hostCPU struct {
	Vendor   string
	Family   uint32
	Model    uint32
	Stepping uint32
}

func (h hostCPU) String() string {
	return fmt.Sprintf("%s family %d model %d stepping %d", h.Vendor, h.Family, h.Model, h.Stepping)
}

// vcpuState is one vCPU's state.
type vcpuState struct {
	ID int
	// CPUID is what the vCPU was given; a restore computes it again on
	// its host and refuses the snapshot when it differs.
	CPUID     []kvm.CPUIDEntry
	MPState   kvm.MPState
	Regs      kvm.Regs
	Sregs     kvm.Sregs
	XSave     []byte
	XCRs      kvm.XCRs
	DebugRegs kvm.DebugRegs
	LAPIC     []byte
	MSRs      []kvm.MSR
	Events    kvm.VCPUEvents
}

// crc64Table is the state file checksum's: CRC-64 with the ECMA-182
// polynomial (as xz uses). The checksum catches a damaged or truncated
// file; like any checksum kept beside the data it proves nothing
// against someone who can write the snapshot, which is trusted as the
// command line that made it (docs/SECURITY.md). It replaced
// SHA-256, whose package links Go's whole FIPS module (its DRBG and
// ciphers) into the VMM: about 150 KB that stayed resident in every VMM
// process.
var crc64Table = crc64.MakeTable(crc64.ECMA)

// encodeState returns the state file for st.
func encodeState(st *snapState) ([]byte, error) {
	body, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("vmm: snapshot state: %w", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %d\ncrc64 %016x\n", snapMagic, SnapshotFormat, crc64.Checksum(body, crc64Table))
	b.Write(body)
	return b.Bytes(), nil
}

// readState reads a state file of at most maxStateSize bytes.
func readState(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxStateSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxStateSize {
		return nil, snapErr("state file larger than %d bytes", maxStateSize)
	}
	return b, nil
}

// parseState checks a state file's envelope and checksum, decodes its
// body strictly and checks every count and size in it. It does not
// compare the vessel version or the host (checkCompat does).
func parseState(b []byte) (*snapState, error) {
	line, rest, ok := bytes.Cut(b, []byte("\n"))
	magic, ver, _ := bytes.Cut(line, []byte(" "))
	if !ok || string(magic) != snapMagic {
		return nil, snapErr("not a vessel snapshot state file")
	}
	n, err := strconv.Atoi(string(ver))
	if err != nil {
		return nil, snapErr("bad format number %q", ver)
	}
	if n != SnapshotFormat {
		return nil, snapErr("snapshot format %d, this vessel reads format %d", n, SnapshotFormat)
	}
	line, body, ok := bytes.Cut(rest, []byte("\n"))
	algo, digest, _ := bytes.Cut(line, []byte(" "))
	want, herr := strconv.ParseUint(string(digest), 16, 64)
	if !ok || string(algo) != "crc64" || herr != nil || len(digest) != 16 {
		return nil, snapErr("state file has no checksum line")
	}
	if crc64.Checksum(body, crc64Table) != want {
		return nil, snapErr("state file is corrupt (checksum mismatch)")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var st snapState
	if err := dec.Decode(&st); err != nil {
		return nil, snapErr("state file: %v", err)
	}
	if dec.More() {
		return nil, snapErr("state file: data after the state")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, snapErr("state file: data after the state")
	}
	if err := st.check(); err != nil {
		return nil, snapErr("state file: %v", err)
	}
	return &st, nil
}

// check verifies the counts and sizes KVM and the VMM rely on. Values
// inside KVM's structures are KVM's to check when they are set.
func (st *snapState) check() error {
	if err := CheckResources(st.CPUs, st.Memory); err != nil {
		return err
	}
	switch {
	case len(st.VCPUs) != st.CPUs:
		return fmt.Errorf("%d vCPU states for %d vCPUs", len(st.VCPUs), st.CPUs)
	case len(st.PICMaster) != 512 || len(st.PICSlave) != 512 || len(st.IOAPIC) != 512:
		return errors.New("interrupt controller state is not 512 bytes")
	case st.XSaveSize < kvm.XSaveSize || st.XSaveSize > maxXSaveSize:
		return fmt.Errorf("XSAVE size %d", st.XSaveSize)
	case len(st.Disks)+len(st.Nets)+len(st.Shares) > len(virtioGSIs) || len(st.Virtio) > len(virtioGSIs):
		return errors.New("too many devices")
	}
	tags := map[string]bool{}
	for i, s := range st.Shares {
		if len(s.Tag) == 0 || len(s.Tag) > maxShareTag {
			return fmt.Errorf("share %d: tag of %d bytes", i, len(s.Tag))
		}
		if tags[s.Tag] {
			return fmt.Errorf("share %d: tag %q used twice", i, s.Tag)
		}
		tags[s.Tag] = true
	}
	for i, n := range st.Nets {
		if len(n.MAC) != 6 {
			return fmt.Errorf("network %d: MAC of %d bytes", i, len(n.MAC))
		}
	}
	for i, c := range st.VCPUs {
		switch {
		case c.ID != i:
			return fmt.Errorf("vCPU state %d is for vCPU %d", i, c.ID)
		case len(c.XSave) != st.XSaveSize:
			return fmt.Errorf("vCPU %d: XSAVE area of %d bytes, want %d", i, len(c.XSave), st.XSaveSize)
		case len(c.LAPIC) != len(kvm.LAPICState{}.Regs):
			return fmt.Errorf("vCPU %d: local APIC state of %d bytes", i, len(c.LAPIC))
		case len(c.MSRs) > maxSnapMSRs:
			return fmt.Errorf("vCPU %d: %d MSRs", i, len(c.MSRs))
		case len(c.CPUID) > 256:
			return fmt.Errorf("vCPU %d: %d CPUID entries", i, len(c.CPUID))
		}
	}
	return nil
}

// checkCompat refuses a snapshot another vessel version wrote.
func (st *snapState) checkCompat(version string) error {
	if st.Vessel != version {
		return snapErr("written by vessel %q, this is vessel %q: restore it with the vessel that took it", st.Vessel, version)
	}
	return nil
}

// irqchipBlob returns a chip's state for the state file, and back.
func irqchipBlob(c kvm.IRQChip) []byte { return append([]byte(nil), c.Data[:]...) }

func blobIRQChip(id uint32, b []byte) kvm.IRQChip {
	c := kvm.IRQChip{ChipID: id}
	copy(c.Data[:], b)
	return c
}
