//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchCompare runs `vessel bench compare` with tiny sizes on every
// environment: every cell must hold a measurement or say why it has
// none, vessel's must be measured, and the report and its charts must be
// written.
func TestBenchCompare(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	out := filepath.Join(t.TempDir(), "report")
	cmd := exec.Command(vesselBin, "bench", "compare", "--sizes", "tiny", "--repeat", "1", "--out", out)
	cmd.Env = append(os.Environ(), "VESSEL_GUEST_DIR="+guestDir)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("vessel bench compare: %v\n%s", err, b)
	}
	var rep struct {
		Envs        []string          `json:"envs"`
		Unavailable map[string]string `json:"unavailable"`
		Rows        []struct {
			Workload string `json:"workload"`
			Metric   struct {
				Key string `json:"key"`
			} `json:"metric"`
			Cells map[string]struct {
				Summary struct {
					N      int     `json:"n"`
					Median float64 `json:"median"`
				} `json:"summary"`
				Unavailable string `json:"unavailable"`
			} `json:"cells"`
		} `json:"rows"`
		Isolation []struct {
			Name  string            `json:"name"`
			Cells map[string]string `json:"cells"`
		} `json:"isolation"`
	}
	js, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err == nil {
		err = json.Unmarshal(js, &rep)
	}
	if err != nil {
		t.Fatalf("results.json: %v\n%s", err, b)
	}
	if len(rep.Envs) != 3 || len(rep.Rows) < 12 || len(rep.Isolation) < 8 {
		t.Fatalf("%d environments, %d rows, %d probes:\n%s", len(rep.Envs), len(rep.Rows), len(rep.Isolation), js)
	}
	for env, why := range rep.Unavailable {
		t.Logf("environment %s unavailable: %s", env, why)
	}
	if why, ok := rep.Unavailable["vessel"]; ok {
		t.Errorf("vessel unavailable: %s", why)
	}
	for _, row := range rep.Rows {
		for _, env := range rep.Envs {
			c, ok := row.Cells[env]
			switch {
			case !ok || c.Summary.N == 0 && c.Unavailable == "":
				t.Errorf("%s %s in %s: neither measured nor marked unavailable", row.Workload, row.Metric.Key, env)
			case c.Summary.N == 0 && env == "vessel" && !(onEmulatedSVM() && (strings.Contains(c.Unavailable, "triple fault") || foreignState(c.Unavailable))):
				t.Errorf("%s %s in vessel not measured: %s", row.Workload, row.Metric.Key, c.Unavailable)
			case c.Summary.N == 0:
				t.Logf("%s %s in %s unavailable: %s", row.Workload, row.Metric.Key, env, c.Unavailable)
			}
		}
	}
	probes := map[string]map[string]string{}
	for _, p := range rep.Isolation {
		probes[p.Name] = p.Cells
		for _, env := range rep.Envs {
			if p.Cells[env] == "" {
				t.Errorf("probe %q in %s: empty", p.Name, env)
			}
		}
	}
	v := probes["a host file visible"]
	if v["host"] != "yes" || v["vessel"] != "no" || (v["runc"] != "no" && rep.Unavailable["runc"] == "") {
		t.Errorf("host file visible: %v", v)
	}
	for _, p := range []string{"fork bomb", "memory hog"} {
		got := probes[p]["vessel"]
		switch {
		case strings.HasPrefix(got, "contained"):
		case onEmulatedSVM() && strings.Contains(got, "triple fault"):
			// The emulated platform's known fault (see platformFlake),
			// not vessel's: said loudly, not retried inside the bench.
			t.Logf("PLATFORM FAULT: %s in vessel: %s", p, got)
		default:
			t.Errorf("%s in vessel: %q", p, got)
		}
	}
	md, err := os.ReadFile(filepath.Join(out, "report.md"))
	if err != nil || !strings.Contains(string(md), "| metric | host | runc | vessel |") {
		t.Errorf("report.md: %v\n%s", err, md)
	}
	charts, _ := filepath.Glob(filepath.Join(out, "charts", "*.svg"))
	pngs, _ := filepath.Glob(filepath.Join(out, "charts", "*.png"))
	if len(charts) < 8 || len(pngs) != len(charts) {
		t.Errorf("charts: %v %v", charts, pngs)
	}
	t.Logf("report:\n%s", md)
}
