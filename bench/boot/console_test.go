package main

import "testing"

func TestParseUptime(t *testing.T) {
	for _, c := range []struct {
		line string
		want float64
		ok   bool
	}{
		{"1.23 0.45", 1.23, true},
		{"12.34 5.67\n", 12.34, true},
		{"12.34 5.67\r", 12.34, true},
		{"  8.00 15.99  ", 8, true},
		{"1234567.89 1.00", 1234567.89, true},
		{"", 0, false},
		{"1.23", 0, false},
		{"1.23 0.45 6.78", 0, false},
		{"[    0.718787] ACPI Error", 0, false},
		{"1.2 0.45", 0, false},
		{"1.234 0.45", 0, false},
		{".23 0.45", 0, false},
		{"-1.23 0.45", 0, false},
		{"1e3 0.45", 0, false},
		{"1.23 abc", 0, false},
		{"uptime: 1.23", 0, false},
	} {
		got, ok := ParseUptime(c.line)
		if ok != c.ok || got != c.want {
			t.Errorf("ParseUptime(%q) = %v, %v; want %v, %v", c.line, got, ok, c.want, c.ok)
		}
	}
}

func TestPowerOffLine(t *testing.T) {
	for line, want := range map[string]bool{
		"[    7.976256] reboot: System halted":     true,
		"[    7.976256] reboot: Power down":        true,
		"Kernel panic - not syncing: Attempted to": true,
		"[    0.1] reboot: Restarting system":      true,
		"1.23 0.45":                                false,
		"rebooting soon":                           false,
	} {
		if got := isPowerOffLine(line); got != want {
			t.Errorf("isPowerOffLine(%q) = %v", line, got)
		}
	}
}

func TestTail(t *testing.T) {
	tl := tail{max: 3}
	for _, l := range []string{"a", "b", "c", "d", "  "} {
		tl.add(l)
	}
	if len(tl.lines) != 3 || tl.lines[0] != "c" || tl.lines[2] != "  " {
		t.Errorf("tail kept %q", tl.lines)
	}
	if tl.last() != "d" || tl.summary() != "d" {
		t.Errorf("last() = %q, summary() = %q, want the last non-blank line", tl.last(), tl.summary())
	}
	// The crash line is kept even when the dump after it overflows the tail.
	g := tail{max: 2}
	for _, l := range []string{"this is not terminal", "fatal error: all goroutines are asleep - deadlock!", "", "goroutine 1 [select (no cases)]:", "\tmain.go:10 +0x1f"} {
		g.add(l)
	}
	if got := g.summary(); got != "fatal error: all goroutines are asleep - deadlock!" {
		t.Errorf("summary() = %q", got)
	}
}

func TestControlPortProbe(t *testing.T) {
	for line, want := range map[string]bool{
		"err: unexpected kvm exit reason: unexpected io port 0xf08": true,
		"err: unexpected kvm exit reason: unexpected io port 0xf0":  false,
		"err: unexpected kvm exit reason: unexpected io port 0x70":  false,
		"1.23 0.45": false,
	} {
		if got := isControlPortProbe(line); got != want {
			t.Errorf("isControlPortProbe(%q) = %v", line, got)
		}
	}
}
