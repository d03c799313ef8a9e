package compare

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Write puts the report in dir: results.json, report.md, and a chart
// per workload in charts/ as SVG and PNG.
func Write(rep *Report, dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "charts"), 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	var charts []string
	for _, w := range workloadOrder(rep) {
		ok, err := chart(rep, w, filepath.Join(dir, "charts", w))
		if err != nil {
			return fmt.Errorf("chart %s: %w", w, err)
		}
		if ok {
			charts = append(charts, w)
		}
	}
	return os.WriteFile(filepath.Join(dir, "report.md"), []byte(Markdown(rep, charts)), 0o644)
}

// JSON markers around the results when they travel in a log (the test
// platform's files do not outlive it: make bench-compare prints them).
const (
	jsonBegin = "--- vessel bench compare results.json ---"
	jsonEnd   = "--- end of results.json ---"
)

// PrintJSON writes the results to w between markers.
func PrintJSON(rep *Report, w io.Writer) error {
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n%s\n%s\n", jsonBegin, js, jsonEnd)
	return err
}

// ReadJSON reads results from a results.json, or from a log that holds
// them between PrintJSON's markers.
func ReadJSON(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if _, after, ok := strings.Cut(string(b), jsonBegin+"\n"); ok {
		js, _, ok := strings.Cut(after, jsonEnd)
		if !ok {
			return nil, fmt.Errorf("%s: the results end early", path)
		}
		b = []byte(js)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &rep, nil
}

// workloadOrder lists the report's workloads in order.
func workloadOrder(rep *Report) []string {
	var ws []string
	for _, row := range rep.Rows {
		if len(ws) == 0 || ws[len(ws)-1] != row.Workload {
			ws = append(ws, row.Workload)
		}
	}
	return ws
}

// baseline is the environment ratios are taken against: the host, or
// the first environment measured.
func baseline(rep *Report, row *Row) string {
	for _, e := range rep.Envs {
		if c := row.Cells[e]; c != nil && c.Summary.N > 0 {
			return e
		}
	}
	return ""
}

// Markdown renders the report; charts lists the workloads with a chart.
func Markdown(rep *Report, charts []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# vessel bench compare\n\n")
	fmt.Fprintf(&b, "- Platform: %s\n- Kernel: %s\n", rep.Platform, rep.Kernel)
	for _, k := range []string{"vessel", "runc", "go"} {
		if v := rep.Versions[k]; v != "" {
			fmt.Fprintf(&b, "- %s: %s\n", k, v)
		}
	}
	fmt.Fprintf(&b, "- Run: %s, %d repeat(s), %s sizes, %s\n", rep.Started.Format("2006-01-02 15:04 MST"), rep.Repeat,
		rep.Profile, rep.Finished.Sub(rep.Started).Round(1e9))
	for _, e := range rep.Envs {
		if why, ok := rep.Unavailable[e]; ok {
			fmt.Fprintf(&b, "- **%s unavailable**: %s\n", e, mdEscape(why))
		}
	}
	if rep.Interrupted != "" {
		fmt.Fprintf(&b, "- **Interrupted %s**: the cells not run say so.\n", rep.Interrupted)
	}
	fmt.Fprintf(&b, "\nEvery environment ran in this one run on this one platform; compare numbers only within it. ")
	fmt.Fprintf(&b, "Cells: median (range) over the repeats, and the ratio to the host (to the first environment measured if the host was not).\n")
	for _, w := range workloadOrder(rep) {
		var rows []*Row
		for _, row := range rep.Rows {
			if row.Workload == w {
				rows = append(rows, row)
			}
		}
		fmt.Fprintf(&b, "\n## %s\n\n", rows[0].Title)
		fmt.Fprintf(&b, "| metric | %s |\n|---|%s\n", strings.Join(rep.Envs, " | "), strings.Repeat("---|", len(rep.Envs)))
		var notes []string
		noted := map[string]bool{}
		for _, row := range rows {
			dir := "higher is better"
			if !row.Metric.HigherBetter {
				dir = "lower is better"
			}
			fmt.Fprintf(&b, "| %s (%s, %s) |", row.Metric.Label, row.Metric.Unit, dir)
			base := row.Cells[baseline(rep, row)]
			for _, e := range rep.Envs {
				c := row.Cells[e]
				switch {
				case c == nil || c.Summary.N == 0:
					why := "not run"
					if c != nil && c.Unavailable != "" {
						why = c.Unavailable
					}
					fmt.Fprintf(&b, " unavailable: %s |", mdEscape(why))
				default:
					s := c.Summary
					cell := fmtNum(s.Median)
					if s.N > 1 {
						cell += fmt.Sprintf(" (%s-%s)", fmtNum(s.Min), fmtNum(s.Max))
					}
					if base != nil && base.Summary.Median != 0 {
						cell += " **" + fmtRatio(s.Median/base.Summary.Median) + "**"
					}
					if c.Unavailable != "" {
						cell += " (some runs failed: " + mdEscape(c.Unavailable) + ")"
					}
					fmt.Fprintf(&b, " %s |", cell)
					if n := e + ": " + c.Info; c.Info != "" && !noted[n] {
						noted[n] = true
						notes = append(notes, n)
					}
				}
			}
			b.WriteString("\n")
		}
		if len(notes) > 0 {
			fmt.Fprintf(&b, "\nNotes: %s.\n", mdEscape(strings.Join(notes, "; ")))
		}
		for _, c := range charts {
			if c == w {
				fmt.Fprintf(&b, "\n![%s](charts/%s.svg)\n", rows[0].Title, w)
			}
		}
	}
	if len(rep.Isolation) > 0 {
		fmt.Fprintf(&b, "\n## Isolation probes\n\n| probe | %s |\n|---|%s\n", strings.Join(rep.Envs, " | "), strings.Repeat("---|", len(rep.Envs)))
		for _, p := range rep.Isolation {
			fmt.Fprintf(&b, "| %s |", p.Name)
			for _, e := range rep.Envs {
				v, ok := p.Cells[e]
				if _, down := rep.Unavailable[e]; down {
					v = envUnavailable
				} else if !ok {
					v = "not run"
				}
				fmt.Fprintf(&b, " %s |", mdEscape(v))
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func mdEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ")
}

// envColors tell the environments apart in charts.
var envColors = []color.Color{
	color.RGBA{R: 0x4e, G: 0x79, B: 0xa7, A: 0xff},
	color.RGBA{R: 0xf2, G: 0x8e, B: 0x2b, A: 0xff},
	color.RGBA{R: 0x59, G: 0xa1, B: 0x4f, A: 0xff},
	color.RGBA{R: 0xe1, G: 0x57, B: 0x59, A: 0xff},
}

// chart draws workload w's metrics as groups of bars, one bar per
// environment, each the median relative to the baseline and labelled
// with that ratio; it reports false when nothing was measured.
func chart(rep *Report, w, base string) (bool, error) {
	var rows []*Row
	for _, row := range rep.Rows {
		if row.Workload == w {
			rows = append(rows, row)
		}
	}
	p := plot.New()
	p.Title.Text = rows[0].Title
	p.Y.Label.Text = "ratio to " + baseline(rep, rows[0])
	p.Y.Min = 0
	var names []string
	for _, row := range rows {
		names = append(names, fmt.Sprintf("%s (%s)", row.Metric.Label, row.Metric.Unit))
	}
	width := vg.Points(18)
	any := false
	maxRatio := 1.0
	for i, e := range rep.Envs {
		vals := make(plotter.Values, len(rows))
		var labels []string
		var xys plotter.XYs
		for j, row := range rows {
			c, b := row.Cells[e], row.Cells[baseline(rep, row)]
			ratio := 0.0
			label := "n/a"
			if c != nil && c.Summary.N > 0 && b != nil && b.Summary.Median != 0 {
				ratio = c.Summary.Median / b.Summary.Median
				label = fmtRatio(ratio)
				any = true
			}
			vals[j] = ratio
			maxRatio = math.Max(maxRatio, ratio)
			labels = append(labels, label)
			xys = append(xys, plotter.XY{X: float64(j), Y: ratio})
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return false, err
		}
		off := width * vg.Length(float64(i)-float64(len(rep.Envs)-1)/2)
		bars.Offset = off
		bars.Color = envColors[i%len(envColors)]
		bars.LineStyle.Width = 0
		p.Add(bars)
		p.Legend.Add(e, bars)
		lb, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
		if err != nil {
			return false, err
		}
		for k := range lb.TextStyle {
			lb.TextStyle[k].XAlign = -0.5
			lb.TextStyle[k].Font.Size = vg.Points(7)
		}
		lb.Offset = vg.Point{X: off, Y: vg.Points(2)}
		p.Add(lb)
	}
	if !any {
		return false, nil
	}
	p.Y.Max = maxRatio * 1.3 // room for the legend
	p.NominalX(names...)
	p.Legend.Top = true
	width2 := vg.Length(len(rows)*len(rep.Envs))*width*1.6 + vg.Inch*1.5
	if width2 < 5*vg.Inch {
		width2 = 5 * vg.Inch
	}
	for _, ext := range []string{".svg", ".png"} {
		if err := p.Save(width2, 3.5*vg.Inch, base+ext); err != nil {
			return false, err
		}
	}
	return true, nil
}

// fmtRatio prints a ratio with two significant digits below 1.
func fmtRatio(r float64) string {
	switch {
	case r >= 10:
		return fmt.Sprintf("%.1fx", r)
	case r >= 0.1:
		return fmt.Sprintf("%.2fx", r)
	default:
		return fmt.Sprintf("%.2gx", r)
	}
}
