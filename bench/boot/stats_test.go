package main

import (
	"math"
	"testing"
)

func TestSummarize(t *testing.T) {
	nan := math.NaN()
	for _, c := range []struct {
		in            []float64
		n             int
		med, min, max float64
	}{
		{[]float64{3}, 1, 3, 3, 3},
		{[]float64{5, 1, 3}, 3, 3, 1, 5},
		{[]float64{4, 1, 3, 2}, 4, 2.5, 1, 4},
		{[]float64{2, nan, 9, 1, nan}, 3, 2, 1, 9},
		{[]float64{7, 7, 7, 7}, 4, 7, 7, 7},
	} {
		s := Summarize(c.in)
		if s.N != c.n || s.Median != c.med || s.Min != c.min || s.Max != c.max {
			t.Errorf("Summarize(%v) = %+v, want n=%d median=%v min=%v max=%v", c.in, s, c.n, c.med, c.min, c.max)
		}
	}
	in := []float64{3, 1, 2}
	Summarize(in)
	if in[0] != 3 || in[1] != 1 {
		t.Error("Summarize reordered its input")
	}
	for _, empty := range [][]float64{nil, {nan}} {
		s := Summarize(empty)
		if s.N != 0 || !math.IsNaN(s.Median) || !math.IsNaN(s.Min) || !math.IsNaN(s.Max) {
			t.Errorf("Summarize(%v) = %+v, want N=0 and NaNs", empty, s)
		}
	}
}
