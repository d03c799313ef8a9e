// Command vessel-bench runs vessel's experiments; `vessel bench` runs it.
// It is a binary of its own so that its charting libraries stay out of
// the VMM's.
//
//	vessel-bench compare [--envs host,runc,vessel] [--workloads cpu,...] [--repeat N] [--out DIR] [--sizes full|small|tiny] [--print-json]
//	vessel-bench render --out DIR RESULTS
//
// Exit statuses: 0 done; 1 the comparison failed; 2 bad usage; 130
// interrupted (Ctrl-C), with the report of what ran written.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/vesselvm/vessel/bench/compare"
)

func main() {
	switch {
	case len(os.Args) >= 2 && os.Args[1] == "compare":
		os.Exit(compareCmd(os.Args[2:]))
	case len(os.Args) == 5 && os.Args[1] == "render" && os.Args[2] == "--out":
		os.Exit(renderCmd(os.Args[4], os.Args[3]))
	}
	fmt.Fprintln(os.Stderr, "usage: vessel bench compare [flags] (--help for them), or vessel bench render --out DIR RESULTS (a results.json or a log of compare --print-json)")
	os.Exit(2)
}

// nextToSelf is a binary installed beside this one, or name on $PATH.
func nextToSelf(name string) string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return name
}

func compareCmd(args []string) int {
	fs := flag.NewFlagSet("vessel bench compare", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: vessel bench compare [flags]

Runs the same workloads on the host, in a runc container and in a vessel
microVM container, side by side in one run, and writes a report to --out:
report.md (tables with medians, ranges and ratios to the host, and the
isolation probes), results.json, and a bar chart per workload in charts/
(SVG and PNG). Ctrl-C stops and writes the report of what ran.

Workloads: %s.
Environments: %s.

Flags:
`, strings.Join(compare.WorkloadNames(), ", "), strings.Join(compare.EnvNames(), ", "))
		fs.PrintDefaults()
	}
	envs := fs.String("envs", strings.Join(compare.EnvNames(), ","), "environments, comma-separated")
	wls := fs.String("workloads", strings.Join(compare.WorkloadNames(), ","), "workloads, comma-separated")
	repeat := fs.Int("repeat", 3, "runs of each workload in each environment")
	out := fs.String("out", "bench-compare-"+time.Now().Format("20060102-150405"), "the report's directory")
	profile := fs.String("sizes", "full", "workload sizes: full (hardware), small (emulated platforms such as testvm's), tiny (tests)")
	workload := fs.String("workload-bin", nextToSelf("vessel-workload"), "the workload binary")
	vessel := fs.String("vessel", nextToSelf("vessel"), "the vessel binary")
	runc := fs.String("runc", "runc", "the host's runc")
	printJSON := fs.Bool("print-json", false, "also print the results to stdout, for vessel bench render (the test platform's files do not outlive it)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "vessel bench compare: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o := compare.Options{
		Envs: split(*envs), Workloads: split(*wls), Repeat: *repeat, Out: *out, Sizes: *profile,
		Workload: *workload, Vessel: *vessel, Runc: *runc,
		Progress: os.Stderr, Terminal: term.IsTerminal(int(os.Stderr.Fd())),
	}
	rep, err := compare.Run(ctx, o)
	if rep != nil && *printJSON {
		compare.PrintJSON(rep, os.Stdout)
	}
	switch {
	case errors.Is(err, compare.ErrInterrupted):
		fmt.Fprintf(os.Stderr, "vessel bench compare: interrupted; the report of what ran is in %s\n", *out)
		return 130
	case err != nil:
		fmt.Fprintf(os.Stderr, "vessel bench compare: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "vessel bench compare: report in %s\n", filepath.Join(*out, "report.md"))
	return 0
}

// renderCmd writes the report of saved results.
func renderCmd(results, out string) int {
	rep, err := compare.ReadJSON(results)
	if err == nil {
		err = compare.Write(rep, out)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vessel bench render: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "vessel bench render: report in %s\n", filepath.Join(out, "report.md"))
	return 0
}

func split(s string) []string {
	var l []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			l = append(l, f)
		}
	}
	return l
}
