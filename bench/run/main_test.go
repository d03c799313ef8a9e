package main

import "testing"

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
