package vmm

import (
	"testing"

	"github.com/vesselvm/vessel/kvm"
)

// supportedSample is a trimmed KVM_GET_SUPPORTED_CPUID result.
func supportedSample() []kvm.CPUIDEntry {
	return []kvm.CPUIDEntry{
		{Function: 0, EAX: 0x1f},
		{Function: leafFeatures, EBX: 0xFF00_0000 | 0x0011_0800, ECX: 0x0000_0001, EDX: 0x0000_0001},
		{Function: leafCacheParams, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 0x121}, // L1d
		{Function: leafCacheParams, Index: 3, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 0x163}, // L3
		{Function: leafCacheParams, Index: 4, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 0},     // end
		{Function: leafThermal, EAX: 0xff, EBX: 1, ECX: 1, EDX: 1},
		{Function: leafExtTopology, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex},
		{Function: leafExtTopology, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex},
		{Function: leafExtTopology, Index: 2, Flags: kvm.CPUIDFlagSignificantIndex},
		{Function: leafKVMSignature, EAX: leafKVMFeatures, EBX: 0x4b4d564b, ECX: 0x564b4d56, EDX: 0x4d},
		{Function: leafKVMFeatures, EAX: 0x01007afb},
		{Function: leafAMDExtFeatures, ECX: 0x3},
		{Function: leafAMDSizes, ECX: 0xffff},
		{Function: leafAMDTopology, EAX: 0xff, EBX: 0xffff, ECX: 0xff},
	}
}

func find(t *testing.T, es []kvm.CPUIDEntry, fn, idx uint32) kvm.CPUIDEntry {
	t.Helper()
	for _, e := range es {
		if e.Function == fn && e.Index == idx {
			return e
		}
	}
	t.Fatalf("leaf %#x/%d missing", fn, idx)
	return kvm.CPUIDEntry{}
}

func TestShapeCPUID(t *testing.T) {
	for _, tc := range []struct{ id, n int }{{0, 1}, {0, 3}, {2, 3}, {63, 64}} {
		es := shapeCPUID(supportedSample(), tc.id, tc.n)
		if len(es) != len(supportedSample()) {
			t.Fatalf("shaping changed the number of leaves")
		}
		f := find(t, es, leafFeatures, 0)
		if got := int(f.EBX >> 24); got != tc.id {
			t.Errorf("id %d/%d: leaf 1 APIC ID %d", tc.id, tc.n, got)
		}
		if got := int(f.EBX >> 16 & 0xff); got != tc.n {
			t.Errorf("id %d/%d: leaf 1 logical count %d", tc.id, tc.n, got)
		}
		if f.ECX&ecxHypervisor == 0 {
			t.Errorf("hypervisor bit not set")
		}
		if (f.EDX&edxHTT != 0) != (tc.n > 1) {
			t.Errorf("id %d/%d: HTT bit %v", tc.id, tc.n, f.EDX&edxHTT != 0)
		}
		l1 := find(t, es, leafCacheParams, 0)
		if got := int(l1.EAX>>26) + 1; got != tc.n {
			t.Errorf("leaf 4: cores per package %d, want %d", got, tc.n)
		}
		if l1.EAX>>14&0xfff != 0 {
			t.Errorf("L1 shared by %d threads, want 1", l1.EAX>>14&0xfff+1)
		}
		l3 := find(t, es, leafCacheParams, 3)
		if got := int(l3.EAX>>14&0xfff) + 1; got != tc.n {
			t.Errorf("L3 shared by %d, want %d", got, tc.n)
		}
		if e := find(t, es, leafCacheParams, 4); e.EAX != 0 {
			t.Errorf("terminating cache leaf changed: %#x", e.EAX)
		}
		smt, core, inv := find(t, es, leafExtTopology, 0), find(t, es, leafExtTopology, 1), find(t, es, leafExtTopology, 2)
		if smt.EBX != 1 || smt.ECX>>8&0xff != 1 || int(smt.EDX) != tc.id {
			t.Errorf("leaf 0xB/0 = %+v", smt)
		}
		if int(core.EBX) != tc.n || core.ECX>>8&0xff != 2 || 1<<core.EAX < tc.n || int(core.EDX) != tc.id {
			t.Errorf("leaf 0xB/1 = %+v", core)
		}
		if inv.EBX != 0 || inv.ECX>>8&0xff != 0 {
			t.Errorf("leaf 0xB/2 should be invalid: %+v", inv)
		}
		if th := find(t, es, leafThermal, 0); th.EAX != 1<<2 || th.EBX|th.ECX|th.EDX != 0 {
			t.Errorf("leaf 6 = %+v", th)
		}
		if sig := find(t, es, leafKVMSignature, 0); sig.EBX != 0x4b4d564b {
			t.Errorf("KVM signature leaf changed: %+v", sig)
		}
		if e := find(t, es, leafAMDTopology, 0); int(e.EAX) != tc.id {
			t.Errorf("leaf 0x8000001E EAX %d, want %d", e.EAX, tc.id)
		}
		if e := find(t, es, leafAMDSizes, 0); int(e.ECX&0xff)+1 != tc.n || 1<<(e.ECX>>12&0xf) < tc.n {
			t.Errorf("leaf 0x80000008 ECX %#x for %d CPUs", e.ECX, tc.n)
		}
	}
}

func TestBitsFor(t *testing.T) {
	for n, want := range map[int]int{1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 64: 6, 65: 7} {
		if got := bitsFor(n); got != want {
			t.Errorf("bitsFor(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestPanicLine(t *testing.T) {
	tail := []string{"[ 1.0] foo", "[ 1.2] Kernel panic - not syncing: No working init found.", "[ 1.3] bar"}
	if l, ok := panicLine(tail); !ok || l != "Kernel panic - not syncing: No working init found." {
		t.Fatalf("panicLine = %q %v", l, ok)
	}
	if _, ok := panicLine([]string{"all fine"}); ok {
		t.Fatal("found a panic in a clean tail")
	}
}

func TestWithTSCDeadline(t *testing.T) {
	in := supportedSample()
	out := withTSCDeadline(in)
	for i, e := range out {
		if e.Function == leafFeatures && e.ECX&ecxTSCDeadline == 0 {
			t.Error("leaf 1 lacks the TSC-deadline bit")
		}
		if in[i].Function == leafFeatures && in[i].ECX&ecxTSCDeadline != 0 {
			t.Error("the input table was modified")
		}
	}
}
