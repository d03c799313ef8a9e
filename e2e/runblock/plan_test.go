package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestParsePlan(t *testing.T) {
	good := "# comment\n\nmain 25m -test.skip ^(A|B)$\n  disk 12m -test.run ^TestDisk$ -test.count 1\nbare 2m\n"
	bs, err := parsePlan(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	want := []block{
		{"main", 25 * time.Minute, []string{"-test.skip", "^(A|B)$"}},
		{"disk", 12 * time.Minute, []string{"-test.run", "^TestDisk$", "-test.count", "1"}},
		{"bare", 2 * time.Minute, []string{}},
	}
	if len(bs) != len(want) {
		t.Fatalf("got %+v", bs)
	}
	for i := range want {
		if bs[i].Name != want[i].Name || bs[i].Timeout != want[i].Timeout || strings.Join(bs[i].Flags, " ") != strings.Join(want[i].Flags, " ") {
			t.Errorf("block %d: got %+v, want %+v", i, bs[i], want[i])
		}
	}
	for _, bad := range []string{"", "# only\n", "main\n", "main soon\n", "main 30s\n", "a 5m\na 6m\n", "../x 5m\n"} {
		if _, err := parsePlan(strings.NewReader(bad)); err == nil {
			t.Errorf("parsePlan(%q) accepted", bad)
		}
	}
}

// TestPlanFile: the plan make test-e2e runs parses, and every block
// selects tests.
func TestPlanFile(t *testing.T) {
	f, err := os.Open("../blocks")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bs, err := parsePlan(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bs {
		if len(b.Flags) != 2 || (b.Flags[0] != "-test.run" && b.Flags[0] != "-test.skip") {
			t.Errorf("block %s: flags %q", b.Name, b.Flags)
		}
	}
}

// TestRetriedRE: the retries a block's log can record, and lines that
// only look like them.
func TestRetriedRE(t *testing.T) {
	for _, c := range []struct {
		log  string
		want bool
	}{
		{"x\nRETRY: TestA failed on the emulated nested platform's known faults; running it once more\n", true},
		{"    diskstress_test.go:107: RETRY: guest triple fault on the emulated nested platform; retrying once:\n", true},
		{"testvm: outer kernel crashed (the outer VM's init showed no sign of life for 2m0s); retrying once\n", true},
		{"=== RUN   TestRetryArgs\n--- PASS: TestRetryArgs (0.00s)\n", false},
		{"    x_test.go:9: no RETRY: here, retrying once more later\n", false},
	} {
		if got := retriedRE.MatchString(c.log); got != c.want {
			t.Errorf("retriedRE.MatchString(%q) = %v, want %v", c.log, got, c.want)
		}
	}
}

func TestAutoLanes(t *testing.T) {
	const gib = 1 << 30
	for _, c := range []struct {
		cpus int
		mem  uint64
		want int
	}{
		{1, 64 * gib, 1}, {2, 24 * gib, 2}, {2, 8 * gib, 1}, {16, 64 * gib, 3}, {4, 13 * gib, 2}, {4, 0, 1},
	} {
		if got := autoLanes(c.cpus, c.mem); got != c.want {
			t.Errorf("autoLanes(%d, %d GiB) = %d, want %d", c.cpus, c.mem/gib, got, c.want)
		}
	}
}

// TestRunPlan: blocks run lanes at a time, in the plan's order; every
// block runs though one failed; the failed one's summary is printed at
// the end, and a block whose log shows a retry says so.
func TestRunPlan(t *testing.T) {
	dir := t.TempDir()
	bs := []block{{Name: "a"}, {Name: "b"}, {Name: "c"}, {Name: "d"}}
	var running, most atomic.Int32
	var mu sync.Mutex
	var order []string
	var out bytes.Buffer
	res := runPlan(&out, bs, 2, dir, func(b block, log, summary string) int {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		mu.Lock()
		order = append(order, b.Name)
		mu.Unlock()
		time.Sleep(50 * time.Millisecond)
		text := "=== RUN   TestX\n--- PASS: TestX (0.01s)\n"
		code := 0
		switch b.Name {
		case "b":
			text += "RETRY: TestX failed on the emulated nested platform's known faults\n"
		case "d":
			text = "    disk_test.go:107: I/O done\n" + text
		case "c":
			code = 1
			os.WriteFile(summary, []byte("==== e2e block failed (exit status 1): TestY\n"), 0o644)
		}
		os.WriteFile(log, []byte(text), 0o644)
		return code
	})
	if most.Load() != 2 {
		t.Errorf("%d blocks at once, want 2", most.Load())
	}
	if strings.Join(order[:2], "") != "ab" && strings.Join(order[:2], "") != "ba" {
		t.Errorf("start order %v", order)
	}
	for i, r := range res {
		if r.Name != bs[i].Name || (r.code != 0) != (r.Name == "c") || r.retried != (r.Name == "b") {
			t.Errorf("result %d: %+v", i, r)
		}
	}
	s := out.String()
	for _, want := range []string{
		"== e2e block a: started (log: " + filepath.Join(dir, "e2e-a.log") + ")",
		"== e2e block a: passed in ",
		"== e2e block b: passed after a retry of the platform's known faults in ",
		"== e2e block c: FAILED (exit status 1) in ",
		"== e2e block d: passed in ",
		"==== e2e block failed (exit status 1): TestY\ntest-e2e: failed blocks: c (their whole logs: " + filepath.Join(dir, "e2e-<block>.log") + ")\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
}
