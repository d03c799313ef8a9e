package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/vesselvm/vessel/bench/internal/benchutil"
)

// Results is everything one benchmark run produced: the raw JSON.
type Results struct {
	Date     time.Time `json:"date"`
	Platform Platform  `json:"platform"`
	Setup    Setup     `json:"setup"`
	Runs     []Run     `json:"runs"`
	// Aborted says why the benchmark stopped before its last round.
	Aborted string `json:"aborted,omitempty"`
}

// Setup records how the benchmark was configured.
type Setup struct {
	Kernel      string            `json:"kernel"`
	Initrd      string            `json:"initrd"`
	CPUs        int               `json:"cpus"`
	MemMiB      int               `json:"mem_mib"`
	Runs        int               `json:"runs"`
	Warmup      int               `json:"warmup"`
	Timeout     string            `json:"timeout"`
	GuestArgv   []string          `json:"guest_argv"`
	VMMs        []string          `json:"vmms"`
	Commands    map[string]string `json:"commands"`     // one run's command line per VMM
	Cmdlines    map[string]string `json:"cmdlines"`     // guest kernel command line per VMM
	ExitsItself map[string]bool   `json:"exits_itself"` // VMM expected to exit when the guest is done
	Notes       []string          `json:"notes,omitempty"`
}

// metric is one row of the table.
type metric struct {
	Title  string
	Unit   string
	Digits int
	Get    func(Run) *float64
	// Only limits the row to these VMMs (others show "n/a").
	Only []string
	// NA explains "n/a" for VMMs the metric does not apply to.
	NA string
	// Ratios: print vessel/peer ratios for this row.
	Ratios bool
	// Target is the goal printed beside the ratios.
	Target *target
}

// target is a goal for vessel relative to the peers (ratio of medians,
// lower is better): not a pass/fail threshold.
type target struct {
	MaxVsGokvm, MaxVsQEMU float64
	// Max is an absolute goal for vessel's median, in the metric's
	// unit (0: none).
	Max float64
}

// metrics lists the table's rows.
var metrics = []metric{
	{Title: "time to init, host side (VMM start to the uptime line)", Unit: "s", Digits: 2,
		Get: func(r Run) *float64 { return r.TimeToInit }, Ratios: true,
		Target: &target{MaxVsGokvm: 0.5, MaxVsQEMU: 0.8}},
	{Title: "guest boot time (/proc/uptime in the guest)", Unit: "s", Digits: 2,
		Get: func(r Run) *float64 { return r.GuestUptime }, Ratios: true,
		Target: &target{MaxVsGokvm: 1.0, MaxVsQEMU: 1.0}},
	{Title: "vessel boot_to_init (--metrics)", Unit: "ms", Digits: 0,
		Get: func(r Run) *float64 { return r.BootToInitMS }, Only: []string{nameVessel}, NA: "n/a"},
	{Title: "VMM CPU time, whole run (wait4 rusage)", Unit: "s", Digits: 2,
		Get: func(r Run) *float64 { return r.CPUTotal }, Ratios: true},
	{Title: "VMM CPU time, start to uptime line (/proc/PID/stat)", Unit: "s", Digits: 2,
		Get: func(r Run) *float64 { return r.CPUToInit }, Ratios: true},
	{Title: "userspace exits per boot", Unit: "", Digits: 0,
		Get: func(r Run) *float64 { return r.ExitsTotal }, Only: []string{nameVessel}, NA: "n/a"},
	{Title: "VMM memory overhead (VMM process's RSS minus guest RAM, at the uptime line)", Unit: "MiB", Digits: 1,
		Get: func(r Run) *float64 { return r.MemOverheadMiB }, Ratios: true,
		Target: &target{Max: 5}}, // Firecracker's specification
	{Title: "memory of every process serving the VM (PSS minus guest RAM)", Unit: "MiB", Digits: 1,
		Get: func(r Run) *float64 { return r.TreeOverheadPSSMiB }, Ratios: true},
	{Title: "processes serving the VM", Unit: "", Digits: 0,
		Get: func(r Run) *float64 { return r.Processes }},
	{Title: "wall time, VMM start to exit", Unit: "s", Digits: 2,
		Get: func(r Run) *float64 { return r.Wall }},
}

// counted returns the measured (not warm-up) runs of vmm.
func counted(runs []Run, vmm string) []Run {
	var out []Run
	for _, r := range runs {
		if r.VMM == vmm && !r.Warmup {
			out = append(out, r)
		}
	}
	return out
}

// summarize returns the summary of metric m over the successful runs.
func summarize(runs []Run, m metric) benchutil.Summary {
	var xs []float64
	for _, r := range runs {
		if !r.OK {
			continue
		}
		if v := m.Get(r); v != nil {
			xs = append(xs, *v)
		}
	}
	return benchutil.Summarize(xs)
}

func (m metric) appliesTo(vmm string) bool {
	if len(m.Only) == 0 {
		return true
	}
	for _, o := range m.Only {
		if o == vmm {
			return true
		}
	}
	return false
}

// RenderTable writes the markdown table of per-VMM medians, ranges and
// vessel's ratios to the peers.
func RenderTable(w io.Writer, res *Results) {
	vmms := res.Setup.VMMs
	hasVessel := false
	var peers []string
	for _, v := range vmms {
		if v == nameVessel {
			hasVessel = true
		} else {
			peers = append(peers, v)
		}
	}
	ratioCols := peers
	if !hasVessel {
		ratioCols = nil
	}

	hdr := []string{"metric"}
	for _, v := range vmms {
		hdr = append(hdr, vmmTitle[v]+" median (min-max)")
	}
	for _, p := range ratioCols {
		hdr = append(hdr, "vessel/"+vmmTitle[p])
	}
	if len(ratioCols) > 0 {
		hdr = append(hdr, "goal")
	}
	fmt.Fprintf(w, "| %s |\n", strings.Join(hdr, " | "))
	fmt.Fprintf(w, "|%s\n", strings.Repeat("---|", len(hdr)))

	for i, m := range metrics {
		row := []string{m.Title}
		if m.Unit != "" {
			row[0] += " [" + m.Unit + "]"
		}
		sums := map[string]benchutil.Summary{}
		for _, v := range vmms {
			runs := counted(res.Runs, v)
			row = append(row, cell(runs, m, v, i == 0))
			if m.appliesTo(v) {
				sums[v] = summarize(runs, m)
			}
		}
		for _, p := range ratioCols {
			row = append(row, ratioCell(m, sums[nameVessel], sums[p]))
		}
		if len(ratioCols) > 0 {
			row = append(row, goalCell(m, sums, ratioCols))
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
	}
}

// cell formats one VMM's summary of m, or says why there is none: the
// reason a VMM failed every run is given in the first row only.
func cell(runs []Run, m metric, vmm string, first bool) string {
	if !m.appliesTo(vmm) {
		return m.NA
	}
	if len(runs) == 0 {
		return "not run"
	}
	ok := 0
	for _, r := range runs {
		if r.OK {
			ok++
		}
	}
	if ok == 0 && first {
		return fmt.Sprintf("FAILED (%d/%d runs): %s", len(runs), len(runs), mostCommonError(runs))
	}
	if ok == 0 {
		return "failed"
	}
	s := summarize(runs, m)
	if s.N == 0 {
		return "not measured"
	}
	out := fmt.Sprintf("%s (%s-%s)", num(s.Median, m.Digits), num(s.Min, m.Digits), num(s.Max, m.Digits))
	if s.N < len(runs) {
		out += fmt.Sprintf(" [%d/%d runs]", s.N, len(runs))
	}
	return out
}

func ratioCell(m metric, vessel, peer benchutil.Summary) string {
	if !m.Ratios {
		return ""
	}
	r, ok := ratio(vessel, peer)
	if !ok {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", r)
}

// ratio is vessel's median over the peer's.
func ratio(vessel, peer benchutil.Summary) (float64, bool) {
	if vessel.N == 0 || peer.N == 0 || peer.Median == 0 {
		return 0, false
	}
	return vessel.Median / peer.Median, true
}

func goalCell(m metric, sums map[string]benchutil.Summary, peers []string) string {
	if m.Target == nil {
		return ""
	}
	var parts []string
	if m.Target.Max > 0 {
		s := fmt.Sprintf("≤ %g %s", m.Target.Max, m.Unit)
		if v := sums[nameVessel]; v.N == 0 {
			s += ": no data"
		} else if v.Median <= m.Target.Max {
			s += ": met"
		} else {
			s += ": not met"
		}
		return s
	}
	for _, p := range peers {
		limit := m.Target.MaxVsQEMU
		if p == nameGokvm {
			limit = m.Target.MaxVsGokvm
		}
		s := fmt.Sprintf("≤ %.1fx %s", limit, vmmTitle[p])
		if r, ok := ratio(sums[nameVessel], sums[p]); ok {
			if r <= limit {
				s += ": met"
			} else {
				s += ": not met"
			}
		} else {
			s += ": no data"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func num(x float64, digits int) string {
	if math.IsNaN(x) {
		return "?"
	}
	return fmt.Sprintf("%.*f", digits, x)
}

// mostCommonError returns the error most runs failed with (ties: the
// first seen), shortened for a table cell.
func mostCommonError(runs []Run) string {
	count := map[string]int{}
	var order []string
	for _, r := range runs {
		if r.OK {
			continue
		}
		if count[r.Error] == 0 {
			order = append(order, r.Error)
		}
		count[r.Error]++
	}
	sort.SliceStable(order, func(i, j int) bool { return count[order[i]] > count[order[j]] })
	if len(order) == 0 {
		return ""
	}
	e := order[0]
	if len(order) > 1 {
		e += fmt.Sprintf(" (and %d other errors)", len(order)-1)
	}
	return cellText(e)
}

// cellText makes s safe inside a markdown table cell.
func cellText(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "\n", " ")
	const max = 200
	if r := []rune(s); len(r) > max {
		s = string(r[:max]) + "…"
	}
	return s
}

// RenderReport writes the whole report: header, table, failures, notes
// and the raw results.
func RenderReport(w io.Writer, res *Results) error {
	p := res.Platform
	s := res.Setup
	fmt.Fprintf(w, "# vessel boot benchmark (`make bench-boot`)\n\n")
	fmt.Fprintf(w, "- date: %s\n", res.Date.UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "- platform: **%s**; CPU: %s (%d CPUs)\n", p.Kind, p.CPUModel, p.CPUs)
	fmt.Fprintf(w, "- kernel running the VMMs: %s\n", p.HostKernel)
	fmt.Fprintf(w, "- guest kernel: %s (`%s`); initramfs `%s`\n", p.GuestKernel, s.Kernel, s.Initrd)
	fmt.Fprintf(w, "- guest: %d vCPU, %d MiB, command `%s`, same kernel, initramfs and command line for every VMM\n",
		s.CPUs, s.MemMiB, strings.Join(s.GuestArgv, " "))
	fmt.Fprintf(w, "- runs: %d per VMM after %d warm-up round(s) (not counted), interleaved (%s, ...), the order rotated by one every round and reversed every other cycle; timeout %s per run\n",
		s.Runs, s.Warmup, strings.Join(s.VMMs, ", "), s.Timeout)
	fmt.Fprintf(w, "- versions: vessel %s; %s; %s\n", orUnknown(p.VesselRev), orUnknown(p.GokvmVersion), orUnknown(p.QEMUVersion))
	for _, n := range s.Notes {
		fmt.Fprintf(w, "- note: %s\n", n)
	}
	if strings.Contains(p.Kind, "TCG") {
		fmt.Fprintf(w, "- absolute times under emulation are 10-50x those on hardware: read the ratios\n")
	}
	if res.Aborted != "" {
		fmt.Fprintf(w, "- **incomplete**: %s\n", res.Aborted)
	}
	fmt.Fprintln(w)
	RenderTable(w, res)
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Medians over successful runs, (min-max); ratios are vessel's median over the peer's (lower is better for vessel). ")
	fmt.Fprintf(w, "Goals are targets, not pass/fail.\n")

	// Failed runs, grouped by VMM and reason.
	type failKey struct{ vmm, err string }
	var keys []failKey
	rounds := map[failKey][]string{}
	for _, r := range res.Runs {
		if r.OK {
			continue
		}
		k := failKey{r.VMM, r.Error}
		if rounds[k] == nil {
			keys = append(keys, k)
		}
		rounds[k] = append(rounds[k], roundName(r))
	}
	if len(keys) > 0 {
		fmt.Fprintf(w, "\n## Failed runs\n\n")
		for _, k := range keys {
			fmt.Fprintf(w, "- %s (%s): %s\n", vmmTitle[k.vmm], strings.Join(rounds[k], ", "), k.err)
		}
	}

	fmt.Fprintf(w, "\n## How each VMM ran\n\n")
	for _, v := range s.VMMs {
		fmt.Fprintf(w, "- %s: `%s`\n", vmmTitle[v], s.Commands[v])
		fmt.Fprintf(w, "  - guest command line: `%s`\n", s.Cmdlines[v])
		endings := map[string]int{}
		var order []string
		for _, r := range counted(res.Runs, v) {
			e := r.Ending
			if endings[e] == 0 {
				order = append(order, e)
			}
			endings[e]++
		}
		var parts []string
		for _, e := range order {
			parts = append(parts, fmt.Sprintf("%s (%d)", e, endings[e]))
		}
		fmt.Fprintf(w, "  - process ending: %s\n", strings.Join(parts, ", "))
		var probes []float64
		for _, r := range counted(res.Runs, v) {
			if r.InitProbe != nil {
				probes = append(probes, *r.InitProbe)
			}
		}
		if p := benchutil.Summarize(probes); p.N > 0 {
			fmt.Fprintf(w, "  - the guest init's control-port probe showed up on its console %s s (min-max) after start, in %d runs "+
				"(host side; vesselinit probes after its mounts, just before the boot marker vessel times as boot_to_init and before it runs the command: earlier than the uptime line)\n",
				fmt.Sprintf("%.2f (%.2f-%.2f)", p.Median, p.Min, p.Max), p.N)
		}
		if v == nameVessel {
			if ex := exitBreakdown(counted(res.Runs, v)); ex != "" {
				fmt.Fprintf(w, "  - userspace exits by reason (median): %s\n", ex)
			}
		}
		notes := map[string]bool{}
		for _, r := range counted(res.Runs, v) {
			for _, n := range r.Notes {
				if !notes[n] {
					notes[n] = true
					fmt.Fprintf(w, "  - note (%s): %s\n", roundName(r), n)
				}
			}
		}
	}
	fmt.Fprintf(w, "\n## Definitions\n\n")
	fmt.Fprintf(w, "- time to init, host side: from starting the VMM process to benchboot reading the line `cat /proc/uptime` printed on the VMM's console (stdout pipe, each line timestamped when read).\n")
	fmt.Fprintf(w, "- guest boot time: the first number of that line, seconds since the guest kernel started. vessel's boot_to_init is vessel's own measure, from its setup to the guest init's boot-marker write.\n")
	fmt.Fprintf(w, "- VMM CPU time: user+system of the VMM process (all threads) from wait4. It includes the time its vCPU threads spend running the guest inside KVM_RUN, so it is the host CPU a boot costs, not the VMM's own work alone. A VMM that does not exit when the guest is done is killed shortly after the guest says it stopped (its CPU time just before the kill is in the JSON). \"start to uptime line\" is sampled from /proc/PID/stat at the marker (10 ms resolution) and is comparable across VMMs whatever their shutdown does.\n")
	fmt.Fprintf(w, "- memory overhead: of the VMM process (the one that maps the guest RAM; vessel runs it jailed, as a child of the vessel process), the sum of Rss over /proc/PID/smaps minus the Rss of the guest RAM (the anonymous mappings exactly the guest memory size), sampled at the uptime line with every process of the VMM stopped (SIGSTOP/SIGCONT) for the read. \"every process serving the VM\" sums Pss (shared pages divided among their sharers, so a binary mapped by two processes counts once) over the process benchboot started and all its descendants, minus the guest RAM's Pss. CPU time at the marker is summed over the same processes.\n")
	fmt.Fprintf(w, "- userspace exits: vessel's --metrics counts; the peers expose no such count (and the kernel running them has no debugfs/tracefs), so n/a.\n")

	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	fmt.Fprintf(w, "\n<details><summary>Raw results (JSON)</summary>\n\n%s\n%s\n%s\n\n</details>\n", jsonFenceOpen, b, jsonFenceClose)
	return nil
}

// The raw results' fence in the report; ExtractJSON finds them by it.
const (
	jsonFenceOpen  = "```json"
	jsonFenceClose = "```"
)

// ExtractJSON returns the raw results embedded in a report RenderReport
// wrote (e.g. the captured output of a run inside cmd/testvm, whose own
// files do not survive the outer VM).
func ExtractJSON(r io.Reader) ([]byte, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var buf strings.Builder
	in, found := false, false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !in && strings.TrimSpace(line) == jsonFenceOpen:
			in, found = true, true
			buf.Reset()
		case in && strings.TrimSpace(line) == jsonFenceClose:
			in = false
		case in:
			buf.WriteString(line)
			buf.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if !found || in {
		return nil, errors.New("no complete ```json block in the report")
	}
	var res Results
	if err := json.Unmarshal([]byte(buf.String()), &res); err != nil {
		return nil, fmt.Errorf("the report's JSON block: %w", err)
	}
	return []byte(buf.String()), nil
}

func roundName(r Run) string {
	if r.Warmup {
		return "warm-up"
	}
	return fmt.Sprintf("run %d", r.Round)
}

func orUnknown(s string) string {
	if s == "" {
		return "(version unknown)"
	}
	return s
}

// exitBreakdown gives the median count per exit reason over vessel's
// successful runs, largest first.
func exitBreakdown(runs []Run) string {
	per := map[string][]float64{}
	for _, r := range runs {
		if !r.OK {
			continue
		}
		for k, n := range r.Exits {
			per[k] = append(per[k], float64(n))
		}
	}
	type kv struct {
		k string
		v float64
	}
	var all []kv
	for k, xs := range per {
		all = append(all, kv{k, benchutil.Summarize(xs).Median})
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].v != all[j].v {
			return all[i].v > all[j].v
		}
		return all[i].k < all[j].k
	})
	var parts []string
	for _, e := range all {
		parts = append(parts, fmt.Sprintf("%s %.0f", e.k, e.v))
	}
	return strings.Join(parts, ", ")
}
