package main

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseSmapsFixture(t *testing.T) {
	f, err := os.Open("testdata/smaps.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	maps, err := ParseSmaps(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(maps) != 9 {
		t.Fatalf("got %d mappings, want 9", len(maps))
	}
	want := []struct {
		path      string
		size, rss uint64
		anon      bool
	}{
		{"/work/main/bin/vessel", 4 << 10, 4 << 10, false},
		{"/work/main/bin/vessel", 4092 << 10, 2048 << 10, false},
		{"", 64 << 20, 3072 << 10, true},
		{"", 256 << 20, 40960 << 10, true},
		{"/dev/zero (deleted)", 2 << 20, 512 << 10, true},
		{"anon_inode:kvm-vcpu:0", 4 << 10, 4 << 10, false},
		{"/tmp/a dir/with spaces.so", 4 << 10, 4 << 10, false},
		{"[stack]", 132 << 10, 16 << 10, false},
		{"[vsyscall]", 4 << 10, 0, false},
	}
	for i, w := range want {
		m := maps[i]
		if m.Path != w.path || m.Size != w.size || m.Rss != w.rss || m.Anonymous() != w.anon {
			t.Errorf("mapping %d = %+v (anonymous %v), want %+v", i, m, m.Anonymous(), w)
		}
	}
	if maps[3].Start != 0x7f0000000000 || maps[3].End != 0x7f0010000000 || maps[3].Perms != "rw-p" {
		t.Errorf("guest mapping header parsed as %+v", maps[3])
	}

	u, err := SplitGuestRAM(maps, 256<<20)
	if err != nil {
		t.Fatal(err)
	}
	const rssKB = 4 + 2048 + 3072 + 40960 + 512 + 4 + 4 + 16
	const pssKB = rssKB - 1024 // half the text is shared with another process
	const guestPSSKB = 40960
	if u.RSS != rssKB<<10 || u.GuestRSS != 40960<<10 || u.Overhead != (rssKB-40960)<<10 || u.GuestMaps != 1 {
		t.Errorf("SplitGuestRAM = %+v", u)
	}
	if u.PSS != pssKB<<10 || u.GuestPSS != guestPSSKB<<10 {
		t.Errorf("SplitGuestRAM PSS = %d, guest %d; want %d, %d KiB", u.PSS>>10, u.GuestPSS>>10, pssKB, guestPSSKB)
	}

	// No mapping of a 512 MiB guest: an error, with the totals still set.
	u, err = SplitGuestRAM(maps, 512<<20)
	if !errors.Is(err, ErrNoGuestRAM) || u.RSS != rssKB<<10 || u.GuestMaps != 0 {
		t.Errorf("SplitGuestRAM(512 MiB) = %+v, %v", u, err)
	}
}

func TestSplitGuestRAMShared(t *testing.T) {
	// gokvm maps guest RAM MAP_SHARED|MAP_ANONYMOUS: "/dev/zero (deleted)".
	maps := []Mapping{
		{Path: "/dev/zero (deleted)", Size: 256 << 20, Rss: 100 << 20},
		{Path: "/usr/bin/x", Size: 256 << 20, Rss: 1 << 20}, // file-backed: not RAM
		{Size: 4 << 20, Rss: 2 << 20},
	}
	u, err := SplitGuestRAM(maps, 256<<20)
	if err != nil || u.GuestRSS != 100<<20 || u.Overhead != 3<<20 {
		t.Errorf("SplitGuestRAM = %+v, %v", u, err)
	}
}

func TestParseSmapsErrors(t *testing.T) {
	for _, in := range []string{
		"Rss: 4 kB\n", // a field before any mapping
		"00400000-00401000 r--p 00000000 00:1f 1234 /x\nRss: four kB\n",
		"00400000-00401000 r--p 00000000 00:1f 1234 /x\nRss: 4 MB\n",
		"garbage\n",
	} {
		if _, err := ParseSmaps(strings.NewReader(in)); err == nil {
			t.Errorf("ParseSmaps(%q) succeeded", in)
		}
	}
}

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and parentheses; utime 250, stime 130 ticks.
	stat := "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 130 0 0 20 0 3 0 5000 1000000 2000 18446744073709551615\n"
	got, err := ParseStatCPU(stat)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3800 * time.Millisecond; got != want {
		t.Errorf("ParseStatCPU = %v, want %v", got, want)
	}
	for _, bad := range []string{"", "1 (x S 1", "1 (x) S 1 2 3", "1 (x) S 1 2 3 4 5 6 7 8 9 10 u s"} {
		if _, err := ParseStatCPU(bad); err == nil {
			t.Errorf("ParseStatCPU(%q) succeeded", bad)
		}
	}
}

func TestReadSelf(t *testing.T) {
	// The live readers work on this process.
	if _, err := readStatCPU(os.Getpid()); err != nil {
		t.Error(err)
	}
	maps, err := readSmaps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var rss uint64
	for _, m := range maps {
		rss += m.Rss
	}
	if rss == 0 {
		t.Error("this process has no resident memory?")
	}
}

func TestParseStatPPID(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"42 (vessel) S 7 42 42 0 -1", 7, false},
		{"43 (a) b) (c) R 42 43 43", 42, false}, // parentheses in the name
		{"44 (x) S", 0, true},
		{"44 x S 1", 0, true},
		{"44 (x) S one", 0, true},
	} {
		got, err := ParseStatPPID(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseStatPPID(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestDescendants(t *testing.T) {
	ppid := map[int]int{
		10: 1,  // benchboot's VMM
		12: 10, // its jailed child
		11: 10,
		20: 12, // a grandchild
		30: 1,  // unrelated
		31: 30,
	}
	for _, tc := range []struct {
		pid  int
		want []int
	}{
		{10, []int{10, 11, 12, 20}},
		{12, []int{12, 20}},
		{20, []int{20}},
		{99, []int{99}}, // gone: itself only
	} {
		got := Descendants(tc.pid, ppid)
		if !slices.Equal(got, tc.want) {
			t.Errorf("Descendants(%d) = %v, want %v", tc.pid, got, tc.want)
		}
	}
	// A cycle (a PID reused while the table was read) ends.
	if got := Descendants(1, map[int]int{1: 2, 2: 1}); len(got) != 2 {
		t.Errorf("Descendants over a cycle = %v", got)
	}
}
