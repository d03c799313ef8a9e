package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

// The key is the first 20 hex digits of the SHA-256 of exactly these
// bytes, as vessel has always hashed them: a change would orphan every
// cached template (a new key builds a new one; the old stays on disk).
func TestTemplateKeyBytes(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "bzImage"), filepath.Join(dir, "initrd")
	mtime := time.Unix(1700000000, 123456789)
	for i, p := range []string{kernel, initrd} {
		if err := os.WriteFile(p, make([]byte, 10+i), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("vessel %s template %d\ncpus %d memory %d user %v\ncmdline %s\n",
		version(), 1, 2, uint64(768<<20), true, DefaultCmdline)
	for _, p := range []string{self, kernel, initrd} {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		want += fmt.Sprintf("%s %d %d %d %d\n", p, st.Size, time.Unix(st.Mtim.Unix()).UnixNano(), st.Ino, st.Dev)
	}
	sum := sha256.Sum256([]byte(want))
	got, err := templateSpec{kernel: kernel, initrd: initrd, cpus: 2, memory: 768 << 20, user: true}.key()
	if err != nil {
		t.Fatal(err)
	}
	if w := hex.EncodeToString(sum[:])[:20]; got != w {
		t.Errorf("key %s, want %s: the sha256 of\n%s", got, w, want)
	}
}

// A templates directory others can write is refused (template.For's
// tests have the rest): a run in one boots.
func TestTemplateDirPrivate(t *testing.T) {
	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o777)
	t.Setenv("VESSEL_TEMPLATE_DIR", open)
	if _, err := templateFor(templateSpec{kernel: "/proc/self/exe", initrd: "/proc/self/exe"}); err == nil || !strings.Contains(err.Error(), "writable by other users") {
		t.Errorf("templateFor in a world-writable directory: %v", err)
	}
	if ents, _ := os.ReadDir(open); len(ents) != 0 {
		t.Errorf("templateFor wrote into a world-writable directory: %v", ents)
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

// A template build that hangs is killed at its limit, and one that fails
// says why in one line: the run then boots. (A vessel waiting for
// another's build gives up after its wait: template.For's tests.)
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
}
