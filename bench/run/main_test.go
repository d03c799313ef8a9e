package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

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

func TestReadPhases(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, text string
		want       []phase
		err        bool
	}{
		{"ok", `{"restored": true, "phases": [{"name": "setup", "ms": 12.5}, {"name": "vm", "ms": 800}], "total_ms": 900}`,
			[]phase{{"setup", 12.5}, {"vm", 800}}, false},
		{"none", `{"restored": false, "total_ms": 1}`, nil, false},
		{"garbage", `{"phases": [`, nil, true},
	} {
		p := filepath.Join(dir, tc.name)
		if err := os.WriteFile(p, []byte(tc.text), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := readPhases(p)
		if (err != nil) != tc.err || !slices.Equal(got, tc.want) {
			t.Errorf("%s: readPhases = %v, %v; want %v, error %v", tc.name, got, err, tc.want, tc.err)
		}
	}
	if _, err := readPhases(filepath.Join(dir, "absent")); err == nil {
		t.Error("a missing file read without error")
	}
}
