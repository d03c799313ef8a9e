package main

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// renderMarkdown formats the report: throughput per VMM against each
// other and the host baseline, then the cost of the I/O in KVM exits and
// guest interrupts per MiB side by side, KVM's exit reasons, and vessel's
// own counters.
func renderMarkdown(r *report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# vessel I/O benchmark\n\nPlatform: %s.\n\n", r.Platform)
	for _, s := range r.Setup {
		fmt.Fprintf(&b, "- %s\n", s)
	}
	if len(r.Setup) > 0 {
		b.WriteString("\n")
	}
	pair := contains(r.VMMs, vmmVessel) && contains(r.VMMs, vmmQEMU)
	var missing []string
	miss := func(v, why string) string {
		line := fmt.Sprintf("%s: %s", vmmTitle[v], why)
		if !contains(missing, line) {
			missing = append(missing, line)
		}
		return "n/a"
	}

	b.WriteString("## Throughput (medians of interleaved runs)\n\n| area | workload |")
	sep := "|---|---|"
	for _, v := range r.VMMs {
		fmt.Fprintf(&b, " %s |", vmmTitle[v])
		sep += "---|"
	}
	if pair {
		b.WriteString(" vessel/QEMU |")
		sep += "---|"
	}
	b.WriteString(" host | ")
	for i, v := range r.VMMs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(vmmTitle[v])
	}
	b.WriteString(" / host | host baseline |\n" + sep + "---|---|---|\n")
	for _, w := range r.Rows {
		fmt.Fprintf(&b, "| %s | %s |", w.Area, w.Name)
		for _, v := range r.VMMs {
			if g, ok := w.Guest[v]; ok {
				fmt.Fprintf(&b, " %s %s |", num(g), w.Unit)
			} else {
				fmt.Fprintf(&b, " %s |", miss(v, w.Missing[v]))
			}
		}
		if pair {
			fmt.Fprintf(&b, " %s |", ratioOf(w.Guest, vmmVessel, vmmQEMU))
		}
		fmt.Fprintf(&b, " %s %s | ", num(w.Host), w.Unit)
		for i, v := range r.VMMs {
			if i > 0 {
				b.WriteString(", ")
			}
			g, ok := w.Guest[v]
			if !ok {
				b.WriteString("-")
				continue
			}
			b.WriteString(ratio(g, w.Host))
		}
		fmt.Fprintf(&b, " | %s |\n", w.HostWhat)
	}
	if len(missing) > 0 {
		b.WriteString("\nNot measured: " + strings.Join(missing, "; ") + ".\n")
	}

	b.WriteString("\n## Cost per MiB moved (medians; each VMM's boot-only run with the same devices subtracted)\n\n")
	b.WriteString("KVM exits: KVM's own vCPU counter (KVM_GET_STATS_FD \"exits\": every exit, handled in the kernel or in userspace), " +
		"read by vessel (--metrics) and through QEMU (QMP query-stats), the same counter for both. Guest interrupts: the interrupts of the " +
		"workload's virtio device as the guest counts them in /proc/interrupts around the workload (nothing subtracted). " +
		"Boot-only runs vary by some hundred exits: a small or negative KVM value means the workload's exits are within that " +
		"variation (a larger -size-mib narrows it); exits also grow with the time a transfer takes (timer ticks, host interrupts).\n\n")
	b.WriteString("| run | MiB |")
	sep = "|---|---|"
	for _, v := range r.VMMs {
		fmt.Fprintf(&b, " KVM exits %s |", vmmTitle[v])
		sep += "---|"
	}
	if pair {
		b.WriteString(" exits vessel/QEMU |")
		sep += "---|"
	}
	for _, v := range r.VMMs {
		fmt.Fprintf(&b, " guest interrupts %s |", vmmTitle[v])
		sep += "---|"
	}
	if pair {
		b.WriteString(" interrupts vessel/QEMU |")
		sep += "---|"
	}
	b.WriteString("\n" + sep + "\n")
	for _, c := range r.Cost {
		var mibs []string
		exits, irqs := map[string]float64{}, map[string]float64{}
		for _, v := range r.VMMs {
			vc := c.VMM[v]
			if vc == nil {
				mibs = append(mibs, "-")
				continue
			}
			mibs = append(mibs, fmt.Sprintf("%.0f", vc.MiB))
			if vc.KVM != nil {
				exits[v] = vc.KVM["exits"]
			}
			if vc.GuestIRQs >= 0 {
				irqs[v] = vc.GuestIRQs
			}
		}
		fmt.Fprintf(&b, "| %s | %s |", c.Run, strings.Join(mibs, " / "))
		cells := func(vals map[string]float64) {
			for _, v := range r.VMMs {
				if x, ok := vals[v]; ok {
					fmt.Fprintf(&b, " %s |", num(x))
				} else if c.VMM[v] == nil {
					fmt.Fprintf(&b, " %s |", miss(v, c.Missing[v]))
				} else {
					b.WriteString(" - |")
				}
			}
			if pair {
				fmt.Fprintf(&b, " %s |", ratioOf(vals, vmmVessel, vmmQEMU))
			}
		}
		cells(exits)
		cells(irqs)
		b.WriteString("\n")
	}

	b.WriteString("\n## KVM exit reasons per MiB (medians, boot subtracted)\n\n| run | VMM |")
	sep = "|---|---|"
	for _, k := range kvmKeys {
		fmt.Fprintf(&b, " %s |", k)
		sep += "---|"
	}
	b.WriteString("\n" + sep + "\n")
	for _, c := range r.Cost {
		for _, v := range r.VMMs {
			vc := c.VMM[v]
			if vc == nil || vc.KVM == nil {
				continue
			}
			fmt.Fprintf(&b, "| %s | %s |", c.Run, vmmTitle[v])
			for _, k := range kvmKeys {
				fmt.Fprintf(&b, " %s |", num(vc.KVM[k]))
			}
			b.WriteString("\n")
		}
	}

	if contains(r.VMMs, vmmVessel) {
		b.WriteString("\n## vessel's own counters per MiB (medians, boot subtracted)\n\n")
		b.WriteString("| run | userspace exits | interrupts signalled | notifies | exits saved vs exit-per-notify |\n|---|---|---|---|---|\n")
		for _, c := range r.Cost {
			vc := c.VMM[vmmVessel]
			if vc == nil {
				continue
			}
			saved := "-"
			if vc.SavedVsExitAll > 0 {
				saved = fmt.Sprintf("%.1fx", vc.SavedVsExitAll)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", c.Run, num(vc.UserExits), num(vc.Interrupts), num(vc.Notifies), saved)
		}
		b.WriteString("\nUserspace exits per MiB include the guest's interrupt-status reads and acknowledgements on the\n" +
			"virtio-mmio transport. \"Exits saved\" compares with a VMM that takes a userspace exit for every\n" +
			"queue notification on top: (userspace exits + notifies) / userspace exits. QEMU has no such counters.\n")
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	fmt.Fprintf(&b, "\nTook %v.\n", r.Took.Round(time.Second))
	return b.String()
}

// num formats a measured value with one decimal ("-" when not a number).
func num(x float64) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "-"
	}
	return fmt.Sprintf("%.1f", x)
}

// ratio formats a/b.
func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// ratioOf formats vals[a]/vals[b], "-" when either is missing.
func ratioOf(vals map[string]float64, a, b string) string {
	x, okA := vals[a]
	y, okB := vals[b]
	if !okA || !okB {
		return "-"
	}
	return ratio(x, y)
}
