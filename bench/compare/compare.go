// Package compare is `vessel bench compare`: the same workloads, in the
// spirit of the classic comparison of containers and virtual machines
// (Potdar et al., "Performance Evaluation of Docker Container and Virtual
// Machine", Procedia Computer Science 2020), run on the host, in a runc
// container and in a vessel microVM container, side by side in one run
// on one platform; plus isolation probes. It writes a markdown report,
// the results as JSON, and a bar chart per workload (SVG and PNG).
//
// One static binary (bench/workload) runs unchanged in every
// environment. Absolute numbers compare only within one platform: every
// report names its platform, and on the nested test platform every
// environment runs inside the same test VM.
package compare

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vesselvm/vessel/bench/internal/benchutil"
	"github.com/vesselvm/vessel/container"
)

// Options configure a comparison.
type Options struct {
	Envs      []string // of EnvNames
	Workloads []string // of WorkloadNames
	Repeat    int
	Out       string // the report's directory
	Sizes     string // the profile: full (default), small (emulated platforms), tiny (tests)
	// The binaries: the workload, vessel, and the host's runc.
	Workload, Vessel, Runc string
	// Progress receives a line per step; Terminal redraws one line.
	Progress io.Writer
	Terminal bool
}

// Cell is one metric in one environment over the repeats.
type Cell struct {
	Samples     []float64         `json:"samples,omitempty"`
	Summary     benchutil.Summary `json:"summary"`
	Unavailable string            `json:"unavailable,omitempty"`
	Info        string            `json:"info,omitempty"`
}

// Row is one metric of one workload across the environments.
type Row struct {
	Workload string           `json:"workload"`
	Title    string           `json:"title"`
	Metric   metric           `json:"metric"`
	Cells    map[string]*Cell `json:"cells"`
}

// Probe is one isolation probe across the environments: what each
// showed.
type Probe struct {
	Name  string            `json:"name"`
	Cells map[string]string `json:"cells"`
}

// Report is a comparison's results.
type Report struct {
	Platform    string            `json:"platform"`
	Kernel      string            `json:"kernel"`
	Versions    map[string]string `json:"versions"`
	Started     time.Time         `json:"started"`
	Finished    time.Time         `json:"finished"`
	Repeat      int               `json:"repeat"`
	Profile     string            `json:"profile"`
	Envs        []string          `json:"envs"`
	Sizes       sizes             `json:"sizes"`
	Rows        []*Row            `json:"rows"`
	Isolation   []*Probe          `json:"isolation,omitempty"`
	Interrupted string            `json:"interrupted,omitempty"`
	// Unavailable says why an environment could not be set up.
	Unavailable map[string]string `json:"unavailable,omitempty"`
}

// ErrInterrupted is returned when ctx ended the comparison early; the
// report holds what ran until then.
var ErrInterrupted = errors.New("interrupted")

// Run runs the comparison and writes its report to o.Out, also when
// interrupted (ctx done) or when an environment cannot be set up (its
// cells say why).
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Repeat < 1 {
		return nil, fmt.Errorf("--repeat %d: at least 1", o.Repeat)
	}
	var wls []workload
	probes := false
	for _, n := range o.Workloads {
		if n == "isolation" {
			probes = true
			continue
		}
		w, err := findWorkload(n)
		if err != nil {
			return nil, fmt.Errorf("%w (want %s)", err, strings.Join(WorkloadNames(), ", "))
		}
		wls = append(wls, w)
	}
	for _, e := range o.Envs {
		if !slices.Contains(EnvNames(), e) {
			return nil, fmt.Errorf("unknown environment %q (want %s)", e, strings.Join(EnvNames(), ", "))
		}
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "vessel-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	s := &setup{work: work, workload: o.Workload, vessel: o.Vessel, runc: o.Runc, marker: filepath.Join(work, "host-marker")}
	if err := os.WriteFile(s.marker, []byte("host only\n"), 0o644); err != nil {
		return nil, err
	}
	sz, err := sizesFor(o.Sizes, runtime.NumCPU())
	if err != nil {
		return nil, err
	}
	if o.Sizes == "" {
		o.Sizes = "full"
	}
	rep := &Report{Platform: benchutil.Describe(), Kernel: kernel(), Versions: versions(o), Started: time.Now().UTC(),
		Repeat: o.Repeat, Profile: o.Sizes, Envs: o.Envs, Sizes: sz}
	for _, w := range wls {
		for _, m := range w.Metrics {
			rep.Rows = append(rep.Rows, &Row{Workload: w.Name, Title: w.Title, Metric: m, Cells: map[string]*Cell{}})
		}
	}
	r := &runner{o: o, s: s, sz: sz, rep: rep, total: len(o.Envs) * (o.Repeat*len(wls) + btoi(probes)), stepLimit: sz.StepLimit}
	r.timedOut = fmt.Errorf("timed out after %v (a hung run: the step's limit)", r.stepLimit)
	defer func() {
		rep.Finished = time.Now().UTC()
	}()

	// Set up each environment; one that cannot be is reported so.
	envs := map[string]env{}
	for _, name := range o.Envs {
		r.progress("setting up %s", name)
		e, err := newEnv(name, s)
		if err != nil {
			r.unavailable(name, err.Error())
			continue
		}
		envs[name] = e
		defer e.close()
	}
	// Repeats outermost, environments innermost: drift over the run
	// spreads over every environment alike.
	for rep := 0; rep < o.Repeat && ctx.Err() == nil; rep++ {
		for _, w := range wls {
			for _, name := range o.Envs {
				if ctx.Err() != nil {
					break
				}
				r.step(fmt.Sprintf("%s %s, run %d of %d", name, w.Name, rep+1, o.Repeat))
				if e := envs[name]; e != nil {
					sctx, cancel := context.WithTimeoutCause(ctx, r.stepLimit, r.timedOut)
					r.measure(sctx, e, w)
					cancel()
				}
			}
		}
	}
	if probes {
		for _, name := range o.Envs {
			if ctx.Err() != nil {
				break
			}
			r.step(name + " isolation probes")
			sctx, cancel := context.WithTimeoutCause(ctx, 4*r.stepLimit, r.timedOut)
			r.isolation(sctx, name, envs[name])
			cancel()
		}
	}
	r.finishCells()
	rep.Finished = time.Now().UTC()
	if ctx.Err() != nil {
		rep.Interrupted = fmt.Sprintf("after %d of %d steps", r.done-1, r.total)
	}
	if err := Write(rep, o.Out); err != nil {
		return rep, err
	}
	if o.Terminal && o.Progress != nil {
		fmt.Fprintln(o.Progress)
	}
	if ctx.Err() != nil {
		return rep, ErrInterrupted
	}
	return rep, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func newEnv(name string, s *setup) (env, error) {
	switch name {
	case EnvHost:
		return newHost(s)
	case EnvRunc:
		return newRunc(s)
	default:
		return newVessel(s)
	}
}

// runner carries one comparison's state.
type runner struct {
	o     Options
	s     *setup
	sz    sizes
	rep   *Report
	total int
	done  int
	// stepLimit bounds one step, so a hung run (a platform fault) costs
	// one cell, not the whole comparison; timedOut is its cause.
	stepLimit time.Duration
	timedOut  error
}

// interrupted reports whether ctx ended because the comparison was
// stopped, rather than because its step ran out of time.
func (r *runner) interrupted(ctx context.Context) bool {
	return ctx.Err() != nil && !errors.Is(context.Cause(ctx), r.timedOut)
}

func (r *runner) progress(format string, a ...any) {
	if r.o.Progress == nil {
		return
	}
	line := fmt.Sprintf(format, a...)
	if r.o.Terminal {
		fmt.Fprintf(r.o.Progress, "\r\033[K%s", line)
		return
	}
	fmt.Fprintln(r.o.Progress, line)
}

func (r *runner) step(what string) {
	r.done++
	r.progress("[%d/%d] %s", r.done, r.total, what)
}

// cell returns the cell of metric m of workload w in env.
func (r *runner) cell(w, m, env string) *Cell {
	for _, row := range r.rep.Rows {
		if row.Workload == w && row.Metric.Key == m {
			c := row.Cells[env]
			if c == nil {
				c = &Cell{}
				row.Cells[env] = c
			}
			return c
		}
	}
	return &Cell{}
}

// envUnavailable is the cells' note for an environment that could not
// be set up; the report says why once.
const envUnavailable = "the environment is unavailable"

// unavailable marks every cell of env with why it was not measured.
func (r *runner) unavailable(env, why string) {
	if r.rep.Unavailable == nil {
		r.rep.Unavailable = map[string]string{}
	}
	r.rep.Unavailable[env] = why
	for _, row := range r.rep.Rows {
		r.cell(row.Workload, row.Metric.Key, env).Unavailable = envUnavailable
	}
}

// fail marks workload w's cells in env as failed, keeping samples.
func (r *runner) fail(w workload, env, why string) {
	for _, m := range w.Metrics {
		c := r.cell(w.Name, m.Key, env)
		if c.Unavailable == "" {
			c.Unavailable = why
		}
	}
}

// limits are what a confined environment gives workload w.
func (r *runner) limits(w workload) limits {
	l := limits{CPUs: runtime.NumCPU(), MemoryMiB: r.sz.MemoryMiB}
	if w.disk != nil {
		l.Disk = w.disk(r.sz)
	}
	return l
}

// measure takes one sample of w in e.
func (r *runner) measure(ctx context.Context, e env, w workload) {
	switch w.Kind {
	case kindRun:
		r.record(ctx, e, w, w.args(r.sz, e.dir()), r.limits(w))
	case kindStartup:
		start := time.Now()
		o, err := e.run(ctx, []string{"true"}, limits{CPUs: 1, MemoryMiB: r.sz.InstanceMB})
		if err != nil || o.code != 0 {
			if !r.interrupted(ctx) {
				r.fail(w, e.name(), failure(err, o))
			}
			return
		}
		c := r.cell(w.Name, "ms", e.name())
		c.Samples = append(c.Samples, float64(time.Since(start).Microseconds())/1000)
	case kindIdle:
		in, err := e.start(ctx, limits{CPUs: 1, MemoryMiB: r.sz.InstanceMB}, nil)
		if err != nil {
			if !r.interrupted(ctx) {
				r.fail(w, e.name(), err.Error())
			}
			return
		}
		in.stop()
		c := r.cell(w.Name, "mib", e.name())
		c.Samples = append(c.Samples, in.memMiB)
	case kindDensity:
		r.density(ctx, e, w)
	case kindNet:
		r.network(ctx, e, w)
	case kindHTTP:
		r.http(ctx, e, w)
	}
}

// record runs the workload binary with args in e and records the
// metrics of w it reports.
func (r *runner) record(ctx context.Context, e env, w workload, args []string, lim limits) {
	o, err := e.run(ctx, args, lim)
	if err != nil || o.code != 0 {
		if !r.interrupted(ctx) {
			r.fail(w, e.name(), failure(err, o))
		}
		return
	}
	var res struct {
		Metrics map[string]float64 `json:"metrics"`
		Info    map[string]string  `json:"info"`
	}
	if err := json.Unmarshal(o.stdout, &res); err != nil {
		r.fail(w, e.name(), "unreadable result: "+benchutil.FirstLine(o.stdout))
		return
	}
	r.add(w, e.name(), res.Metrics, res.Info["io"])
}

// add records one sample of each of w's metrics in m.
func (r *runner) add(w workload, env string, m map[string]float64, info string) {
	for _, mt := range w.Metrics {
		c := r.cell(w.Name, mt.Key, env)
		v, ok := m[mt.Key]
		if !ok {
			c.Unavailable = "no " + mt.Key + " in the result"
			continue
		}
		c.Samples = append(c.Samples, v)
		if info != "" {
			c.Info = info
		}
	}
}

// density starts idle instances until their memory exceeds the budget,
// one fails to start, or the most are running.
func (r *runner) density(ctx context.Context, e env, w workload) {
	var running []*instance
	defer func() {
		for _, in := range running {
			in.stop()
		}
	}()
	start := time.Now()
	used := 0.0
	stopped := fmt.Sprintf("%d instances (the most asked for)", r.sz.DensityMax)
	for len(running) < r.sz.DensityMax && ctx.Err() == nil {
		in, err := e.start(ctx, limits{CPUs: 1, MemoryMiB: r.sz.InstanceMB}, nil)
		if err != nil {
			stopped = "a start failed: " + err.Error()
			break
		}
		running = append(running, in)
		used += in.memMiB
		if used > float64(r.sz.DensityMiB) {
			stopped = fmt.Sprintf("%.0f MiB used of a %d MiB budget", used, r.sz.DensityMiB)
			break
		}
	}
	if r.interrupted(ctx) {
		return
	}
	n := r.cell(w.Name, "instances", e.name())
	n.Samples = append(n.Samples, float64(len(running)))
	n.Info = "stopped at " + stopped
	t := r.cell(w.Name, "seconds", e.name())
	t.Samples = append(t.Samples, time.Since(start).Seconds())
}

// failure describes a run that failed.
func failure(err error, o outcome) string {
	if err != nil {
		return err.Error()
	}
	msg := runcMessage(benchutil.FirstLine(o.stderr))
	// vessel's own error comes last, after what the workload wrote.
	if v := vesselMessage(o.stderr); v != "" {
		msg = v
	}
	if msg == "" {
		msg = benchutil.FirstLine(o.stdout)
	}
	// vessel's description of a guest that stopped answering (with
	// VESSEL_DEBUG) follows its error: kept, on the same line.
	if d := diagnosis(o.stderr); d != "" {
		msg += " (" + d + ")"
	}
	return fmt.Sprintf("exit status %d: %s", o.code, msg)
}

// vesselMessage returns the last line of stderr that is vessel's own
// error ("vessel: ..."); "" without one.
func vesselMessage(stderr []byte) string {
	msg := ""
	for _, l := range strings.Split(string(stderr), "\n") {
		if strings.HasPrefix(l, "vessel: ") {
			msg = l
		}
	}
	return msg
}

// diagnosis returns vessel's description of a VM in stderr, from its
// header on, on one line; "" without one.
func diagnosis(stderr []byte) string {
	i := bytes.Index(stderr, []byte(container.DiagnosisHeader))
	if i < 0 {
		return ""
	}
	return strings.Join(strings.Fields(string(stderr[i:])), " ")
}

// runcMessage takes the message out of runc's logrus line
// (time="..." level=error msg="...").
func runcMessage(line string) string {
	_, m, ok := strings.Cut(line, ` msg="`)
	if !ok {
		return line
	}
	if u, err := strconv.Unquote(`"` + strings.TrimSuffix(m, `"`) + `"`); err == nil {
		return u
	}
	return strings.TrimSuffix(m, `"`)
}

// finishCells summarizes every cell; a cell never measured says why.
func (r *runner) finishCells() {
	for _, row := range r.rep.Rows {
		for _, env := range r.o.Envs {
			c := r.cell(row.Workload, row.Metric.Key, env)
			c.Summary = benchutil.Summarize(c.Samples)
			if c.Summary.N == 0 {
				c.Summary = benchutil.Summary{} // no NaNs: JSON has none
				if c.Unavailable == "" && len(c.Samples) == 0 {
					c.Unavailable = "not run (interrupted)"
				} else if c.Unavailable == "" {
					c.Unavailable = "no valid sample"
				}
			}
		}
	}
}

// kernel is the running kernel's release.
func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// versions names what ran.
func versions(o Options) map[string]string {
	v := map[string]string{"go": runtime.Version()}
	if out, err := execOutput(o.Runc, "--version"); err == nil {
		v["runc"] = benchutil.FirstLine(out)
	}
	if out, err := execOutput(o.Vessel, "--version"); err == nil {
		v["vessel"] = benchutil.FirstLine(out)
	}
	return v
}

// fmtNum prints a number with 3 significant digits or so.
func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}
