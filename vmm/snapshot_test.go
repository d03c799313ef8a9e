package vmm

import (
	"github.com/vesselvm/vessel/kvm"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/boot"
	"github.com/vesselvm/vessel/guestmem"
)

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range ents {
		n = append(n, e.Name())
	}
	sort.Strings(n)
	return n
}

// writeSnapshot writes the memory and state files, readable back, into
// a new or empty directory, and refuses a directory with anything in it
// (leaving it as it was) or a path that is a file.
func TestWriteSnapshot(t *testing.T) {
	mem, err := guestmem.New(boot.RAMLayout(32 << 20))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if _, err := mem.WriteAt([]byte("guest data"), 0x1000); err != nil {
		t.Fatal(err)
	}
	v := &VM{mem: mem}
	st := testState()
	st.Memory, st.Regions = 32<<20, boot.RAMLayout(32<<20)
	base := t.TempDir()

	for _, tc := range []struct {
		name  string
		setup func(dir string)
	}{
		{"new directory", func(string) {}},
		{"empty directory", func(dir string) { os.Mkdir(dir, 0o700) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(base, strings.ReplaceAll(tc.name, " ", "-"))
			tc.setup(dir)
			if err := writeSnapshot(dir, st, v); err != nil {
				t.Fatal(err)
			}
			if got := names(t, dir); strings.Join(got, ",") != "memory,vm.state" {
				t.Fatalf("snapshot directory holds %v", got)
			}
			b, err := os.ReadFile(filepath.Join(dir, snapStateFile))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := parseState(b); err != nil {
				t.Fatalf("the written state does not parse: %v", err)
			}
			f, err := os.Open(filepath.Join(dir, snapMemFile))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			back, err := guestmem.NewFromFile(st.Regions, f)
			if err != nil {
				t.Fatal(err)
			}
			defer back.Close()
			got := make([]byte, 10)
			back.ReadAt(got, 0x1000)
			if string(got) != "guest data" {
				t.Errorf("memory file holds %q at 0x1000", got)
			}
		})
	}

	t.Run("not empty", func(t *testing.T) {
		dir := filepath.Join(base, "full")
		os.Mkdir(dir, 0o700)
		os.WriteFile(filepath.Join(dir, "other"), nil, 0o600)
		err := writeSnapshot(dir, st, v)
		if err == nil || !strings.Contains(err.Error(), "not empty") {
			t.Fatalf("writeSnapshot into a full directory: %v", err)
		}
		if got := names(t, dir); strings.Join(got, ",") != "other" {
			t.Errorf("directory now holds %v", got)
		}
	})
	t.Run("a file", func(t *testing.T) {
		path := filepath.Join(base, "file")
		os.WriteFile(path, nil, 0o600)
		if err := writeSnapshot(path, st, v); err == nil {
			t.Fatal("writeSnapshot onto a file succeeded")
		}
	})
}

func TestRestoredTR(t *testing.T) {
	busy := kvm.Segment{Type: tssBusy, Present: 1, Limit: 0x4087}
	if got := restoredTR(busy, true); got.Type != tssAvailable || got.Limit != busy.Limit {
		t.Errorf("AMD: %+v, want the busy TSS made available", got)
	}
	if got := restoredTR(busy, false); got != busy {
		t.Errorf("Intel: %+v, want it busy as saved", got)
	}
}

func TestBalloonPages(t *testing.T) {
	for _, tc := range []struct {
		mib, memory uint64
		want        uint32
		ok          bool
	}{
		{0, 256 << 20, 0, true},
		{64, 256 << 20, 64 << 8, true},
		{256, 256 << 20, 256 << 8, true},
		{257, 256 << 20, 0, false},
		{^uint64(0), 256 << 20, 0, false}, // would overflow the shift
	} {
		got, err := balloonPages(tc.mib, tc.memory)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("balloonPages(%d MiB of %d) = %d, %v", tc.mib, tc.memory>>20, got, err)
		}
	}
}
