package compare

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
)

// Isolation probe names, in report order.
var probeNames = []string{
	"kernel the workload runs on",
	"processes it sees",
	"a host file visible",
	"devices it sees",
	"CPUs and memory it sees",
	"fork bomb",
	"memory hog",
	"CPU limit (2 busy threads, 1 CPU allowed)",
}

// probeResult is the workload binary's JSON.
type probeResult struct {
	Metrics map[string]float64 `json:"metrics"`
	Info    map[string]string  `json:"info"`
}

// isolation runs the probes in env e (nil when it is unavailable) and
// records what each showed.
func (r *runner) isolation(ctx context.Context, name string, e env) {
	set := func(probe, v string) {
		for _, p := range r.rep.Isolation {
			if p.Name == probe {
				p.Cells[name] = v
				return
			}
		}
		r.rep.Isolation = append(r.rep.Isolation, &Probe{Name: probe, Cells: map[string]string{name: v}})
	}
	if e == nil {
		for _, p := range probeNames {
			set(p, envUnavailable)
		}
		return
	}
	lim := limits{CPUs: 1, MemoryMiB: r.sz.ProbeMiB, Pids: r.sz.ProbePids}
	run := func(args ...string) (probeResult, outcome, error) {
		var res probeResult
		o, err := e.run(ctx, args, lim)
		if err == nil && o.code == 0 {
			err = json.Unmarshal(o.stdout, &res)
		}
		return res, o, err
	}

	res, o, err := run("probe", "-marker", r.s.marker)
	if err != nil || o.code != 0 {
		for _, p := range probeNames[:5] {
			set(p, "probe failed: "+failure(err, o))
		}
	} else {
		k := res.Info["kernel"]
		if id := res.Info["boot_id"]; len(id) >= 8 {
			k += " (boot ID " + id[:8] + ")"
		}
		set(probeNames[0], k)
		set(probeNames[1], fmt.Sprintf("%.0f", res.Metrics["processes"]))
		set(probeNames[2], map[string]string{"true": "yes", "false": "no"}[res.Info["host_file_visible"]])
		kvm := map[string]string{"true": ", /dev/kvm", "false": ""}[res.Info["dev_kvm"]]
		blocks := res.Info["block_devices"]
		if blocks == "" {
			blocks = "none"
		}
		set(probeNames[3], fmt.Sprintf("%.0f in /dev%s; block devices: %s", res.Metrics["devices"], kvm, blocks))
		set(probeNames[4], fmt.Sprintf("%.0f CPUs, %.0f MiB", res.Metrics["cpus"], res.Metrics["mem_mib"]))
	}
	if ctx.Err() != nil {
		return
	}

	if name == EnvHost {
		set(probeNames[5], "not run: nothing on the host would stop it")
		set(probeNames[6], "not run: nothing on the host would stop it")
	} else {
		max := 2 * r.sz.ProbePids
		res, o, err = run("forkbomb", "-max", fmt.Sprint(max))
		switch {
		case err == nil && o.code == 0:
			n := res.Metrics["processes_started"]
			verdict := "contained"
			if int64(n) >= max {
				verdict = "not contained"
			}
			set(probeNames[5], fmt.Sprintf("%s: %.0f of %d processes started (limit %d), %s", verdict, n, max, r.sz.ProbePids, res.Info["stopped_by"]))
		case o.code == 137:
			set(probeNames[5], "contained: killed by the memory limit")
		default:
			set(probeNames[5], "failed: "+failure(err, o))
		}
		if ctx.Err() != nil {
			return
		}
		max = 2 * int64(r.sz.ProbeMiB)
		res, o, err = run("memhog", "-max-mb", fmt.Sprint(max))
		switch {
		case err == nil && o.code == 0:
			set(probeNames[6], fmt.Sprintf("not contained: %.0f MiB allocated (limit %d MiB): %s", res.Metrics["allocated_mib"], r.sz.ProbeMiB, res.Info["stopped_by"]))
		case err == nil && o.code == 137:
			set(probeNames[6], fmt.Sprintf("contained: killed at %s (limit %d MiB)", lastReached(o.stderr), r.sz.ProbeMiB))
		default:
			set(probeNames[6], "failed: "+failure(err, o))
		}
	}
	if ctx.Err() != nil {
		return
	}
	res, o, err = run("cpulimit", "-threads", "2", "-time", r.sz.Time)
	if err != nil || o.code != 0 {
		set(probeNames[7], "failed: "+failure(err, o))
		return
	}
	set(probeNames[7], fmt.Sprintf("%.2f CPUs used", res.Metrics["cores_used"]))
}

// lastReached is the last "memhog: N MiB" line.
func lastReached(stderr []byte) string {
	last := "an unknown size"
	for _, l := range strings.Split(string(stderr), "\n") {
		if v, ok := strings.CutPrefix(l, "memhog: "); ok {
			last = v
		}
	}
	return last
}

// execOutput runs a program and returns its output.
func execOutput(prog string, args ...string) ([]byte, error) {
	return exec.Command(prog, args...).CombinedOutput()
}
