package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The guest counts the interrupts of its virtio devices itself, from
// /proc/interrupts, around each workload: the same count under every VMM,
// whatever the VMM's own counters say.

// irqsPrefix marks the guest's interrupt line on the console.
const irqsPrefix = "IRQS "

// virtioTypes names virtio device IDs as vessel's --metrics does.
var virtioTypes = map[uint64]string{1: "net", 2: "block", 3: "console", 4: "rng", 5: "balloon", 9: "9p", 19: "vsock"}

// irqCounts is interrupts per virtio device type.
type irqCounts map[string]uint64

// parseInterrupts reads the text of /proc/interrupts and returns each
// line's count summed over CPUs, with the line's description fields (the
// chip, the hardware IRQ and the handlers' names).
func parseInterrupts(text string) ([]irqLine, error) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	if !sc.Scan() {
		return nil, fmt.Errorf("/proc/interrupts: no header")
	}
	cpus := len(strings.Fields(sc.Text()))
	if cpus == 0 {
		return nil, fmt.Errorf("/proc/interrupts: header %q names no CPU", sc.Text())
	}
	var lines []irqLine
	for sc.Scan() {
		label, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		l := irqLine{Label: strings.TrimSpace(label)}
		i := 0
		for ; i < len(f) && i < cpus; i++ {
			n, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				break // ERR: and MIS: have one column only
			}
			l.Count += n
		}
		l.Desc = f[i:]
		lines = append(lines, l)
	}
	return lines, sc.Err()
}

// irqLine is one line of /proc/interrupts.
type irqLine struct {
	Label string
	Count uint64
	Desc  []string
}

// handles reports whether the line names device dev ("virtio0") among
// its handlers: alone, in a shared line's list ("virtio0,"), or as an
// MSI vector's name ("virtio0-input.0").
func (l irqLine) handles(dev string) bool {
	for _, d := range l.Desc {
		d = strings.TrimSuffix(d, ",")
		if d == dev || strings.HasPrefix(d, dev+"-") {
			return true
		}
	}
	return false
}

// countByType sums the interrupts of each virtio device (devs: name such
// as "virtio0" -> type such as "block") over lines.
func countByType(lines []irqLine, devs map[string]string) irqCounts {
	c := irqCounts{}
	for dev, typ := range devs {
		for _, l := range lines {
			if l.handles(dev) {
				c[typ] += l.Count
			}
		}
	}
	return c
}

// sub returns c - before, per type.
func (c irqCounts) sub(before irqCounts) irqCounts {
	d := irqCounts{}
	for k, v := range c {
		d[k] = v - before[k]
	}
	return d
}

// virtioDevices maps the guest's virtio devices ("virtio0") to their
// type, from sysfs (root is /sys/bus/virtio/devices).
func virtioDevices(root string) (map[string]string, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("virtio devices: %w", err)
	}
	devs := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(root, e.Name(), "device"))
		if err != nil {
			return nil, fmt.Errorf("virtio device %s: %w", e.Name(), err)
		}
		id, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(string(b)), "0x"), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("virtio device %s: id %q: %w", e.Name(), b, err)
		}
		typ, ok := virtioTypes[id]
		if !ok {
			typ = fmt.Sprintf("virtio-%d", id)
		}
		devs[e.Name()] = typ
	}
	return devs, nil
}

// guestIRQs reads the guest's virtio interrupts per device type now.
func guestIRQs() (irqCounts, error) {
	devs, err := virtioDevices("/sys/bus/virtio/devices")
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile("/proc/interrupts")
	if err != nil {
		return nil, fmt.Errorf("read interrupts: %w", err)
	}
	lines, err := parseInterrupts(string(b))
	if err != nil {
		return nil, err
	}
	return countByType(lines, devs), nil
}

// printIRQs prints the interrupts counted during a workload.
func printIRQs(c irqCounts) {
	b, _ := json.Marshal(c)
	fmt.Printf("%s%s\n", irqsPrefix, b)
}

// parseIRQs finds the guest's last interrupt line in console output; it
// returns nil when there is none.
func parseIRQs(out string) (irqCounts, error) {
	var c irqCounts
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		i := strings.Index(line, irqsPrefix)
		if i < 0 {
			continue
		}
		c = irqCounts{}
		if err := json.Unmarshal([]byte(line[i+len(irqsPrefix):]), &c); err != nil {
			return nil, fmt.Errorf("bad interrupt line %q: %w", line, err)
		}
	}
	return c, sc.Err()
}
