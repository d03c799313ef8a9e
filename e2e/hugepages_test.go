//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// thpSetting is the host's transparent huge page mode (always, madvise or
// never), "" where the kernel has none.
func thpSetting() string {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.IndexByte(s, '['); i >= 0 {
		if j := strings.IndexByte(s[i:], ']'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	return ""
}

// pages2M boots a VM with args added and returns how many 2 MiB mappings
// KVM held for its guest RAM at the end (--metrics' kvm_vm_stats).
func pages2M(t *testing.T, args ...string) uint64 {
	t.Helper()
	metrics := filepath.Join(t.TempDir(), "metrics.json")
	argv := append([]string{"vm", "run", "--memory", "256M", "--metrics", metrics}, args...)
	r := vessel(t, append(argv, "--", "true")...)
	if r.code != 0 {
		t.Fatalf("vessel %s: %v", strings.Join(argv, " "), r)
	}
	b, err := os.ReadFile(metrics)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		VM map[string]uint64 `json:"kvm_vm_stats"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("metrics: %v\n%s", err, b)
	}
	if m.VM["pages_4k"]+m.VM["pages_2m"] == 0 {
		t.Fatalf("metrics without KVM's page gauges (kvm_vm_stats): %s", b)
	}
	return m.VM["pages_2m"]
}

// TestHugePages checks --hugepages on a real guest: KVM maps its RAM with
// 2 MiB pages, which needs both the host's transparent huge pages (asked
// for with MADV_HUGEPAGE) and guest RAM whose host address agrees with
// the guest-physical one modulo 2 MiB (KVM gives a memory slot that
// disagrees no huge page at all). Without the flag, on a host that gives
// huge pages only when asked (madvise, Debian's default and the test
// platform's), KVM maps none.
func TestHugePages(t *testing.T) {
	mode := thpSetting()
	if mode != "always" && mode != "madvise" {
		t.Fatalf("this host's transparent huge pages are %q (/sys/kernel/mm/transparent_hugepage/enabled): the test needs always or madvise", mode)
	}
	if n := pages2M(t, "--hugepages"); n == 0 {
		t.Errorf("--hugepages: KVM mapped no guest memory with 2 MiB pages")
	} else {
		t.Logf("--hugepages: %d MiB of guest RAM mapped with 2 MiB pages", 2*n)
	}
	if mode == "madvise" {
		if n := pages2M(t); n != 0 {
			t.Errorf("without --hugepages: %d 2 MiB mappings on a host in madvise mode", n)
		}
	}
}
