package main

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// readNewc is an independent newc reader used to check the writer.
type cpioEntry struct {
	name         string
	mode         uint32
	major, minor uint32
	data         []byte
}

func readNewc(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	field := func(hdr []byte, i int) uint32 {
		v, err := strconv.ParseUint(string(hdr[6+8*i:6+8*i+8]), 16, 32)
		if err != nil {
			t.Fatalf("bad header field %d: %v", i, err)
		}
		return uint32(v)
	}
	for {
		if off%4 != 0 {
			t.Fatalf("header at unaligned offset %d", off)
		}
		if off+110 > len(b) {
			t.Fatalf("truncated archive at %d", off)
		}
		hdr := b[off : off+110]
		if string(hdr[:6]) != "070701" {
			t.Fatalf("bad magic %q at %d", hdr[:6], off)
		}
		mode, size := field(hdr, 1), int(field(hdr, 6))
		major, minor := field(hdr, 9), field(hdr, 10)
		nameLen := int(field(hdr, 11))
		name := string(b[off+110 : off+110+nameLen-1])
		if b[off+110+nameLen-1] != 0 {
			t.Fatalf("name %q not NUL-terminated", name)
		}
		off += 110 + nameLen
		off = (off + 3) &^ 3
		data := b[off : off+size]
		off += size
		off = (off + 3) &^ 3
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, cpioEntry{name, mode, major, minor, data})
	}
}

func writeTestArchive(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	c := newCpioWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Dir("dev", 0o755))
	must(c.CharDev("dev/console", 0o600, 5, 1))
	must(c.File("/init", 0o755, 5, strings.NewReader("hello")))
	must(c.File("a/b", 0o644, 0, strings.NewReader("")))
	must(c.Symlink("lnk", "init"))
	must(c.File("seven", 0o600, 7, strings.NewReader("1234567 and more that is not read")))
	must(c.Close())
	return buf.Bytes()
}

func TestCpioWriterFormat(t *testing.T) {
	ents := readNewc(t, writeTestArchive(t))
	want := []struct {
		name string
		mode uint32
		data string
	}{
		{"dev", 0o040755, ""},
		{"dev/console", 0o020600, ""},
		{"init", 0o100755, "hello"},
		{"a/b", 0o100644, ""},
		{"lnk", 0o120777, "init"},
		{"seven", 0o100600, "1234567"},
	}
	if len(ents) != len(want) {
		t.Fatalf("got %d entries, want %d", len(ents), len(want))
	}
	for i, w := range want {
		e := ents[i]
		if e.name != w.name || e.mode != w.mode || string(e.data) != w.data {
			t.Errorf("entry %d = %q %o %q, want %q %o %q", i, e.name, e.mode, e.data, w.name, w.mode, w.data)
		}
	}
	if ents[1].major != 5 || ents[1].minor != 1 {
		t.Errorf("dev/console is %d:%d, want 5:1", ents[1].major, ents[1].minor)
	}
}

func TestCpioWriterErrors(t *testing.T) {
	c := newCpioWriter(io.Discard)
	if err := c.File("short", 0o644, 10, strings.NewReader("abc")); err == nil {
		t.Error("short file data accepted")
	}
	if err := c.Dir("/", 0o755); err == nil {
		t.Error("empty name accepted")
	}
}

// TestCpioTool checks the archive with GNU cpio, the reference reader.
func TestCpioTool(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio tool not installed")
	}
	arch := writeTestArchive(t)
	cmd := exec.Command("cpio", "-t")
	cmd.Stdin = bytes.NewReader(arch)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	for _, n := range []string{"dev", "dev/console", "init", "a/b", "lnk", "seven"} {
		if !strings.Contains("\n"+string(out), "\n"+n+"\n") {
			t.Errorf("cpio -t does not list %s:\n%s", n, out)
		}
	}
	// Extract the regular files and compare.
	dir := t.TempDir()
	cmd = exec.Command("cpio", "-i", "-d", "--quiet", "init", "seven", "lnk")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(arch)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	for name, want := range map[string]string{"init": "hello", "seven": "1234567"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	if l, err := os.Readlink(filepath.Join(dir, "lnk")); err != nil || l != "init" {
		t.Errorf("lnk -> %q, %v", l, err)
	}
}

func TestInitramfs(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "exe")
	if err := os.WriteFile(exe, []byte("\x7fELF fake"), 0o755); err != nil {
		t.Fatal(err)
	}
	sp := []byte(`{"argv":["true"]}`)
	var buf bytes.Buffer
	if err := writeInitramfs(&buf, exe, sp); err != nil {
		t.Fatal(err)
	}
	got := map[string]cpioEntry{}
	for _, e := range readNewc(t, buf.Bytes()) {
		got[e.name] = e
	}
	if e := got["init"]; string(e.data) != "\x7fELF fake" || e.mode != 0o100755 {
		t.Errorf("init = %o %q", e.mode, e.data)
	}
	if e := got["testvm-spec.json"]; !bytes.Equal(e.data, sp) {
		t.Errorf("spec = %q", e.data)
	}
	if e := got["dev/console"]; e.mode != 0o020600 || e.major != 5 || e.minor != 1 {
		t.Errorf("dev/console = %o %d:%d", e.mode, e.major, e.minor)
	}
}

func TestSpecRoundTrip(t *testing.T) {
	n, err := newNonce()
	if err != nil {
		t.Fatal(err)
	}
	in := &spec{Argv: []string{"sh", "-c", "exit 3"}, Dir: "/work", Env: []string{"A=b=c", "PATH=/bin"},
		UID: 1000, GID: 100, Groups: []int{100, 27}, Umask: 0o022, Hostname: "h", Nonce: n,
		HostTimeNs: 123, TmpfsDirs: []string{"/tmp"}, NineP: ninePOpts, Verbose: true}
	b, err := in.marshal()
	if err != nil {
		t.Fatal(err)
	}
	out, err := parseSpec(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip:\n got %+v\nwant %+v", out, in)
	}
	for _, bad := range []string{
		`{`,
		`{"argv":[],"dir":"/","nonce":"` + n + `"}`,
		`{"argv":["x"],"dir":"rel","nonce":"` + n + `"}`,
		`{"argv":["x"],"dir":"/","nonce":"short"}`,
	} {
		if _, err := parseSpec([]byte(bad)); err == nil {
			t.Errorf("parseSpec(%s) accepted", bad)
		}
	}
}

func TestNonce(t *testing.T) {
	a, _ := newNonce()
	b, _ := newNonce()
	if a == b || !validNonce(a) || !validNonce(b) {
		t.Errorf("nonces %q %q", a, b)
	}
	if _, err := hex.DecodeString(a); err != nil {
		t.Error(err)
	}
}

func TestParseMarker(t *testing.T) {
	n := strings.Repeat("ab", 16)
	other := strings.Repeat("cd", 16)
	cases := []struct {
		line string
		ok   bool
		want marker
	}{
		{exitLine(n, 3, 10, 20), true, marker{Kind: markExit, Status: 3, OutN: 10, ErrN: 20}},
		{"garbage before " + exitLine(n, 0, 0, 0) + " \r", true, marker{Kind: markExit}},
		{startLine(n), true, marker{Kind: markStart}},
		{"[  3.1] a kernel line, then " + aliveLine(n), true, marker{Kind: markAlive}},
		{aliveLine(other), false, marker{}},
		{errorLine(n, "mount: no such\ndevice"), true, marker{Kind: markError, Msg: "mount: no such device"}},
		// Forgeries and malformed lines.
		{exitLine(other, 0, 0, 0), false, marker{}},
		{":testvm-exit:0:0:0", false, marker{}},
		{"testvm-exit:0:0:0", false, marker{}},
		{n + ":testvm-exit:0:0", false, marker{}},
		{n + ":testvm-exit:256:0:0", false, marker{}},
		{n + ":testvm-exit:-1:0:0", false, marker{}},
		{n + ":testvm-exit:x:0:0", false, marker{}},
		{n + ":testvm-exit:0:0:0 trailing", false, marker{}},
		{n + ":testvm-started", false, marker{}},
		{n[:31] + ":testvm-exit:0:0:0", false, marker{}},
		{"", false, marker{}},
	}
	for _, c := range cases {
		m, ok := parseMarker(c.line, n)
		if ok != c.ok || m != c.want {
			t.Errorf("parseMarker(%q) = %+v, %v; want %+v, %v", c.line, m, ok, c.want, c.ok)
		}
	}
	if _, ok := parseMarker(exitLine("", 0, 0, 0), ""); ok {
		t.Error("empty nonce accepted")
	}
	if got := ackLine(n); !strings.HasPrefix(got, n) {
		t.Errorf("ackLine = %q", got)
	}
}

func TestOuterCrash(t *testing.T) {
	before := func(s ...string) []consoleLine {
		var ls []consoleLine
		for _, l := range s {
			ls = append(ls, consoleLine{Text: l})
		}
		return ls
	}
	after := func(ls []consoleLine, s ...string) []consoleLine {
		for _, l := range s {
			ls = append(ls, consoleLine{Text: l, AfterStart: true})
		}
		return ls
	}
	cases := []struct {
		name  string
		lines []consoleLine
		want  string
	}{
		{"clean", before("[    0.000000] Linux version 6.1", "[    1.0] Run /init as init process"), ""},
		{"panic before start", before("[    1.0] Run /init", "[    1.2] Kernel panic - not syncing: VFS"), "[    1.2] Kernel panic - not syncing: VFS"},
		{"stack guard after start", after(before("[ 1.0] Run /init"),
			"[  120.500000] BUG: TASK stack guard page was hit at 00000000 (stack is 0000..0000)",
			"[  120.500001] Kernel panic - not syncing: Fatal exception"),
			"[  120.500000] BUG: TASK stack guard page was hit at 00000000 (stack is 0000..0000)"},
		{"gpf", after(nil, "[ 5.1] general protection fault, probably for non-canonical address"), "[ 5.1] general protection fault, probably for non-canonical address"},
		{"oops", after(nil, "[   12.000000] Oops: 0000 [#1] PREEMPT SMP NOPTI"), "[   12.000000] Oops: 0000 [#1] PREEMPT SMP NOPTI"},
		{"command text after start is not the kernel", after(nil, "Kernel panic - not syncing: from a test's log", "BUG: in my program"), ""},
		{"init died", before("[ 2.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000002"), ""},
		{"no init", before("[ 2.0] Kernel panic - not syncing: No working init found."), ""},
		{"warnings are not crashes", after(nil, "[ 3.0] WARNING: CPU: 1 PID: 1 at arch/x86/kvm/x86.c:100"), ""},
	}
	for _, c := range cases {
		got, ok := outerCrash(c.lines)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("%s: outerCrash = %q, %v; want %q", c.name, got, ok, c.want)
		}
	}
}

func TestDetectHost(t *testing.T) {
	mk := func(files map[string]string) string {
		root := t.TempDir()
		for p, content := range files {
			full := filepath.Join(root, p)
			if strings.HasSuffix(p, "/") {
				if err := os.MkdirAll(full, 0o755); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return root
	}
	cpu := func(flags string) string {
		return "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme " + flags + " lm\nbugs\t\t: sysret_ss_attrs\n\nprocessor\t: 1\nflags\t\t: fpu\n"
	}
	cases := []struct {
		name   string
		files  map[string]string
		direct bool
	}{
		{"vmx", map[string]string{"dev/kvm": "", "proc/cpuinfo": cpu("vmx ept")}, true},
		{"svm", map[string]string{"dev/kvm": "", "proc/cpuinfo": cpu("svm npt")}, true},
		{"pvm", map[string]string{"dev/kvm": "", "sys/module/kvm_pvm/": "", "proc/cpuinfo": cpu("svm")}, false},
		{"no kvm", map[string]string{"proc/cpuinfo": cpu("vmx")}, false},
		{"no flag", map[string]string{"dev/kvm": "", "proc/cpuinfo": cpu("sse2 hypervisor")}, false},
		{"svm substring", map[string]string{"dev/kvm": "", "proc/cpuinfo": cpu("nosvm svmx")}, false},
		{"no cpuinfo", map[string]string{"dev/kvm": ""}, false},
	}
	for _, c := range cases {
		h := detectHost(mk(c.files))
		if h.Direct != c.direct || h.Why == "" {
			t.Errorf("%s: detectHost = %+v, want direct=%v", c.name, h, c.direct)
		}
	}
	for _, c := range []struct {
		flag   string
		host   bool
		direct bool
		err    bool
	}{
		{"auto", true, true, false}, {"auto", false, false, false},
		{"direct", false, true, false}, {"nested", true, false, false}, {"x", true, false, true},
	} {
		d, err := choosePlatform(c.flag, hostKVM{Direct: c.host})
		if d != c.direct || (err != nil) != c.err {
			t.Errorf("choosePlatform(%q, %v) = %v, %v", c.flag, c.host, d, err)
		}
	}
}

func TestParseArgs(t *testing.T) {
	o, err := parseArgs([]string{"--platform", "nested", "--cpus=4", "--memory", "2048", "--timeout", "90s", "--kernel", "/k", "--alive-limit", "30s", "-v", "--", "go", "test", "--", "-x"})
	if err != nil {
		t.Fatal(err)
	}
	want := &options{platform: "nested", cpus: 4, memory: 2048, timeout: 90 * time.Second, kernel: "/k", verbose: true, aliveLimit: 30 * time.Second, argv: []string{"go", "test", "--", "-x"}}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("got %+v, want %+v", o, want)
	}
	o, err = parseArgs([]string{"--", "true"})
	if err != nil || o.platform != "auto" || o.cpus != 2 || o.memory != 4096 || o.timeout != 0 || o.verbose || o.aliveLimit != 2*time.Minute {
		t.Errorf("defaults: %+v, %v", o, err)
	}
	for _, bad := range [][]string{
		{}, {"true"}, {"--"}, {"-v"}, {"--bogus", "--", "true"}, {"--platform", "kvm", "--", "true"},
		{"--cpus", "0", "--", "true"}, {"--memory", "10", "--", "true"}, {"--timeout", "-1s", "--", "true"},
		{"--alive-limit", "-1s", "--", "true"},
		{"--timeout", "soon", "--", "true"}, {"-v", "true", "--", "x"}, {"--", ""},
	} {
		if _, err := parseArgs(bad); err == nil || err == errHelp {
			t.Errorf("parseArgs(%q) = %v, want an error", bad, err)
		}
	}
	if _, err := parseArgs([]string{"-h"}); err != errHelp {
		t.Errorf("-h: %v", err)
	}
}

// TestUsageErrors: bad input gives exit status 125 and a single line.
func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--bogus", "--", "true"}, {"true"}, {"--"}, {"--platform", "x", "--", "true"},
	} {
		var out, errb bytes.Buffer
		code := run(args, &out, &errb)
		if code != exitFailure || strings.Count(errb.String(), "\n") != 1 || !strings.HasPrefix(errb.String(), "testvm: ") {
			t.Errorf("run(%q) = %d, stderr %q", args, code, errb.String())
		}
	}
	// No QEMU on PATH: tell the user how to install it.
	t.Setenv("PATH", t.TempDir())
	var out, errb bytes.Buffer
	code := run([]string{"--platform", "nested", "--", "true"}, &out, &errb)
	if code != exitFailure || !strings.Contains(errb.String(), "apt-get install qemu-system-x86") || !strings.Contains(errb.String(), "make deps") {
		t.Errorf("without qemu: %d %q", code, errb.String())
	}
}

func TestGuestEnv(t *testing.T) {
	got := guestEnv([]string{"HOME=/root", "SSH_AUTH_SOCK=/run/x", "GOFLAGS=-mod=mod", "VESSEL_X=1", "DISPLAY=:0", "junk"})
	want := []string{"HOME=/root", "GOFLAGS=-mod=mod", "VESSEL_X=1", "PATH=" + defaultPath}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("guestEnv = %q, want %q", got, want)
	}
	got = guestEnv([]string{"PATH=/x"})
	if !reflect.DeepEqual(got, []string{"PATH=/x"}) {
		t.Errorf("guestEnv keeps PATH: %q", got)
	}
}

func TestTmpfsDirs(t *testing.T) {
	cand := []string{"/tmp", "/run"}
	cases := []struct {
		dir  string
		argv []string
		env  []string
		want []string
	}{
		{"/work/main", []string{"go", "test"}, []string{"HOME=/root", "PATH=/usr/bin:/bin"}, []string{"/tmp", "/run"}},
		{"/tmp/checkout", []string{"true"}, nil, []string{"/run"}},
		{"/work", []string{"/tmp/e2e.test", "-test.v"}, nil, []string{"/run"}},
		{"/work", []string{"x", "-dir=/run/foo"}, nil, []string{"/tmp"}},
		{"/work", []string{"x"}, []string{"GOCACHE=/tmp/gocache"}, []string{"/run"}},
		{"/work", []string{"x"}, []string{"PATH=/bin:/run/user/bin"}, []string{"/tmp"}},
		{"/work", []string{"x"}, []string{"X=/tmpfoo"}, []string{"/tmp", "/run"}},
		{"/tmp", []string{"x"}, nil, []string{"/run"}},
	}
	for _, c := range cases {
		got := tmpfsDirs(cand, protectedPaths(c.dir, c.argv, c.env))
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("dir %s argv %q env %q: %q, want %q", c.dir, c.argv, c.env, got, c.want)
		}
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "prog")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=/nonexistent:" + dir}
	if p, st, err := lookPath("prog", env); p != exe || st != 0 || err != nil {
		t.Errorf("prog: %q %d %v", p, st, err)
	}
	if _, st, err := lookPath("nope", env); st != 127 || err == nil {
		t.Errorf("nope: %d %v", st, err)
	}
	if _, st, err := lookPath("data", env); st != 127 || err == nil {
		t.Errorf("data on PATH: %d %v", st, err)
	}
	if _, st, err := lookPath(filepath.Join(dir, "data"), env); st != 126 || err == nil {
		t.Errorf("data by path: %d %v", st, err)
	}
	if _, st, err := lookPath(filepath.Join(dir, "missing"), env); st != 127 || err == nil {
		t.Errorf("missing by path: %d %v", st, err)
	}
	if p, st, err := lookPath(exe, nil); p != exe || st != 0 || err != nil {
		t.Errorf("by path: %q %d %v", p, st, err)
	}
}

func TestModuleRoot(t *testing.T) {
	root := t.TempDir()
	sub := filepath.Join(root, "a", "b")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	// A nested module of another name must be skipped.
	if err := os.WriteFile(filepath.Join(root, "a", "go.mod"), []byte("module example.com/other\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("// c\nmodule github.com/vesselvm/vessel\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := findModuleRoot(sub); got != root || err != nil {
		t.Errorf("findModuleRoot = %q, %v", got, err)
	}
	if _, err := findModuleRoot(t.TempDir()); err == nil {
		t.Error("found a module root where there is none")
	}
}

func TestQemuArgs(t *testing.T) {
	o := &options{cpus: 3, memory: 1024}
	a := strings.Join(qemuArgs(o, "/k/vmlinux", "/t/i.cpio", "/t/q.log"), " ")
	for _, want := range []string{"-d cpu_reset -D /t/q.log", "-accel tcg,thread=multi", "-cpu max", "-smp 3", "-m 1024", "-no-reboot", "-nodefaults",
		"-kernel /k/vmlinux", "-initrd /t/i.cpio", "mount_tag=hostroot", "readonly=on", "name=testvm.stdout", "name=testvm.stderr"} {
		if !strings.Contains(a, want) {
			t.Errorf("qemu args lack %q: %s", want, a)
		}
	}
	if c := kernelCmdline(false, 2445417); !strings.Contains(c, "quiet") || !strings.Contains(c, "panic=-1") || !strings.Contains(c, "console=ttyS0") || !strings.Contains(c, "tsc_early_khz=2445417") {
		t.Errorf("cmdline %q", c)
	}
	if c := kernelCmdline(true, 1); strings.Contains(c, "quiet") {
		t.Errorf("verbose cmdline %q", c)
	}
}

func TestCheckStatic(t *testing.T) {
	if err := checkStatic("/bin/sh"); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("checkStatic(/bin/sh) = %v, want a dynamic-linking error", err)
	}
	if err := checkStatic(testvmBinary(t, false)); err != nil {
		t.Errorf("testvm as built by default: %v", err)
	}
}

var (
	buildOnce [2]sync.Once
	buildPath [2]string
	buildErr  [2]error
)

// testvmBinary builds this command (once per test binary) and returns its
// path. cgo0 forces CGO_ENABLED=0; otherwise the environment's setting is
// used, which must still give a static binary (no cgo package linked in).
func testvmBinary(t *testing.T, cgo0 bool) string {
	t.Helper()
	i := 0
	if cgo0 {
		i = 1
	}
	buildOnce[i].Do(func() {
		dir, err := os.MkdirTemp("", "testvm-bin-")
		if err != nil {
			buildErr[i] = err
			return
		}
		buildPath[i] = filepath.Join(dir, "testvm")
		cmd := exec.Command("go", "build", "-o", buildPath[i], ".")
		cmd.Env = os.Environ()
		if cgo0 {
			cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr[i] = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr[i] != nil {
		t.Fatal(buildErr[i])
	}
	return buildPath[i]
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, p := range buildPath {
		if p != "" {
			os.RemoveAll(filepath.Dir(p))
		}
	}
	os.Exit(code)
}

// The fake QEMU: a shell script that plays the outer VM's part of the
// protocol (it takes the nonce from the initramfs, as init would), so the
// host side's retry, timeout, signal and cleanup logic is tested without a
// kernel. FAKE_MODE selects the behaviour; FAKE_STATE is a directory for
// counting runs and recording PIDs.
const fakeQemu = `#!/bin/sh
while [ $# -gt 0 ]; do
	case $1 in -initrd) initrd=$2; shift;; -D) log=$2; shift;; esac
	shift
done
n=$(grep -ao '"nonce":"[0-9a-f]\{32\}"' "$initrd" | head -n 1 | cut -d'"' -f4)
echo $$ >> "$FAKE_STATE/pids"
echo x >> "$FAKE_STATE/runs"
runs=$(wc -l < "$FAKE_STATE/runs")
echo "CPU Reset (CPU 0)" > "$log"
echo "[    0.000000] Linux version 6.1.fake"
echo "[    0.500000] Run /init as init process"
mode=$FAKE_MODE
if [ "$mode" = crash-once ]; then
	if [ "$runs" = 1 ]; then mode=crash; else mode=ok; fi
fi
if [ "$mode" = rcu-once ]; then
	if [ "$runs" = 1 ]; then mode=rcu; else mode=ok; fi
fi
if [ "$mode" = triple-once ]; then
	if [ "$runs" = 1 ]; then mode=triple; else mode=ok; fi
fi
if [ "$mode" = wedged-once ]; then
	if [ "$runs" = 1 ]; then mode=wedged; else mode=ok; fi
fi
case $mode in
ok)
	echo "$n:testvm-start"
	printf 'out\n' >&3
	printf 'err\n' >&4
	printf '\r\n%s:testvm-exit:7:4:4\r\n' "$n"
	read -r ack
	[ "$ack" = "$n:testvm-ack" ] || echo "bad ack $ack" >&2
	echo "[    9.000000] reboot: Restarting system"
	exit 0;;
crash)
	echo "$n:testvm-start"
	echo "[    2.000000] BUG: TASK stack guard page was hit at 0000"
	echo "[    2.000001] Kernel panic - not syncing: Fatal exception"
	exit 0;;
rcu)
	echo "$n:testvm-start"
	for i in 1 2 3; do echo "[  20$i.000000] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:"; done
	exec sleep 1000;;
triple)
	echo "$n:testvm-start"
	echo "Triple fault" >> "$log"
	exit 0;;
forge)
	echo "$n:testvm-start"
	echo "0123456789abcdef0123456789abcdef:testvm-exit:0:0:0"
	echo ":testvm-exit:0:0:0"
	echo "Kernel panic - not syncing: printed by the command to /dev/console"
	exit 0;;
setup-error)
	echo "$n:testvm-error:mount host root over 9p: no such device"
	read -r ack
	exit 0;;
hang)
	echo "$n:testvm-start"
	exec sleep 1000;;
wedged)
	echo "$n:testvm-start"
	echo "$n:testvm-alive"
	exec sleep 1000;;
slow)
	echo "$n:testvm-start"
	for i in 1 2 3 4 5 6; do sleep 1; echo "$n:testvm-alive"; done
	printf '%s:testvm-exit:0:0:0\n' "$n"
	read -r ack
	exit 0;;
esac
echo "fake qemu: unknown mode $mode" >&2
exit 1
`

type fakeResult struct {
	code           int
	stdout, stderr string
	state, tmp     string
}

// runFake runs the built testvm with the fake QEMU first on PATH.
func runFake(t *testing.T, mode string, extra []string, signal os.Signal) fakeResult {
	t.Helper()
	bin := testvmBinary(t, true)
	dir := t.TempDir()
	pathDir := filepath.Join(dir, "bin")
	state := filepath.Join(dir, "state")
	tmp := filepath.Join(dir, "tmp")
	for _, d := range []string{pathDir, state, tmp} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(pathDir, "qemu-system-x86_64"), []byte(fakeQemu), 0o755); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(kernel, []byte("fake"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--platform", "nested", "--kernel", kernel}, extra...)
	args = append(args, "--", "some-command")
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "PATH="+pathDir+":"+os.Getenv("PATH"), "FAKE_MODE="+mode, "FAKE_STATE="+state, "TMPDIR="+tmp)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if signal != nil {
		// Wait for the fake VM to run, then signal testvm.
		for i := 0; i < 500; i++ {
			if _, err := os.Stat(filepath.Join(state, "pids")); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
		_ = cmd.Process.Signal(signal)
	}
	err := cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return fakeResult{code, out.String(), errb.String(), state, tmp}
}

func (r fakeResult) runs(t *testing.T) int {
	b, _ := os.ReadFile(filepath.Join(r.state, "runs"))
	return strings.Count(string(b), "\n")
}

// checkClean verifies that no fake QEMU survives and the temp dir is gone.
func (r fakeResult) checkClean(t *testing.T) {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(r.state, "pids"))
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(st), ") Z ") {
				t.Errorf("fake QEMU %d is still running", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	ents, _ := os.ReadDir(r.tmp)
	for _, e := range ents {
		t.Errorf("left behind in TMPDIR: %s", e.Name())
	}
}

func TestFakeOK(t *testing.T) {
	r := runFake(t, "ok", nil, nil)
	if r.code != 7 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") || r.runs(t) != 1 {
		t.Errorf("code %d, stdout %q, stderr %q, runs %d", r.code, r.stdout, r.stderr, r.runs(t))
	}
	if !strings.Contains(r.stderr, "testvm: platform: nested KVM in QEMU TCG (-cpu max), outer kernel ") {
		t.Errorf("no platform line: %q", r.stderr)
	}
	if strings.Contains(r.stderr, "bad ack") || strings.Contains(r.stderr, "Restarting") {
		t.Errorf("stderr: %q", r.stderr)
	}
	r.checkClean(t)
}

// TestFakeCrashRetriedOnce: an outer VM that died of an outer-kernel
// crash (its console shows it) or of an outer CPU's triple fault (no
// console line, QEMU exits 0 under -no-reboot: only QEMU's cpu_reset log
// shows it) is run once more; a second death is the platform's failure.
// An outer VM that ended for no known reason is never retried
// (TestFakeForgeryNotTrusted).
func TestFakeCrashRetriedOnce(t *testing.T) {
	for _, tc := range []struct{ mode, why string }{
		{"crash", "testvm: outer kernel crashed ([    2.000000] BUG: TASK stack guard page was hit at 0000); retrying once"},
		{"triple", "triple-faulted with no kernel message first: QEMU's TCG emulation failed it); retrying once"},
		{"rcu", "reported an RCU stall 3 times, the first: [  201.000000] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:); retrying once"},
	} {
		r := runFake(t, tc.mode+"-once", nil, nil)
		if r.code != 7 || r.runs(t) != 2 || !strings.Contains(r.stderr, tc.why) {
			t.Errorf("%s once: code %d, runs %d, stderr %q", tc.mode, r.code, r.runs(t), r.stderr)
		}
		r.checkClean(t)

		r = runFake(t, tc.mode, nil, nil)
		if r.code != exitFailure || r.runs(t) != 2 || !strings.Contains(r.stderr, "crashed again") {
			t.Errorf("%s twice: code %d, runs %d, stderr %q", tc.mode, r.code, r.runs(t), r.stderr)
		}
		r.checkClean(t)
	}
}

// TestFakeWedged: an outer VM whose init stops printing its signs of
// life while the command runs is ended and retried once, as a crash; one
// that keeps printing them runs as long as it takes.
func TestFakeWedged(t *testing.T) {
	limit := []string{"--alive-limit", "3s"}
	r := runFake(t, "wedged-once", limit, nil)
	if r.code != 7 || r.runs(t) != 2 || !strings.Contains(r.stderr, "init showed no sign of life for 3s while the command ran") ||
		!strings.Contains(r.stderr, "retrying once") {
		t.Errorf("wedged once: code %d, runs %d, stderr %q", r.code, r.runs(t), r.stderr)
	}
	r.checkClean(t)
	r = runFake(t, "wedged", limit, nil)
	if r.code != exitFailure || r.runs(t) != 2 || !strings.Contains(r.stderr, "crashed again") {
		t.Errorf("wedged twice: code %d, runs %d, stderr %q", r.code, r.runs(t), r.stderr)
	}
	r.checkClean(t)
	r = runFake(t, "slow", limit, nil)
	if r.code != 0 || r.runs(t) != 1 {
		t.Errorf("alive for 6s: code %d, runs %d, stderr %q", r.code, r.runs(t), r.stderr)
	}
	r.checkClean(t)
}

func TestFakeForgeryNotTrusted(t *testing.T) {
	r := runFake(t, "forge", nil, nil)
	if r.code != exitFailure || r.runs(t) != 1 || !strings.Contains(r.stderr, "without reporting") {
		t.Errorf("code %d, runs %d, stderr %q", r.code, r.runs(t), r.stderr)
	}
	r.checkClean(t)
}

func TestFakeSetupError(t *testing.T) {
	r := runFake(t, "setup-error", nil, nil)
	if r.code != exitFailure || r.runs(t) != 1 || !strings.Contains(r.stderr, "mount host root over 9p: no such device") {
		t.Errorf("code %d, runs %d, stderr %q", r.code, r.runs(t), r.stderr)
	}
	r.checkClean(t)
}

func TestFakeTimeout(t *testing.T) {
	start := time.Now()
	r := runFake(t, "hang", []string{"--timeout", "1s"}, nil)
	if r.code != exitTimeout || !strings.Contains(r.stderr, "timed out after 1s") || time.Since(start) > 20*time.Second {
		t.Errorf("code %d, stderr %q, took %v", r.code, r.stderr, time.Since(start))
	}
	r.checkClean(t)
}

func TestFakeSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		r := runFake(t, "hang", nil, sig)
		if r.code != 128+int(sig) {
			t.Errorf("%v: code %d, stderr %q", sig, r.code, r.stderr)
		}
		r.checkClean(t)
	}
}

func TestTSCKHz(t *testing.T) {
	khz, err := tscKHz()
	if err != nil {
		t.Fatal(err)
	}
	// Two measurements agree to within 2%: the rate is real, not noise.
	khz2, err := tscKHz()
	if err != nil {
		t.Fatal(err)
	}
	if d := float64(khz) - float64(khz2); d > 0.02*float64(khz) || -d > 0.02*float64(khz) {
		t.Errorf("TSC rate unstable: %d kHz then %d kHz", khz, khz2)
	}
	t.Logf("host TSC %d kHz", khz)
}
