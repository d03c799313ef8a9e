// Command benchrun is `make bench-run`: what a container costs in vessel,
// measured in one run on one platform. It times `vessel run IMAGE true`
// end to end (with no network, and with the default user network),
// `vessel vm run -- true` (the same VM without the container machinery),
// and `runc run` of the same root file system on the host; and it
// measures the memory of one running container: the vessel process's
// resident and proportional set (guest RAM the guest touched included)
// against the container process runc leaves on the host. It prints a
// markdown table with medians, ranges and ratios, and where each vessel
// run's time went (its --metrics steps). Not a test: no thresholds.
//
// Flags: -runs N (default 5); -skip docker,density,memory leaves those
// parts out (the vessel run and runc rows always run).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/bench/internal/benchutil"
	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/internal/bbimage"
	"github.com/vesselvm/vessel/internal/guestdir"
)

const image = "vessel-bench/busybox:1"

func main() {
	vessel := flag.String("vessel", "bin/vessel", "the vessel binary")
	runc := flag.String("runc", "runc", "the host's runc, for the baseline")
	runtime := flag.String("runtime", "bin/vessel-runtime", "vessel-runtime, for docker run --runtime vessel")
	guestDir := flag.String("guest", "", "the guest kernel and initramfs directory, for vessel-runtime (default: $VESSEL_GUEST_DIR, else where make guest puts them)")
	runs := flag.Int("runs", 5, "runs of each measurement")
	skipList := flag.String("skip", "", "comma-separated parts to leave out: docker, density, memory")
	flag.Parse()
	for _, p := range strings.Split(*skipList, ",") {
		switch p = strings.TrimSpace(p); p {
		case "":
		case "docker", "density", "memory":
			skip[p] = true
		default:
			fmt.Fprintf(os.Stderr, "benchrun: -skip: unknown part %q (docker, density, memory)\n", p)
			os.Exit(2)
		}
	}
	if *guestDir == "" {
		*guestDir = guestdir.Dir()
	}
	if err := run(*vessel, *runc, *runtime, *guestDir, *runs); err != nil {
		fmt.Fprintf(os.Stderr, "benchrun: %v\n", err)
		os.Exit(1)
	}
}

// skip holds the parts -skip leaves out.
var skip = map[string]bool{}

// errSkipped is a part -skip left out.
var errSkipped = errors.New("left out (-skip)")

// bench holds one benchmark run's environment.
type bench struct {
	vessel, runc string
	env          []string
	work         string
}

func run(vessel, runc, runtime, guestDir string, runs int) error {
	work, err := os.MkdirTemp("", "benchrun-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if vessel, err = filepath.Abs(vessel); err != nil {
		return err
	}
	if runtime, err = filepath.Abs(runtime); err != nil {
		return err
	}
	b := &bench{vessel: vessel, runc: runc, work: work,
		env: append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(work, "data"), "XDG_RUNTIME_DIR="+filepath.Join(work, "run"),
			"VESSEL_TEMPLATE_DIR="+filepath.Join(work, "templates"))}
	img, err := bbimage.Build()
	if err != nil {
		return err
	}
	archive := filepath.Join(work, "image.tar")
	tag, _ := name.NewTag(image)
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		return err
	}
	if _, err := b.cmd("image", "load", archive); err != nil {
		return err
	}
	// The first runs build the image's disk and the templates (one per
	// network mode), cached afterwards: not timed.
	for _, args := range [][]string{{"--network", "none"}, nil} {
		if _, err := b.cmd(append(append([]string{"run", "--rm"}, args...), image, "true")...); err != nil {
			return err
		}
	}

	type row struct {
		what  string
		times []float64 // ms
		note  string
		// phases are vessel run's steps (--metrics), ms per run.
		phases map[string][]float64
		order  []string
	}
	// Rows 0-2 are vessel run; 3 and 4 the references the ratios use.
	const vmRow, runcRow, coldRow = 3, 4, 1
	rows := []*row{
		{what: "vessel run --network none IMAGE true (from the template)"},
		{what: "vessel run --network none --no-template IMAGE true (cold boot)"},
		{what: "vessel run IMAGE true (user network, from the template)"},
		{what: "vessel vm run -- true"},
		{what: "runc run (same rootfs, host)"},
	}
	bundle, bundleErr := b.runcBundle(img)
	for i := 0; i < runs; i++ {
		fmt.Fprintf(os.Stderr, "benchrun: round %d of %d\n", i+1, runs)
		for k, args := range [][]string{
			{"run", "--rm", "--network", "none", image, "true"},
			{"run", "--rm", "--network", "none", "--no-template", image, "true"},
			{"run", "--rm", image, "true"},
			{"vm", "run", "--", "true"},
		} {
			metrics := ""
			if args[0] == "run" {
				metrics = filepath.Join(work, "metrics.json")
				os.Remove(metrics)
				args = append([]string{"run", "--metrics", metrics}, args[1:]...)
			}
			d, err := b.cmd(args...)
			if err != nil {
				return err
			}
			rows[k].times = append(rows[k].times, ms(d))
			if metrics != "" {
				phases, err := readPhases(metrics)
				if err != nil {
					return err
				}
				if rows[k].phases == nil {
					rows[k].phases = map[string][]float64{}
				}
				for _, p := range phases {
					if _, seen := rows[k].phases[p.Name]; !seen {
						rows[k].order = append(rows[k].order, p.Name)
					}
					rows[k].phases[p.Name] = append(rows[k].phases[p.Name], p.MS)
				}
			}
		}
		if bundleErr != nil {
			rows[runcRow].note = "unavailable: " + bundleErr.Error()
			continue
		}
		start := time.Now()
		out, err := exec.Command(runc, "--root", filepath.Join(work, "runc"), "run", "--bundle", bundle, fmt.Sprintf("bench%d", i)).CombinedOutput()
		if err != nil {
			rows[runcRow].note = fmt.Sprintf("unavailable: runc run: %v: %s", err, benchutil.FirstLine(out))
			bundleErr = errors.New(rows[runcRow].note)
			continue
		}
		rows[runcRow].times = append(rows[runcRow].times, ms(time.Since(start)))
	}

	var (
		dockerTimes                  map[string][]float64
		dockerPSS                    map[string]float64
		vmRSS, vmPSS                 float64
		densTemplate, densCold       float64
		ctrRSS, runcRSS              float64
		dockerErr, memErr, runcErr   = errSkipped, errSkipped, errSkipped
		densTemplateErr, densColdErr = errSkipped, errSkipped
	)
	if !skip["docker"] {
		dockerTimes, dockerPSS, dockerErr = dockerBench(work, runtime, guestDir, archive, runs)
	}
	if !skip["memory"] {
		vmRSS, vmPSS, memErr = b.vesselMemory()
		ctrRSS, runcRSS, runcErr = b.runcMemory(bundleErr)
	}
	if !skip["density"] {
		densTemplate, densTemplateErr = b.density(densityN, false)
		densCold, densColdErr = b.density(densityN, true)
	}

	fmt.Printf("# vessel run benchmark\n\nPlatform: %s. Medians of %d runs (range), wall time of each command from start to exit.\n\n", benchutil.Describe(), runs)
	fmt.Println("| what | median | range | vs runc run | vs vessel vm run | vs cold boot |")
	fmt.Println("|---|---|---|---|---|---|")
	med := func(r *row) float64 { return benchutil.Summarize(r.times).Median }
	for _, r := range rows {
		if len(r.times) == 0 {
			fmt.Printf("| %s | %s | | | | |\n", r.what, r.note)
			continue
		}
		s := benchutil.Summarize(r.times)
		fmt.Printf("| %s | %.0f ms | %.0f-%.0f ms | %s | %s | %s |\n", r.what, s.Median, s.Min, s.Max,
			ratio(s.Median, med(rows[runcRow])), ratio(s.Median, med(rows[vmRow])), ratio(s.Median, med(rows[coldRow])))
	}
	fmt.Println("\nGoals: from the template ≤ 0.25x the cold boot (issue 12); `vessel run --network none` ≤ 1.15x `vessel vm run` (issue 13).")
	if len(rows[0].times) > 0 && len(rows[2].times) > 0 {
		fmt.Printf("\nThe user network adds %.0f ms to a run from the template (medians; goal, issue 13: ≤ 300 ms).\n", med(rows[2])-med(rows[0]))
	}
	fmt.Println("\n### Where vessel run's time goes (`--metrics` steps, medians in ms)")
	fmt.Println()
	var orders [][]string
	for _, r := range rows[:3] {
		orders = append(orders, r.order)
	}
	names := stepOrder(orders)
	fmt.Print("| step |")
	for _, r := range rows[:3] {
		fmt.Printf(" %s |", r.what)
	}
	fmt.Print("\n|---|")
	for range rows[:3] {
		fmt.Print("---|")
	}
	fmt.Println()
	for _, n := range names {
		fmt.Printf("| %s |", n)
		for _, r := range rows[:3] {
			if xs := r.phases[n]; len(xs) > 0 {
				fmt.Printf(" %.0f |", benchutil.Summarize(xs).Median)
			} else {
				fmt.Print(" |")
			}
		}
		fmt.Println()
	}
	fmt.Println("\nSteps: setup (image, disks, network, jail), template (restoring it), vm (building or restoring the VM), agent (until the guest agent answers), create/start (runc in the guest), container (until it exited), teardown. " +
		"The create step's parts, as the guest agent timed them: mac (a clone's new MAC address), disks (waiting for the image and scratch disks), mounts (the image, the writable layer, the overlay), bundle (user, /etc files, volumes, config.json), runc (`runc create`); the rest of the step is the host's request and reply.")
	fmt.Printf("\n## Density: %d idle containers (`sleep`, --network none, -m %s)\n\n", densityN, densityMemory)
	fmt.Println("Sum of the PSS of every host process that serves them (each vessel process and its children: the jailed VMM with guest RAM).")
	fmt.Println()
	fmt.Println("| what | PSS, all | per container | vs cold boots |")
	fmt.Println("|---|---|---|---|")
	for _, d := range []struct {
		what string
		pss  float64
		err  error
	}{{"restored from one template", densTemplate, densTemplateErr}, {"cold-booted (--no-template)", densCold, densColdErr}} {
		if d.err != nil {
			fmt.Printf("| %s | unavailable: %v | | |\n", d.what, d.err)
			continue
		}
		fmt.Printf("| %s | %.1f MiB | %.1f MiB | %s |\n", d.what, d.pss, d.pss/densityN, ratio(d.pss, densCold))
	}
	fmt.Println("\nGoal (issue 12): from one template ≤ 0.5x the cold boots.")
	fmt.Print("\n## docker run: vessel-runtime against runc, one dockerd\n\n")
	if dockerErr != nil {
		fmt.Printf("unavailable: %v\n", dockerErr)
	} else {
		fmt.Println("| what | median | range | vs docker --runtime runc | vs vessel run --network none |")
		fmt.Println("|---|---|---|---|---|")
		for _, rt := range []string{"vessel", "runc"} {
			s := benchutil.Summarize(dockerTimes[rt])
			fmt.Printf("| docker run --rm --network none --runtime %s IMAGE true | %.0f ms | %.0f-%.0f ms | %s | %s |\n", rt, s.Median, s.Min, s.Max,
				ratio(s.Median, benchutil.Summarize(dockerTimes["runc"]).Median), ratio(s.Median, med(rows[0])))
		}
		fmt.Print("\nMemory of one idle container (`sleep`), PSS of every host process that serves it (the containerd shim, and the VMM process with guest RAM or runc's container process):\n\n")
		fmt.Println("| what | PSS | vs runc |")
		fmt.Println("|---|---|---|")
		fmt.Printf("| docker --runtime vessel: shim + VMM process | %.1f MiB | %s |\n", dockerPSS["vessel"], ratio(dockerPSS["vessel"], dockerPSS["runc"]))
		fmt.Printf("| docker --runtime runc: shim + container process | %.1f MiB | 1.00x |\n", dockerPSS["runc"])
		if memErr == nil {
			fmt.Printf("| vessel run -d (its vessel process and its children) | %.1f MiB | %s |\n", vmPSS, ratio(vmPSS, dockerPSS["runc"]))
		}
	}
	fmt.Println("\n## Memory of one running container (`sleep`)")
	fmt.Println()
	fmt.Println("| what | RSS | PSS |")
	fmt.Println("|---|---|---|")
	if memErr != nil {
		fmt.Printf("| vessel (its process tree: vessel, the jailed VMM with guest RAM) | unavailable: %v | |\n", memErr)
	} else {
		fmt.Printf("| vessel (its process tree: vessel, the jailed VMM with guest RAM) | %.1f MiB | %.1f MiB |\n", vmRSS, vmPSS)
	}
	if runcErr != nil {
		fmt.Printf("| runc container on the host | unavailable: %v | |\n", runcErr)
	} else {
		fmt.Printf("| runc container on the host: its process + the runc process waiting on it | %.1f + %.1f MiB | |\n", ctrRSS, runcRSS)
	}
	fmt.Println("\nTarget on a VT-x host: vessel run ≤ 300 ms end to end (Kata Containers: about 1 s). Absolute times on the nested test platform are 10-50x slower than hardware: compare the ratios.")
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// stepOrder merges the step names of several rows in the order first
// seen, each guest part ("step: part") right after its step and the
// parts of it seen before.
func stepOrder(orders [][]string) []string {
	var tops []string
	parts := map[string][]string{}
	seen := map[string]bool{}
	for _, o := range orders {
		for _, n := range o {
			if seen[n] {
				continue
			}
			seen[n] = true
			if top, _, ok := strings.Cut(n, ": "); ok {
				parts[top] = append(parts[top], n)
				continue
			}
			tops = append(tops, n)
		}
	}
	var out []string
	for _, t := range tops {
		out = append(append(out, t), parts[t]...)
	}
	return out
}

// phase is one step of `vessel run --metrics`, with the guest's own
// account of its parts.
type phase struct {
	Name  string  `json:"name"`
	MS    float64 `json:"ms"`
	Guest []phase `json:"guest,omitempty"`
}

// readPhases reads the steps from a `vessel run --metrics` file.
func readPhases(path string) ([]phase, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("vessel run --metrics: %w", err)
	}
	var m struct {
		Phases []phase `json:"phases"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("vessel run --metrics %s: %w", path, err)
	}
	// A step's parts in the guest follow it, as "step: part".
	var out []phase
	for _, p := range m.Phases {
		out = append(out, phase{Name: p.Name, MS: p.MS})
		for _, g := range p.Guest {
			out = append(out, phase{Name: p.Name + ": " + g.Name, MS: g.MS})
		}
	}
	return out, nil
}

func ratio(a, b float64) string {
	if b == 0 || b != b || a != a {
		return ""
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// cmd runs vessel with args and returns how long it took.
func (b *bench) cmd(args ...string) (time.Duration, error) {
	c := exec.Command(b.vessel, args...)
	c.Env = b.env
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	start := time.Now()
	err := c.Run()
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("vessel %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return d, nil
}

// runcBundle writes OCI bundles of img for the host's runc: its file
// system, once, and vessel's own configuration (container.Spec) with a
// network namespace of its own (on the host, unlike in vessel's VM) for
// `true` (the returned bundle) and for `sleep 600` (bundle-sleep).
func (b *bench) runcBundle(img v1.Image) (string, error) {
	if _, err := exec.LookPath(b.runc); err != nil {
		return "", fmt.Errorf("no runc on the host (make deps installs Debian's): %w", err)
	}
	rootfs := filepath.Join(b.work, "rootfs")
	if err := benchutil.ExtractImage(img, rootfs); err != nil {
		return "", err
	}
	for _, c := range []struct {
		dir  string
		args []string
	}{{"bundle", []string{"true"}}, {"bundle-sleep", []string{"sleep", "600"}}} {
		spec, _, err := container.Spec(bbimage.Config, container.Options{Args: c.args, Hostname: "bench"})
		if err != nil {
			return "", err
		}
		spec.Root = &specs.Root{Path: rootfs}
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
		js, err := json.Marshal(spec)
		if err != nil {
			return "", err
		}
		dir := filepath.Join(b.work, c.dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, "config.json"), js, 0o644); err != nil {
			return "", err
		}
	}
	return filepath.Join(b.work, "bundle"), nil
}

// runcMemory runs `sleep` with the host's runc in the foreground and
// measures the container's process and the runc process waiting on it
// (MiB), which together are what a container costs on the host.
func (b *bench) runcMemory(bundleErr error) (ctr, runcRSS float64, err error) {
	if bundleErr != nil {
		return 0, 0, bundleErr
	}
	root := filepath.Join(b.work, "runc")
	cmd := exec.Command(b.runc, "--root", root, "run", "--bundle", filepath.Join(b.work, "bundle-sleep"), "mem")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	defer func() {
		exec.Command(b.runc, "--root", root, "kill", "mem", "KILL").Run()
		cmd.Wait()
		exec.Command(b.runc, "--root", root, "delete", "-f", "mem").Run()
	}()
	pid := benchutil.RuncPid(context.Background(), b.runc, root, "mem", 20*time.Second)
	if pid == 0 {
		return 0, 0, fmt.Errorf("the runc container did not run: %s", benchutil.FirstLine(out.Bytes()))
	}
	time.Sleep(time.Second)
	if ctr, _, err = benchutil.ProcMemory(pid); err != nil {
		return 0, 0, err
	}
	runcRSS, _, err = benchutil.ProcMemory(cmd.Process.Pid)
	return ctr, runcRSS, err
}

// The density workload: how many idle containers, and their VMs' size.
const (
	densityN      = 8
	densityMemory = "256M"
)

// density starts n idle detached containers, restored from the
// template or (cold) booted, lets them settle, and sums the PSS of the
// process trees serving them (MiB).
func (b *bench) density(n int, cold bool) (float64, error) {
	kind := "t"
	if cold {
		kind = "c"
	}
	var names []string
	defer func() {
		for _, name := range names {
			b.cmd("rm", "-f", name)
		}
	}()
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("dens-%s%d", kind, i)
		args := []string{"run", "-d", "--name", name, "--network", "none", "-m", densityMemory}
		if cold {
			args = append(args, "--no-template")
		}
		if _, err := b.cmd(append(args, image, "sleep", "600")...); err != nil {
			return 0, err
		}
		names = append(names, name)
	}
	time.Sleep(3 * time.Second) // let the guests settle
	var sum float64
	for _, name := range names {
		st, err := container.Find(filepath.Join(b.work, "run", "vessel", "containers"), name)
		if err != nil {
			return 0, err
		}
		_, pss, err := benchutil.TreeMemory(st.Pid)
		if err != nil {
			return 0, err
		}
		sum += pss
	}
	return sum, nil
}

// vesselMemory starts a detached container and measures its vessel
// process and its children (the jailed VMM), in MiB.
func (b *bench) vesselMemory() (rss, pss float64, err error) {
	if _, err := b.cmd("run", "-d", "--name", "mem", "--network", "none", image, "sleep", "600"); err != nil {
		return 0, 0, err
	}
	defer b.cmd("rm", "-f", "mem")
	st, err := container.Find(filepath.Join(b.work, "run", "vessel", "containers"), "mem")
	if err != nil {
		return 0, 0, err
	}
	time.Sleep(2 * time.Second) // let the guest settle
	return benchutil.TreeMemory(st.Pid)
}
