package main

import (
	"strings"
	"testing"
)

const passLog = `testvm: platform: nested KVM in QEMU TCG (-cpu max), outer kernel k (no /dev/kvm)
=== RUN   TestA
--- PASS: TestA (1.00s)
PASS
`

const failLog = `testvm: platform: nested KVM in QEMU TCG (-cpu max), outer kernel k (no /dev/kvm)
=== RUN   TestA
--- PASS: TestA (1.00s)
=== RUN   TestRuntime
=== RUN   TestRuntime/netns
testvm: outer kernel: [ 8.0] kvm [67]: vcpu0, guest rIP: 0xffffffff8100311e Unhandled WRMSR(0xc0010007) = 0xffff
    runtime_test.go:781: the container did not reach the host (log: vCPU 0 shut down (triple fault))
=== RUN   TestRuntime/pause
--- FAIL: TestRuntime (170.00s)
    --- FAIL: TestRuntime/netns (150.00s)
    --- PASS: TestRuntime/pause (20.00s)
=== RUN   TestB
    b_test.go:10: wrong answer
--- FAIL: TestB (2.00s)
=== RUN   TestC
--- SKIP: TestC (0.00s)
=== RUN   TestD
    d_test.go:5: booting
`

// TestFailures: the failed top-level tests of a -test.v log, with their
// lines, and the one still running at the end.
func TestFailures(t *testing.T) {
	if fs := failures([]byte(passLog)); len(fs) != 0 {
		t.Errorf("a passing log: %+v", fs)
	}
	fs := failures([]byte(failLog))
	var names []string
	for _, f := range fs {
		names = append(names, f.Name)
	}
	if strings.Join(names, " ") != "TestRuntime TestB TestD" {
		t.Fatalf("failures: %v, want TestRuntime TestB TestD", names)
	}
	if !fs[0].Finished || !fs[1].Finished || fs[2].Finished {
		t.Errorf("finished: %v %v %v, want true true false", fs[0].Finished, fs[1].Finished, fs[2].Finished)
	}
	s := summary(fs, 1)
	for _, want := range []string{"runtime_test.go:781: the container did not reach", "b_test.go:10: wrong answer",
		"== TestD (still running when the block ended)", "d_test.go:5: booting", "--- FAIL: TestRuntime/netns"} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "WRMSR") || strings.Contains(s, "TestA") {
		t.Errorf("summary has the platform's noise or a passed test:\n%s", s)
	}
}

// TestAllFlaky: only failures that all show a guest triple fault, on the
// emulated platform, are retried.
func TestAllFlaky(t *testing.T) {
	fs := failures([]byte(failLog))
	for _, tc := range []struct {
		name string
		log  string
		fs   []failure
		want bool
	}{
		{"triple fault", failLog, fs[:1], true},
		{"another failure too", failLog, fs[:2], false},
		{"unfinished", failLog, fs[2:], false},
		{"not emulated", strings.Replace(failLog, "QEMU TCG", "", 1), fs[:1], false},
	} {
		if got := allFlaky([]byte(tc.log), tc.fs); got != tc.want {
			t.Errorf("%s: allFlaky = %v, want %v", tc.name, got, tc.want)
		}
	}
}
