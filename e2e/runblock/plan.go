package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A block is one line of a plan: the end-to-end tests that run in one
// outer VM, within its time limit.
type block struct {
	Name    string
	Timeout time.Duration
	Flags   []string // go test flags (-test.run or -test.skip)
}

// parsePlan reads a plan: a block a line, "NAME TIMEOUT FLAG...", its
// fields split at spaces (a flag holds none); blank lines and lines
// starting with # are comments.
func parsePlan(r io.Reader) ([]block, error) {
	var bs []block
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("line %d: want NAME TIMEOUT FLAG..., got %q", n, line)
		}
		d, err := time.ParseDuration(f[1])
		if err != nil || d <= time.Minute {
			return nil, fmt.Errorf("line %d: block %s: the time limit must be a duration of more than a minute, not %q", n, f[0], f[1])
		}
		if seen[f[0]] || strings.ContainsAny(f[0], "/.") {
			return nil, fmt.Errorf("line %d: block name %q is repeated or not a plain name", n, f[0])
		}
		seen[f[0]] = true
		bs = append(bs, block{Name: f[0], Timeout: d, Flags: f[2:]})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(bs) == 0 {
		return nil, fmt.Errorf("no blocks")
	}
	return bs, nil
}

// autoLanes is how many blocks run at once when -lanes is 0: one per CPU
// of the host and per 6 GiB of its memory (an outer VM has 2 vCPUs and
// 4 GiB), at least one and at most three (the longest block takes about
// as long as the others together on two lanes, so a fourth lane would
// wait on it). On the emulated platform two outer VMs at once on a 2-CPU
// host took each block about 1.35x its time alone (2026-12-07): QEMU's
// emulation of an outer VM keeps a CPU busy only part of the time.
func autoLanes(cpus int, mem uint64) int {
	return max(1, min(cpus, int(mem/(6<<30)), 3))
}

// hostMemory is the host's RAM in bytes (sysinfo(2); 0 if unknown).
func hostMemory() uint64 {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return 0
	}
	return si.Totalram * uint64(si.Unit)
}

// blockFiles are where block name's log and summary go in logDir.
func blockFiles(logDir, name string) (log, summary string) {
	return filepath.Join(logDir, "e2e-"+name+".log"), filepath.Join(logDir, "e2e-"+name+".summary")
}

// retriedRE matches a block log's record of a retry of the platform's
// known faults: runblock's own RETRY line, a test's retry inside the
// block (t.Logf's "x_test.go:N: RETRY: ..."), or testvm's outer VM run
// once more ("...; retrying once").
var retriedRE = regexp.MustCompile(`(?m)^RETRY: |_test\.go:\d+: RETRY: |; retrying once$`)

// blockResult is how one block of a plan ended.
type blockResult struct {
	block
	code    int
	elapsed time.Duration
	retried bool // its log shows a retry of the platform's known faults
}

// runPlan runs the plan's blocks, lanes of them at once, in the plan's
// order (a lane takes the next block when its last one ends), each
// through run (which runs it as a block of its own, its output in its
// log). It prints a line as each block starts and ends, and the failed
// blocks' summaries at the end, to w.
func runPlan(w io.Writer, bs []block, lanes int, logDir string, run func(b block, log, summary string) int) []blockResult {
	var mu sync.Mutex
	res := make([]blockResult, len(bs))
	next := 0
	var wg sync.WaitGroup
	for range min(lanes, len(bs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				if i >= len(bs) {
					mu.Unlock()
					return
				}
				b := bs[i]
				log, sum := blockFiles(logDir, b.Name)
				fmt.Fprintf(w, "== e2e block %s: started (log: %s)\n", b.Name, log)
				mu.Unlock()
				os.Remove(sum) // an earlier run's
				start := time.Now()
				code := run(b, log, sum)
				r := blockResult{block: b, code: code, elapsed: time.Since(start).Round(time.Second)}
				if out, err := os.ReadFile(log); err == nil {
					r.retried = retriedRE.Match(out)
				}
				res[i] = r
				verdict := "passed"
				if code != 0 {
					verdict = fmt.Sprintf("FAILED (exit status %d)", code)
				}
				if r.retried {
					verdict += " after a retry of the platform's known faults"
				}
				mu.Lock()
				fmt.Fprintf(w, "== e2e block %s: %s in %v\n", b.Name, verdict, r.elapsed)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	var failed []string
	for _, r := range res {
		if r.code == 0 {
			continue
		}
		failed = append(failed, r.Name)
		_, sum := blockFiles(logDir, r.Name)
		if s, err := os.ReadFile(sum); err == nil {
			fmt.Fprintf(w, "%s", s)
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(w, "test-e2e: failed blocks: %s (their whole logs: %s)\n", strings.Join(failed, " "), filepath.Join(logDir, "e2e-<block>.log"))
	}
	return res
}

// planMain runs a plan (the -plan flag): each block by this program
// itself, as a single block.
func planMain(planPath string, lanes int, logDir, testvm, e2e string) int {
	f, err := os.Open(planPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "runblock: %v\n", err)
		return 2
	}
	bs, err := parsePlan(f)
	f.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "runblock: plan %s: %v\n", planPath, err)
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "runblock: %v\n", err)
		return 2
	}
	if lanes == 0 {
		lanes = autoLanes(runtime.NumCPU(), hostMemory())
	}
	fmt.Printf("runblock: %d blocks, %d at a time\n", len(bs), lanes)
	start := time.Now()
	res := runPlan(os.Stdout, bs, lanes, logDir, func(b block, log, summary string) int {
		args := append([]string{"-testvm", testvm, "-e2e", e2e, "-timeout", b.Timeout.String(), "-log", log, "-summary", summary, "--"}, b.Flags...)
		cmd := exec.Command(self, args...)
		// The block's whole output is in its log.
		cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
		if err := cmd.Run(); err != nil && cmd.ProcessState == nil {
			fmt.Fprintf(os.Stderr, "runblock: block %s: %v\n", b.Name, err)
			return 125
		}
		return cmd.ProcessState.ExitCode()
	})
	fmt.Printf("runblock: the blocks ran for %v\n", time.Since(start).Round(time.Second))
	for _, r := range res {
		if r.code != 0 {
			return 1
		}
	}
	return 0
}
