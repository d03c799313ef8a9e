package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Mapping is one virtual memory area of a process, as /proc/PID/smaps
// describes it. Sizes are in bytes.
type Mapping struct {
	Start, End uint64
	Perms      string
	Path       string // empty for an anonymous mapping
	Size       uint64 // the "Size:" field
	Rss        uint64 // the "Rss:" field
	Pss        uint64 // the "Pss:" field: Rss with each shared page divided among its sharers
}

// Anonymous reports whether m is not backed by a regular file: a private
// or shared anonymous mapping (shown without a path, as an [anon:...]
// name, or as "/dev/zero (deleted)" for MAP_SHARED|MAP_ANONYMOUS) or a
// memfd.
func (m Mapping) Anonymous() bool {
	switch {
	case m.Path == "",
		strings.HasPrefix(m.Path, "[anon:"),
		strings.HasPrefix(m.Path, "/dev/zero"),
		strings.HasPrefix(m.Path, "/memfd:"),
		strings.HasPrefix(m.Path, "/SYSV"):
		return true
	}
	return false
}

// ParseSmaps parses the text of /proc/PID/smaps.
func ParseSmaps(r io.Reader) ([]Mapping, error) {
	var maps []Mapping
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if m, ok := parseSmapsHeader(text); ok {
			maps = append(maps, m)
			continue
		}
		key, val, ok := strings.Cut(text, ":")
		if !ok {
			return nil, fmt.Errorf("smaps line %d: unexpected %q", line, text)
		}
		if key != "Size" && key != "Rss" && key != "Pss" {
			continue
		}
		if len(maps) == 0 {
			return nil, fmt.Errorf("smaps line %d: %s before any mapping", line, key)
		}
		n, err := parseKB(val)
		if err != nil {
			return nil, fmt.Errorf("smaps line %d: %s: %w", line, key, err)
		}
		m := &maps[len(maps)-1]
		switch key {
		case "Size":
			m.Size = n
		case "Rss":
			m.Rss = n
		default:
			m.Pss = n
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read smaps: %w", err)
	}
	return maps, nil
}

// parseSmapsHeader parses a mapping's first line:
// "start-end perms offset dev inode [path]". The path may hold spaces.
func parseSmapsHeader(s string) (Mapping, bool) {
	f := strings.Fields(s)
	if len(f) < 5 {
		return Mapping{}, false
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return Mapping{}, false
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end < start {
		return Mapping{}, false
	}
	m := Mapping{Start: start, End: end, Perms: f[1]}
	if len(f) > 5 {
		// Everything after the fifth field, spaces included.
		rest := s
		for range 5 {
			rest = strings.TrimLeft(rest, " \t")
			if j := strings.IndexAny(rest, " \t"); j >= 0 {
				rest = rest[j:]
			}
		}
		m.Path = strings.TrimSpace(rest)
	}
	return m, true
}

// parseKB parses a " 1234 kB" value into bytes.
func parseKB(s string) (uint64, error) {
	f := strings.Fields(s)
	if len(f) != 2 || f[1] != "kB" {
		return 0, fmt.Errorf("want \"N kB\", got %q", strings.TrimSpace(s))
	}
	n, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, err
	}
	return n << 10, nil
}

// MemUsage splits a process's resident memory into guest RAM and the
// VMM's own overhead.
type MemUsage struct {
	RSS        uint64 // all mappings
	GuestRSS   uint64 // resident part of the guest-RAM mappings
	Overhead   uint64 // RSS - GuestRSS
	PSS        uint64 // all mappings, shared pages divided among their sharers
	GuestPSS   uint64 // the guest-RAM mappings' part of PSS
	GuestMaps  int    // how many mappings were taken for guest RAM
	GuestBytes uint64 // their total size
}

// ErrNoGuestRAM is returned when no mapping looks like guest RAM.
var ErrNoGuestRAM = errors.New("no anonymous mapping of the guest memory size")

// SplitGuestRAM computes MemUsage for a guest of guestMem bytes: guest RAM
// is every anonymous mapping whose size is exactly guestMem (a VMM maps
// the RAM of a small guest as one region), and everything else resident
// is the VMM's overhead.
func SplitGuestRAM(maps []Mapping, guestMem uint64) (MemUsage, error) {
	var u MemUsage
	for _, m := range maps {
		u.RSS += m.Rss
		u.PSS += m.Pss
		if m.Anonymous() && m.Size == guestMem {
			u.GuestRSS += m.Rss
			u.GuestPSS += m.Pss
			u.GuestMaps++
			u.GuestBytes += m.Size
		}
	}
	u.Overhead = u.RSS - u.GuestRSS
	if u.GuestMaps == 0 {
		return u, fmt.Errorf("%w (%d MiB) among %d mappings", ErrNoGuestRAM, guestMem>>20, len(maps))
	}
	return u, nil
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture this program builds for (x86-64).
const clockTicks = 100

// ParseStatCPU returns utime+stime from the text of /proc/PID/stat.
func ParseStatCPU(stat string) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may contain
	// anything, so count fields from the last ')'.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("stat: no ')' after the command name")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("stat: only %d fields after the command name", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("stat: utime/stime: %w", err)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// readStatCPU reads the CPU time used so far by process pid.
func readStatCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return ParseStatCPU(string(b))
}

// readSmaps reads and parses /proc/PID/smaps.
func readSmaps(pid int) ([]Mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	maps, err := ParseSmaps(f)
	if err != nil {
		return nil, err
	}
	if len(maps) == 0 {
		return nil, errors.New("smaps is empty (the process has exited)")
	}
	return maps, nil
}

// Descendants returns pid and every process below it, parents before
// children, given each process's parent (ppid[child] = parent). A VMM
// may serve a VM with several processes: vessel runs its VMM jailed in a
// child process and waits for it.
func Descendants(pid int, ppid map[int]int) []int {
	children := map[int][]int{}
	for c, p := range ppid {
		children[p] = append(children[p], c)
	}
	for _, cs := range children {
		sort.Ints(cs)
	}
	out := []int{pid}
	seen := map[int]bool{pid: true}
	for i := 0; i < len(out); i++ {
		for _, c := range children[out[i]] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	return out
}

// ParseStatPPID returns the parent PID (field 4) from the text of
// /proc/PID/stat.
func ParseStatPPID(stat string) (int, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("stat: no ')' after the command name")
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 2 {
		return 0, errors.New("stat: no parent PID")
	}
	p, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, fmt.Errorf("stat: parent PID: %w", err)
	}
	return p, nil
}

// processTree returns pid and its live descendants, read from /proc.
func processTree(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []int{pid}
	}
	ppid := map[int]int{}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
		if err != nil {
			continue // gone meanwhile
		}
		if p, err := ParseStatPPID(string(b)); err == nil {
			ppid[n] = p
		}
	}
	return Descendants(pid, ppid)
}
