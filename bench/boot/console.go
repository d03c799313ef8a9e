package main

import (
	"strconv"
	"strings"
)

// ParseUptime recognizes the line `cat /proc/uptime` prints,
// "12.34 5.67" (seconds since boot, seconds idle summed over CPUs), and
// returns the first number. Anything else on the line (a kernel message,
// a prompt) makes it not an uptime line.
func ParseUptime(line string) (float64, bool) {
	f := strings.Fields(strings.TrimRight(line, "\r\n"))
	if len(f) != 2 {
		return 0, false
	}
	var v [2]float64
	for i, s := range f {
		// The kernel prints "%lu.%02lu": digits, a dot, two digits.
		whole, frac, ok := strings.Cut(s, ".")
		if !ok || whole == "" || len(frac) != 2 || !allDigits(whole) || !allDigits(frac) {
			return 0, false
		}
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return 0, false
		}
		v[i] = x
	}
	return v[0], true
}

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// powerOffMessages are console lines (substrings) the guest kernel prints
// once it has given up running: after them a VMM that does not exit by
// itself has nothing left to do.
var powerOffMessages = []string{
	"reboot: Power down",
	"reboot: System halted",
	"reboot: Restarting system",
	"Kernel panic - not syncing",
}

// isPowerOffLine reports whether line says the guest stopped.
func isPowerOffLine(line string) bool {
	for _, m := range powerOffMessages {
		if strings.Contains(line, m) {
			return true
		}
	}
	return false
}

// tail keeps the last lines written to it, and the first line that
// reports a Go runtime crash, however long the dump after it.
type tail struct {
	max   int
	lines []string
	fatal string
}

func (t *tail) add(line string) {
	if t.fatal == "" && (strings.HasPrefix(line, "fatal error:") || strings.HasPrefix(line, "panic:")) {
		t.fatal = strings.TrimSpace(line)
	}
	if len(t.lines) == t.max {
		copy(t.lines, t.lines[1:])
		t.lines = t.lines[:len(t.lines)-1]
	}
	t.lines = append(t.lines, line)
}

// summary returns the line that best says why a program died: the first
// Go "fatal error:" or "panic:" line (the goroutine dump after it says
// little), else the last line that is not blank.
func (t *tail) summary() string {
	if t.fatal != "" {
		return t.fatal
	}
	return t.last()
}

// last returns the last line that is not blank, or "".
func (t *tail) last() string {
	for i := len(t.lines) - 1; i >= 0; i-- {
		if s := strings.TrimSpace(t.lines[i]); s != "" {
			return s
		}
	}
	return ""
}

// isControlPortProbe recognizes a VMM's complaint about the guest init
// reading vessel's control port (ports 0xF00-0xF0F): vesselinit reads its
// magic at 0xF08 to learn whether it runs under vessel, and gokvm, which
// treats any unknown port as fatal, prints
// "err: unexpected kvm exit reason: unexpected io port 0xf08".
func isControlPortProbe(line string) bool {
	i := strings.Index(line, "unexpected io port 0xf0")
	return i >= 0 && len(line) > i+len("unexpected io port 0xf0")
}
