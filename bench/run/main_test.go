package main

import (
	"os"
	"path/filepath"
	"reflect"
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
			[]phase{{Name: "setup", MS: 12.5}, {Name: "vm", MS: 800}}, false},
		{"guest", `{"phases": [{"name": "create", "ms": 900, "guest": [{"name": "disks", "ms": 5}, {"name": "runc", "ms": 700}]}, {"name": "start", "ms": 50}]}`,
			[]phase{{Name: "create", MS: 900}, {Name: "create: disks", MS: 5}, {Name: "create: runc", MS: 700}, {Name: "start", MS: 50}}, false},
		{"none", `{"restored": false, "total_ms": 1}`, nil, false},
		{"garbage", `{"phases": [`, nil, true},
	} {
		p := filepath.Join(dir, tc.name)
		if err := os.WriteFile(p, []byte(tc.text), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := readPhases(p)
		if (err != nil) != tc.err || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: readPhases = %v, %v; want %v, error %v", tc.name, got, err, tc.want, tc.err)
		}
	}
	if _, err := readPhases(filepath.Join(dir, "absent")); err == nil {
		t.Error("a missing file read without error")
	}
}

func TestStepOrder(t *testing.T) {
	got := stepOrder([][]string{
		{"setup", "vm", "create", "create: disks", "create: runc", "start"},
		{"setup", "template", "vm", "create", "create: mac", "create: disks", "create: runc", "start"},
	})
	want := []string{"setup", "vm", "create", "create: disks", "create: runc", "create: mac", "start", "template"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stepOrder = %q, want %q", got, want)
	}
}
