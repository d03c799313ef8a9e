package main

import (
	"os"
	"testing"
)

func TestProcMemory(t *testing.T) {
	rss, pss, err := procMemory(os.Getpid())
	if err != nil || rss <= 0 || pss <= 0 || pss > rss {
		t.Errorf("procMemory(self) = %v, %v, %v: want 0 < PSS <= RSS", rss, pss, err)
	}
	if _, _, err := procMemory(-1); err == nil {
		t.Error("procMemory of no process succeeded")
	}
}

func TestRatio(t *testing.T) {
	nan := func() float64 { var z float64; return z / z }()
	for _, tc := range []struct {
		a, b float64
		want string
	}{{10, 5, "2.00x"}, {1, 0, ""}, {nan, 1, ""}, {1, nan, ""}} {
		if got := ratio(tc.a, tc.b); got != tc.want {
			t.Errorf("ratio(%v, %v) = %q, want %q", tc.a, tc.b, got, tc.want)
		}
	}
}
