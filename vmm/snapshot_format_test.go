package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc64"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/boot"
	"github.com/vesselvm/vessel/kvm"
)

// testState is a well-formed state for one vCPU and 64 MiB.
func testState() *snapState {
	return &snapState{
		Vessel: "v1", Host: hostCPU{Vendor: "AuthenticAMD", Family: 25, Model: 1, Stepping: 1},
		CPUs: 1, Memory: 64 << 20, Regions: boot.RAMLayout(64 << 20),
		XSaveSize: kvm.XSaveSize, TSCKHz: 2000000,
		PICMaster: make([]byte, 512), PICSlave: make([]byte, 512), IOAPIC: make([]byte, 512),
		VCPUs: []vcpuState{{
			ID: 0, XSave: make([]byte, kvm.XSaveSize), LAPIC: make([]byte, 1024),
			Regs:  kvm.Regs{RIP: 0xffffffff81000000, RFLAGS: 2},
			MSRs:  []kvm.MSR{{Index: msrIA32TSC, Data: 12345}},
			CPUID: []kvm.CPUIDEntry{{Function: 0, EAX: 0x10}},
		}},
	}
}

// reseal replaces a state file's body and recomputes its checksum, as
// someone who edits a snapshot on purpose would.
func reseal(t *testing.T, file []byte, edit func(body []byte) []byte) []byte {
	t.Helper()
	parts := bytes.SplitN(file, []byte("\n"), 3)
	body := edit(parts[2])
	return []byte(fmt.Sprintf("%s\ncrc64 %016x\n%s", parts[0], crc64.Checksum(body, crc64Table), body))
}

// formatLine is the state file's first line.
var formatLine = fmt.Sprintf("vessel-snapshot %d\n", SnapshotFormat)

func TestStateRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*snapState)
	}{
		{"bare", func(*snapState) {}},
		{"shares", func(s *snapState) {
			s.Shares = []snapShare{{Tag: "vessel-root"}, {Tag: "vessel-files"}, {Tag: "vessel-bind-0"}}
		}},
		{"devices", func(s *snapState) {
			s.Disks = []Disk{{Path: "/img", ReadOnly: true, Serial: "s"}}
			s.Nets = []Net{{MAC: []byte{0x52, 0x54, 0, 1, 2, 3}, Tap: "vtap0"}}
			s.Vsock = &snapVsock{CID: 3, Path: "/run/v.sock"}
			s.Shares = []snapShare{{Tag: "vessel-root"}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := testState()
			tc.edit(st)
			b, err := encodeState(st)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(b, []byte(formatLine)) {
				t.Fatalf("state file starts %q, want %q", b[:min(len(b), 20)], formatLine)
			}
			got, err := parseState(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, st) {
				t.Fatalf("parsed %+v\nwant %+v", got, st)
			}
			if err := got.checkCompat("v1"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestParseStateRefuses(t *testing.T) {
	good, err := encodeState(testState())
	if err != nil {
		t.Fatal(err)
	}
	state := func(edit func(*snapState)) func(t *testing.T) []byte {
		return func(t *testing.T) []byte {
			st := testState()
			edit(st)
			b, err := encodeState(st)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
	raw := func(b []byte) func(*testing.T) []byte { return func(*testing.T) []byte { return b } }
	for _, tc := range []struct {
		name string
		file func(*testing.T) []byte
		want string
	}{
		{"empty", raw(nil), "not a vessel snapshot"},
		{"another file", raw([]byte("{}\n")), "not a vessel snapshot"},
		{"newer format", raw(bytes.Replace(good, []byte(formatLine), []byte(fmt.Sprintf("vessel-snapshot %d\n", SnapshotFormat+1)), 1)),
			fmt.Sprintf("snapshot format %d, this vessel reads format %d", SnapshotFormat+1, SnapshotFormat)},
		{"format 1, without shares", raw(bytes.Replace(good, []byte(formatLine), []byte("vessel-snapshot 1\n"), 1)),
			fmt.Sprintf("snapshot format 1, this vessel reads format %d", SnapshotFormat)},
		{"format not a number", raw(bytes.Replace(good, []byte(formatLine), []byte("vessel-snapshot x\n"), 1)), "bad format number"},
		{"no checksum", raw([]byte(formatLine + "{}")), "no checksum"},
		{"short checksum", raw([]byte(formatLine + "crc64 abcd\n{}")), "no checksum"},
		{"flipped byte", raw(bytes.Replace(good, []byte(`"Vessel":"v1"`), []byte(`"Vessel":"v2"`), 1)), "corrupt (checksum mismatch)"},
		{"truncated", raw(good[:len(good)-10]), "corrupt (checksum mismatch)"},
		{"unknown field", func(t *testing.T) []byte {
			return reseal(t, good, func(b []byte) []byte { return bytes.Replace(b, []byte(`{"Vessel"`), []byte(`{"Extra":1,"Vessel"`), 1) })
		}, "unknown field"},
		{"trailing data", func(t *testing.T) []byte {
			return reseal(t, good, func(b []byte) []byte { return append(b, []byte(" {}")...) })
		}, "data after the state"},
		{"not JSON", func(t *testing.T) []byte {
			return reseal(t, good, func([]byte) []byte { return []byte("[1,2") })
		}, "state file:"},
		{"vCPU count", state(func(s *snapState) { s.CPUs = 2 }), "1 vCPU states for 2 vCPUs"},
		{"no vCPUs", state(func(s *snapState) { s.CPUs, s.VCPUs = 0, nil }), "--cpus must be at least 1"},
		{"vCPU order", state(func(s *snapState) { s.VCPUs[0].ID = 1 }), "is for vCPU 1"},
		{"short XSAVE", state(func(s *snapState) { s.VCPUs[0].XSave = s.VCPUs[0].XSave[:100] }), "XSAVE area of 100 bytes"},
		{"XSAVE size", state(func(s *snapState) { s.XSaveSize = 1 << 30 }), "XSAVE size"},
		{"short LAPIC", state(func(s *snapState) { s.VCPUs[0].LAPIC = nil }), "local APIC state of 0 bytes"},
		{"short IOAPIC", state(func(s *snapState) { s.IOAPIC = s.IOAPIC[:10] }), "not 512 bytes"},
		{"too many MSRs", state(func(s *snapState) { s.VCPUs[0].MSRs = make([]kvm.MSR, maxSnapMSRs+1) }), "MSRs"},
		{"too many devices", state(func(s *snapState) { s.Disks = make([]Disk, 40) }), "too many devices"},
		{"too many shares", state(func(s *snapState) { s.Disks, s.Shares = make([]Disk, 10), make([]snapShare, 10) }), "too many devices"},
		{"share without a tag", state(func(s *snapState) { s.Shares = []snapShare{{Tag: "a"}, {}} }), "share 1: tag of 0 bytes"},
		{"share tag too long", state(func(s *snapState) { s.Shares = []snapShare{{Tag: strings.Repeat("t", 257)}} }), "share 0: tag of 257 bytes"},
		{"share tag twice", state(func(s *snapState) { s.Shares = []snapShare{{Tag: "a"}, {Tag: "a"}} }), `share 1: tag "a" used twice`},
		{"tiny memory", state(func(s *snapState) { s.Memory = 4096 }), "memory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseState(tc.file(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseState = %v, want an error with %q", err, tc.want)
			}
			if !errors.Is(err, ErrSnapshot) && !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v wraps neither ErrSnapshot nor ErrInvalidConfig", err)
			}
		})
	}
}

// A snapshot another vessel took is refused with one line naming both
// versions, even when its checksum is right; ReadSnapshot makes the
// checks a restore makes first.
func TestReadSnapshotVersion(t *testing.T) {
	dir := t.TempDir()
	b, err := encodeState(testState())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, snapStateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSnapshot(dir, "v1"); err != nil {
		t.Fatal(err)
	}
	_, err = ReadSnapshot(dir, "v2")
	if !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), `written by vessel "v1", this is vessel "v2"`) {
		t.Fatalf("ReadSnapshot of another version: %v", err)
	}
	if _, err := ReadSnapshot(filepath.Join(dir, "missing"), "v1"); !errors.Is(err, ErrSnapshot) {
		t.Fatalf("ReadSnapshot of a missing directory: %v", err)
	}
	big := append([]byte(formatLine), make([]byte, maxStateSize)...)
	if err := os.WriteFile(filepath.Join(dir, snapStateFile), big, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSnapshot(dir, "v1"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("ReadSnapshot of an oversized state file: %v", err)
	}
}

func TestCPUModel(t *testing.T) {
	for _, tc := range []struct {
		name string
		eax  uint32
		want hostCPU
	}{
		// EPYC 7763 (Zen 3): family 0xF + 0xA, model 0x01.
		{"AMD extended family", 0x00a00f11, hostCPU{Vendor: "AuthenticAMD", Family: 25, Model: 1, Stepping: 1}},
		// Skylake-SP: family 6, extended model 5, model 5.
		{"family 6, extended model", 0x00050654, hostCPU{Vendor: "AuthenticAMD", Family: 6, Model: 0x55, Stepping: 4}},
		// Family 5 keeps the extended model out.
		{"family 5", 0x000f0543, hostCPU{Vendor: "AuthenticAMD", Family: 5, Model: 4, Stepping: 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// "AuthenticAMD" in EBX, EDX, ECX.
			leaf0 := kvm.CPUIDEntry{Function: 0, EBX: 0x68747541, EDX: 0x69746e65, ECX: 0x444d4163}
			if got := cpuModel([]kvm.CPUIDEntry{leaf0, {Function: 1, EAX: tc.eax}}); got != tc.want {
				t.Errorf("cpuModel = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// FuzzParseState feeds the state-file parser arbitrary files: it must
// refuse or accept without panicking, and what it accepts must encode to
// a file that parses to the same state. An input whose first byte is odd
// is a body, sealed with its checksum first, so that the fuzzer reaches
// the decoder and the checks behind it.
func FuzzParseState(f *testing.F) {
	good, err := encodeState(testState())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(append([]byte{0}, good...))
	f.Add(append([]byte{1}, bytes.SplitN(good, []byte("\n"), 3)[2]...))
	f.Add([]byte("\x00" + formatLine + "crc64 00\n{}"))
	f.Add([]byte("\x01{\"CPUs\":1}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		file := data[1:]
		if data[0]&1 != 0 {
			file = append([]byte(fmt.Sprintf("%scrc64 %016x\n", formatLine, crc64.Checksum(file, crc64Table))), file...)
		}
		st, err := parseState(file)
		if err != nil {
			return
		}
		b, err := encodeState(st)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseState(b)
		if err != nil {
			t.Fatalf("an accepted state does not parse again: %v", err)
		}
		b2, err := encodeState(again)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, b2) {
			t.Fatalf("state changed in a round trip")
		}
	})
}
