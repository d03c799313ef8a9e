package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A template's key changes with every input the restored VM depends on,
// and only with them.
func TestTemplateKey(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "bzImage"), filepath.Join(dir, "initrd")
	for _, p := range []string{kernel, initrd} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := templateSpec{kernel: kernel, initrd: initrd, cpus: 1, memory: 512 << 20, user: true}
	key := func(s templateSpec) string {
		t.Helper()
		k, err := s.key()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k0 := key(base)
	if key(base) != k0 {
		t.Fatal("the key of one spec changed")
	}
	seen := map[string]string{k0: "base"}
	for name, s := range map[string]templateSpec{
		"cpus":    {kernel: kernel, initrd: initrd, cpus: 2, memory: 512 << 20, user: true},
		"memory":  {kernel: kernel, initrd: initrd, cpus: 1, memory: 256 << 20, user: true},
		"network": {kernel: kernel, initrd: initrd, cpus: 1, memory: 512 << 20, user: false},
	} {
		k := key(s)
		if other, ok := seen[k]; ok {
			t.Errorf("%s: same key as %s", name, other)
		}
		seen[k] = name
	}
	// A rebuilt kernel (new contents, new time) is another template.
	later := time.Now().Add(time.Hour)
	if err := os.WriteFile(kernel, []byte("xy"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(kernel, later, later)
	if key(base) == k0 {
		t.Error("a rebuilt kernel kept the key")
	}
	if _, err := (templateSpec{kernel: filepath.Join(dir, "missing"), initrd: initrd}).key(); err == nil {
		t.Error("a missing kernel has a key")
	}
}

// A templates directory others can write, or a symbolic link, is
// refused: templateFor then fails and the run boots.
func TestTemplateDirPrivate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.Mkdir(good, 0o700)
	open := filepath.Join(dir, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o777)
	link := filepath.Join(dir, "link")
	os.Symlink(good, link)
	if err := privateDir(good); err != nil {
		t.Errorf("private directory refused: %v", err)
	}
	for _, d := range []string{open, link} {
		if err := privateDir(d); err == nil {
			t.Errorf("%s accepted", d)
		}
	}
	t.Setenv("VESSEL_TEMPLATE_DIR", open)
	if _, err := templateFor(templateSpec{kernel: "/proc/self/exe", initrd: "/proc/self/exe"}); err == nil {
		t.Error("templateFor used a world-writable directory")
	}
}

func TestRunPhases(t *testing.T) {
	r := newRunPhases()
	r.mark("setup")
	r.restored = true
	r.mark("vm")
	var nilPhases *runPhases
	nilPhases.mark("ignored") // a run without --metrics
	path := filepath.Join(t.TempDir(), "m.json")
	if err := r.write(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	for _, want := range []string{`"restored": true`, `"name": "setup"`, `"name": "vm"`, `"total_ms"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics %s lack %s", b, want)
		}
	}
}

// A template build that hangs is killed at its limit, one that fails
// says why in one line, and a vessel waiting for another's build gives
// up after its wait: the run then boots.
func TestTemplateBuildBounded(t *testing.T) {
	dir := t.TempDir()
	script := func(body string) string {
		p := filepath.Join(dir, fmt.Sprintf("builder%d", len(body)))
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	defer func(b func() (string, error)) { templateBuilder = b }(templateBuilder)
	for _, tc := range []struct{ body, want string }{
		{"exec sleep 30", "took over"},
		{"echo 'vessel: the template VM ended: boom' >&2; exit 125", "the template VM ended: boom"},
	} {
		p := script(tc.body)
		templateBuilder = func() (string, error) { return p, nil }
		start := time.Now()
		err := buildTemplateProcess(templateSpec{}, dir, 300*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line with %q", tc.body, err, tc.want)
		}
		if time.Since(start) > 10*time.Second {
			t.Errorf("%q: took %v", tc.body, time.Since(start))
		}
	}

	held, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := lockWithin(held, time.Second); err != nil {
		t.Fatal(err)
	}
	other, err := os.Open(filepath.Join(dir, "lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := lockWithin(other, 300*time.Millisecond); err == nil || !strings.Contains(err.Error(), "building this template") {
		t.Errorf("a held lock: %v, want the wait to end", err)
	}
}
