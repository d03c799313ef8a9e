package main

import (
	"bytes"
	"os"
	"path/filepath"
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
