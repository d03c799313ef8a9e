package main

import (
	"fmt"
	"strings"
	"time"
)

// renderMarkdown formats the report: throughput against the host
// baseline, then the cost of the I/O in exits, interrupts and notifies.
func renderMarkdown(r *report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# vessel I/O benchmark\n\nPlatform: %s.\n\n", r.Platform)
	b.WriteString("## Throughput (medians)\n\n| area | workload | vessel guest | host | guest/host | host baseline |\n|---|---|---|---|---|---|\n")
	for _, w := range r.Rows {
		fmt.Fprintf(&b, "| %s | %s | %.1f %s | %.1f %s | %s | %s |\n", w.Area, w.Name, w.Guest, w.Unit, w.Host, w.Unit, ratio(w.Guest, w.Host), w.HostWhat)
	}
	b.WriteString("\n## Cost per MiB moved (boot-only run with the same devices subtracted)\n\n")
	b.WriteString("| run | MiB | userspace exits | KVM exits | interrupts | notifies | exits saved vs exit-per-notify |\n|---|---|---|---|---|---|---|\n")
	for _, c := range r.Cost {
		saved := "-"
		if c.SavedVsExitAll > 0 {
			saved = fmt.Sprintf("%.1fx", c.SavedVsExitAll)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.1f | %.1f | %.1f | %.1f | %s |\n", c.Run, c.MiB, c.UserExits, c.KVMExits, c.Interrupts, c.Notifies, saved)
	}
	b.WriteString("\nUserspace exits per MiB include the guest's interrupt-status reads and acknowledgements on the\n" +
		"virtio-mmio transport. \"Exits saved\" compares with a VMM that takes a userspace exit for every\n" +
		"queue notification on top: (userspace exits + notifies) / userspace exits.\n")
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	fmt.Fprintf(&b, "\nTook %v.\n", r.Took.Round(time.Second))
	return b.String()
}

// ratio formats a/b.
func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}
