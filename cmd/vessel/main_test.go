package main

import (
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		err  bool
	}{
		{"256", 256 << 20, false},
		{"256M", 256 << 20, false},
		{"256MiB", 256 << 20, false},
		{"256mb", 256 << 20, false},
		{"1G", 1 << 30, false},
		{"2g", 2 << 30, false},
		{"512K", 512 << 10, false},
		{"1T", 1 << 40, false},
		{"0", 0, false},
		{"", 0, true},
		{"M", 0, true},
		{"12X", 0, true},
		{"-1G", 0, true},
		{"99999999999999999999G", 0, true},
		{"17179869184T", 0, true},
	} {
		got, err := parseSize(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, err %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"vm", "run", "--cpus", "0"},
		{"vm", "run", "--memory", "0"},
		{"vm", "run", "--memory", "lots"},
		{"vm", "run", "--bogus"},
		{"vm", "run", "uname"},
		{"nosuchcommand"},
	} {
		if code := run(args); code != exitUsage {
			t.Errorf("vessel %v: exit %d, want %d", args, code, exitUsage)
		}
	}
}
