package compare

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vesselvm/vessel/bench/internal/benchutil"
	"github.com/vesselvm/vessel/internal/testbin"
)

// workloadBin is the workload binary the tests build.
var workloadBin string

func TestMain(m *testing.M) {
	testbin.Main(func(path string) int {
		workloadBin = path
		return m.Run()
	}, "github.com/vesselvm/vessel/bench/workload", "vessel-workload")
}

// sampleReport has every kind of cell: measured, partly failed,
// unavailable.
func sampleReport() *Report {
	cell := func(xs ...float64) *Cell { return &Cell{Samples: xs, Summary: benchutil.Summarize(xs)} }
	rep := &Report{Platform: "test platform", Kernel: "6.1.0", Versions: map[string]string{"runc": "runc version 1.1.5"},
		Started: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), Finished: time.Date(2026, 12, 1, 0, 5, 0, 0, time.UTC),
		Repeat: 3, Envs: []string{EnvHost, EnvRunc, EnvVessel}}
	rep.Rows = []*Row{
		{Workload: "cpu", Title: "CPU", Metric: metric{Key: "events_per_s", Label: "events", Unit: "events/s", HigherBetter: true},
			Cells: map[string]*Cell{EnvHost: cell(100, 110, 90), EnvRunc: cell(99, 98, 97), EnvVessel: cell(80, 85, 90)}},
		{Workload: "disk", Title: "Disk", Metric: metric{Key: "seq_write_mb_per_s", Label: "seq write", Unit: "MB/s", HigherBetter: true},
			Cells: map[string]*Cell{EnvHost: cell(500), EnvRunc: {Unavailable: "runc run: no cgroups"}, EnvVessel: cell(250)}},
		{Workload: "disk", Title: "Disk", Metric: metric{Key: "rand_read_iops", Label: "rand read", Unit: "IOPS", HigherBetter: true},
			Cells: map[string]*Cell{EnvHost: cell(1000), EnvRunc: {Unavailable: "runc run: no cgroups"}, EnvVessel: cell(2000)}},
	}
	rep.Isolation = []*Probe{{Name: "kernel the workload runs on", Cells: map[string]string{EnvHost: "6.1.0", EnvRunc: "6.1.0", EnvVessel: "6.1.99|guest"}}}
	return rep
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	rep := sampleReport()
	if err := Write(rep, dir); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Platform: test platform",
		"| events (events/s, higher is better) | 100 (90.0-110) **1.00x** | 98.0 (97.0-99.0) **0.98x** | 85.0 (80.0-90.0) **0.85x** |",
		"| seq write (MB/s, higher is better) | 500 **1.00x** | unavailable: runc run: no cgroups | 250 **0.50x** |",
		"![CPU](charts/cpu.svg)",
		`6.1.99\|guest`,
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q:\n%s", want, md)
		}
	}
	var back Report
	js, _ := os.ReadFile(filepath.Join(dir, "results.json"))
	if err := json.Unmarshal(js, &back); err != nil || len(back.Rows) != 3 || back.Rows[0].Cells[EnvVessel].Summary.Median != 85 {
		t.Errorf("results.json: %v %+v", err, back.Rows)
	}
	for _, w := range []string{"cpu", "disk"} {
		svg, err := os.ReadFile(filepath.Join(dir, "charts", w+".svg"))
		if err != nil {
			t.Fatal(err)
		}
		d := xml.NewDecoder(bytes.NewReader(svg))
		var root string
		for {
			tok, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s.svg: %v", w, err)
			}
			if se, ok := tok.(xml.StartElement); ok && root == "" {
				root = se.Name.Local
			}
		}
		if root != "svg" || !bytes.Contains(svg, []byte("0.85x")) && w == "cpu" {
			t.Errorf("%s.svg: root %q, or no ratio label", w, root)
		}
		f, err := os.Open(filepath.Join(dir, "charts", w+".png"))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil || img.Bounds().Dx() < 300 {
			t.Errorf("%s.png: %v", w, err)
		}
	}
}

// TestRunHost runs every workload with tiny sizes on the host, the one
// environment a unit test has for sure; the end-to-end test runs all.
func TestRunHost(t *testing.T) {
	out := t.TempDir()
	var progress bytes.Buffer
	rep, err := Run(context.Background(), Options{Envs: []string{EnvHost}, Workloads: WorkloadNames(), Repeat: 2, Out: out, Sizes: "tiny",
		Workload: workloadBin, Vessel: "/nonexistent/vessel", Runc: "/nonexistent/runc", Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range rep.Rows {
		c := row.Cells[EnvHost]
		if c == nil || c.Summary.N != 2 || math.IsNaN(c.Summary.Median) || c.Summary.Median <= 0 {
			t.Errorf("%s %s: %+v", row.Workload, row.Metric.Key, c)
		}
	}
	probes := map[string]string{}
	for _, p := range rep.Isolation {
		probes[p.Name] = p.Cells[EnvHost]
	}
	if probes["a host file visible"] != "yes" || !strings.Contains(probes["fork bomb"], "not run") || !strings.HasSuffix(probes[probeNames[7]], "CPUs used") {
		t.Errorf("probes: %q", probes)
	}
	if !strings.Contains(progress.String(), "[1/") {
		t.Errorf("progress: %q", progress.String())
	}
	if _, err := os.Stat(filepath.Join(out, "report.md")); err != nil {
		t.Error(err)
	}
}

// An environment that cannot be set up fills its cells with why; an
// interrupted run keeps what ran.
func TestRunUnavailableAndInterrupted(t *testing.T) {
	out := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rep, err := Run(ctx, Options{Envs: []string{EnvHost, EnvRunc}, Workloads: []string{"cpu", "isolation"}, Repeat: 1, Out: out, Sizes: "tiny",
		Workload: workloadBin, Vessel: "/nonexistent/vessel", Runc: "/nonexistent/runc"})
	if err != ErrInterrupted {
		t.Fatalf("err %v, want ErrInterrupted", err)
	}
	if c := rep.Rows[0].Cells[EnvRunc]; c.Unavailable != envUnavailable || !strings.Contains(rep.Unavailable[EnvRunc], "runc") {
		t.Errorf("runc cell: %+v, environment: %q", c, rep.Unavailable[EnvRunc])
	}
	if c := rep.Rows[0].Cells[EnvHost]; !strings.Contains(c.Unavailable, "not run") {
		t.Errorf("host cell after the interruption: %+v", c)
	}
	md, _ := os.ReadFile(filepath.Join(out, "report.md"))
	if !strings.Contains(string(md), "Interrupted") || !strings.Contains(string(md), "**runc unavailable**: no runc") {
		t.Errorf("report.md does not say it was interrupted:\n%s", md)
	}
	for _, bad := range []Options{{Envs: []string{"kvm"}, Workloads: []string{"cpu"}, Repeat: 1}, {Envs: []string{EnvHost}, Workloads: []string{"gpu"}, Repeat: 1}, {Envs: []string{EnvHost}, Repeat: 0}} {
		bad.Out = t.TempDir()
		if _, err := Run(context.Background(), bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	rep := sampleReport()
	var log bytes.Buffer
	log.WriteString("progress lines\n")
	if err := PrintJSON(rep, &log); err != nil {
		t.Fatal(err)
	}
	log.WriteString("trailing output\n")
	path := filepath.Join(t.TempDir(), "log")
	os.WriteFile(path, log.Bytes(), 0o644)
	back, err := ReadJSON(path)
	if err != nil || len(back.Rows) != len(rep.Rows) || back.Rows[0].Cells[EnvRunc].Summary.Median != 98 {
		t.Fatalf("ReadJSON: %v %+v", err, back)
	}
	os.WriteFile(path, log.Bytes()[:log.Len()/2], 0o644)
	if _, err := ReadJSON(path); err == nil {
		t.Error("a cut log read")
	}
}

func TestFmtRatio(t *testing.T) {
	for r, want := range map[float64]string{25.04: "25.0x", 1: "1.00x", 0.849: "0.85x", 0.0049: "0.0049x"} {
		if got := fmtRatio(r); got != want {
			t.Errorf("fmtRatio(%v) = %q, want %q", r, got, want)
		}
	}
}
