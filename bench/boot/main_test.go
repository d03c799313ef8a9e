package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestBadFlags(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(k, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := []string{"--kernel", k, "--initrd", k}
	for _, args := range [][]string{
		{"--bogus"},
		{"--runs", "0"},
		{"--runs", "x"},
		{"--timeout", "-1s"},
		{"--vmms", "vessel,firecracker"},
		{"--vmms", "qemu,qemu"},
		{"--memory", "16"},
		{"extra-arg"},
		{"--kernel", filepath.Join(dir, "missing")},
		{"--extract-json", "r.md"},
	} {
		var out, errb bytes.Buffer
		code := run(append(append([]string{}, ok...), args...), &out, &errb)
		msg := errb.String()
		if code != 2 || strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "benchboot: ") || out.Len() != 0 {
			t.Errorf("run(%q) = %d, stderr %q, stdout %q; want 2 and one line", args, code, msg, out.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"-h"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "--runs") && !strings.Contains(out.String(), "-runs") {
		t.Errorf("-h: %d %q", code, out.String())
	}
}

func TestShellQuote(t *testing.T) {
	got := shellQuote([]string{"gokvm", "-p", "a b", "it's", "x=y,z"})
	if want := `gokvm -p 'a b' 'it'\''s' x=y,z`; got != want {
		t.Errorf("shellQuote = %s, want %s", got, want)
	}
}

func TestAutoVMMs(t *testing.T) {
	all := []string{nameVessel, nameGokvm, nameQEMU}
	if got, note := autoVMMs(all, "direct hardware KVM (kvm_intel)"); !slices.Equal(got, all) || note != "" {
		t.Errorf("on hardware: %v, %q", got, note)
	}
	got, note := autoVMMs(all, "nested KVM (kvm_amd) in QEMU TCG software emulation")
	if !slices.Equal(got, []string{nameVessel, nameQEMU}) || !strings.Contains(note, "gokvm left out") {
		t.Errorf("under TCG: %v, %q", got, note)
	}
	c, err := parseFlags([]string{"--kernel", "main_test.go", "--initrd", "main_test.go"}, io.Discard)
	if err != nil || !c.AutoVMMs || len(c.VMMs) != 3 {
		t.Errorf("default flags: %+v, %v", c, err)
	}
	c, err = parseFlags([]string{"--vmms", "gokvm", "--kernel", "main_test.go", "--initrd", "main_test.go"}, io.Discard)
	if err != nil || c.AutoVMMs || !slices.Equal(c.VMMs, []string{nameGokvm}) {
		t.Errorf("--vmms gokvm: %+v, %v", c, err)
	}
}

// TestRotate checks that over two cycles every VMM leads equally often
// and follows each other VMM equally often, and that each round runs
// every VMM once.
func TestRotate(t *testing.T) {
	specs := []string{"v", "g", "q"}
	want := []string{"v g q", "g q v", "q v g", "q g v", "v q g", "g v q", "v g q"}
	follows := map[string]int{}
	for i, w := range want {
		got := rotate(specs, i)
		if s := strings.Join(got, " "); s != w {
			t.Errorf("round %d: %s, want %s", i, s, w)
		}
		if i < 6 {
			for k := 1; k < len(got); k++ {
				follows[got[k-1]+got[k]]++
			}
		}
	}
	for pair, n := range follows {
		if n != 2 {
			t.Errorf("%s followed %s %d times in two cycles, want 2", pair[1:], pair[:1], n)
		}
	}
	if len(follows) != 6 {
		t.Errorf("ordered pairs %v, want all 6", follows)
	}
	if got := strings.Join(specs, " "); got != "v g q" {
		t.Errorf("rotate changed its argument: %s", got)
	}
	if got := rotate([]string(nil), 4); len(got) != 0 {
		t.Errorf("no VMMs: %v", got)
	}
}
