package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/guest/agentproto"
)

func TestFormatLog(t *testing.T) {
	now := time.Date(2026, 12, 4, 16, 0, 0, 5, time.UTC)
	for _, tc := range []struct {
		format, want string
	}{
		{"json", `{"level":"error","msg":"a \"b\"","time":"2026-12-04T16:00:00.000000005Z"}` + "\n"},
		{"text", `time="2026-12-04T16:00:00.000000005Z" level=error msg="a \"b\""` + "\n"},
	} {
		if got := string(formatLog(tc.format, "error", `a "b"`, now)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.format, got, tc.want)
		}
	}
}

// testBundle writes a bundle whose config is a minimal valid one,
// changed by edit.
func testBundle(t *testing.T, edit func(*specs.Spec)) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs"},
		Process: &specs.Process{Args: []string{"true"}, Cwd: "/"},
		Mounts:  []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
		Linux:   &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.MountNamespace}}},
	}
	if edit != nil {
		edit(s)
	}
	b, _ := json.Marshal(s)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestErrors: every failure exits 1 with one line on stderr and one
// error line in --log, and leaves no state behind.
func TestErrors(t *testing.T) {
	root := filepath.Join(t.TempDir(), "state")
	kernel := filepath.Join(t.TempDir(), "bzImage")
	os.WriteFile(kernel, nil, 0o644)
	noConfig := t.TempDir()
	badJSON := t.TempDir()
	os.WriteFile(filepath.Join(badJSON, "config.json"), []byte(`{"process":`), 0o644)
	huge := t.TempDir()
	os.WriteFile(filepath.Join(huge, "config.json"), bytes.Repeat([]byte(" "), maxConfig+1), 0o644)
	guest := []string{"--kernel", kernel, "--initramfs", kernel}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"log format", []string{"--log-format", "xml", "state", "x"}, `--log-format "xml"`},
		{"vm memory", []string{"--vm-memory", "1", "state", "x"}, "--vm-memory 1"},
		{"vm cpus", []string{"--vm-cpus", "0", "state", "x"}, "--vm-cpus 0"},
		{"no ID", []string{"state"}, "want exactly one argument"},
		{"invalid ID", []string{"state", "../etc"}, "invalid container id"},
		{"unknown ID state", []string{"state", "nope"}, `container "nope" does not exist`},
		{"unknown ID start", []string{"start", "nope"}, `container "nope" does not exist`},
		{"unknown ID kill", []string{"kill", "nope"}, `container "nope" does not exist`},
		{"unknown ID delete", []string{"delete", "nope"}, `container "nope" does not exist`},
		{"bad signal", []string{"kill", "nope", "SIGNOPE"}, `invalid signal "SIGNOPE"`},
		{"signal out of range", []string{"kill", "nope", "65"}, `invalid signal "65"`},
		{"no bundle", []string{"create", "--bundle", filepath.Join(noConfig, "absent"), "x"}, "not a directory"},
		{"missing config.json", []string{"create", "--bundle", noConfig, "x"}, "no config.json"},
		{"invalid config.json", []string{"create", "--bundle", badJSON, "x"}, "config.json: unexpected end of JSON input"},
		{"huge config.json", []string{"create", "--bundle", huge, "x"}, "larger than"},
		{"no rootfs", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) { s.Root.Path = "absent" }), "x"}, `root.path "absent" is not a directory`},
		{"no args", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) { s.Process.Args = nil }), "x"}, "no process.args"},
		{"terminal without a console socket", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) { s.Process.Terminal = true }), "x"}, "cannot allocate tty if runc will detach without setting console socket"},
		{"console socket without a terminal", []string{"create", "--console-socket", "/tmp/s", "--bundle", testBundle(t, nil), "x"}, "cannot use console socket if runc will not detach or allocate tty"},
		{"console socket that is not there", []string{"create", "--console-socket", "/nonexistent/s", "--bundle", testBundle(t, func(s *specs.Spec) { s.Process.Terminal = true }), "x"}, "--console-socket: "},
		{"run with a console socket, not detached", []string{"run", "--console-socket", "/tmp/s", "--bundle", testBundle(t, func(s *specs.Spec) { s.Process.Terminal = true }), "x"}, "cannot use console socket if runc will not detach or allocate tty"},
		{"exec without a command", []string{"exec", "x"}, "want the container ID and a command"},
		{"ps of an unknown container", []string{"ps", "x"}, `container "x" does not exist`},
		{"list in an unknown format", []string{"list", "--format", "yaml"}, "invalid format option"},
		{"preserve fds", []string{"create", "--preserve-fds", "2", "--bundle", testBundle(t, nil), "x"}, "--preserve-fds 2"},
		{"failing prestart hook", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Hooks = &specs.Hooks{Prestart: []specs.Hook{{Path: "/bin/true"}, {Path: "/bin/sh", Args: []string{"sh", "-c", "echo no network >&2; exit 7"}}}}
		}), "x"}, "prestart hook #1 (/bin/sh): exit status 7: no network"},
		{"createContainer hook", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Hooks = &specs.Hooks{CreateContainer: []specs.Hook{{Path: "/bin/true"}}}
		}), "x"}, "createContainer and startContainer hooks run in the container's namespaces"},
		{"hook with a relative path", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Hooks = &specs.Hooks{Prestart: []specs.Hook{{Path: "true"}}}
		}), "x"}, `hooks: path "true": want an absolute path`},
		{"hook without path", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Hooks = &specs.Hooks{Poststop: []specs.Hook{{Args: []string{"x"}}}}
		}), "x"}, "a hook has no path"},
		{"bind mount of nothing", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/hosts", Source: "/nonexistent/hosts", Options: []string{"rbind", "ro"}})
		}), "x"}, `bind mount of "/nonexistent/hosts" at "/etc/hosts": stat /nonexistent/hosts: no such file`},
		{"bind mount of a device", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/dev/null", Type: "bind", Source: "/dev/null"})
		}), "x"}, "only directories and regular files can be bound"},
		{"bind mount before a mount below it", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/"},
				specs.Mount{Destination: "/data/tmp", Type: "tmpfs", Source: "tmpfs"})
		}), "x"}, `mount at "/data/tmp": it follows the bind mount at "/data"`},
		{"bind mount to /", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/", Type: "bind", Source: "/"})
		}), "x"}, `bind mount at "/"`},
		{"too many bind mounts", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			for i := 0; i <= maxBinds; i++ {
				s.Mounts = append(s.Mounts, specs.Mount{Destination: fmt.Sprintf("/d%d", i), Type: "bind", Source: "/"})
			}
		}), "x"}, "at most 13 bind mounts of directories"},
		{"namespace path", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Linux.Namespaces[1].Path = "/var/run/netns/x"
		}), "x"}, `network namespace path "/var/run/netns/x"`},
		{"host network namespace path", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Linux.Namespaces[1].Path = "/proc/self/ns/net"
		}), "x"}, `network namespace path "/proc/self/ns/net" is the host's`},
		{"host network", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Linux.Namespaces = s.Linux.Namespaces[:1]
		}), "x"}, "cannot share the host's network"},
		{"no kernel", []string{"--kernel", filepath.Join(noConfig, "absent"), "create", "--bundle", testBundle(t, nil), "x"}, "no guest artifact"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logf := filepath.Join(t.TempDir(), "log.json")
			var stderr bytes.Buffer
			args := append([]string{"--root", root, "--log", logf, "--log-format", "json"}, guest...)
			code := run(append(args, tc.args...), &stderr)
			if code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			s := stderr.String()
			if !strings.HasPrefix(s, "vessel-runtime: ") || strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") || !strings.Contains(s, tc.want) {
				t.Errorf("stderr %q, want one line with %q", s, tc.want)
			}
			b, _ := os.ReadFile(logf)
			// These fail before --log or --log-format is known.
			if tc.name == "unknown command" || tc.name == "log format" {
				b = []byte(`{"level":"error","msg":` + strconvQuote(tc.want) + `,"time":"-"}`)
			}
			var l struct{ Level, Msg, Time string }
			if err := json.Unmarshal(b, &l); err != nil || l.Level != "error" || !strings.Contains(l.Msg, tc.want) || l.Time == "" {
				t.Errorf("log %q (%v), want one error line with %q", b, err, tc.want)
			}
			if ents, _ := os.ReadDir(root); len(ents) > 0 {
				t.Errorf("state left behind: %v", ents)
			}
		})
	}
}

// TestDuplicateID: create refuses an ID in use and leaves its state.
func TestDuplicateID(t *testing.T) {
	root := t.TempDir()
	kernel := filepath.Join(t.TempDir(), "bzImage")
	os.WriteFile(kernel, nil, 0o644)
	dir := filepath.Join(root, "dup")
	os.Mkdir(dir, 0o700)
	rec := &record{ID: "dup", Bundle: "/b"}
	if err := rec.save(dir); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	code := run([]string{"--root", root, "--kernel", kernel, "--initramfs", kernel, "create", "--bundle", testBundle(t, nil), "dup"}, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), `container with id "dup" already exists`) {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err != nil {
		t.Errorf("the first container's state: %v", err)
	}
}

func TestDeleteForceUnknown(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"--root", t.TempDir(), "delete", "--force", "nope"}, &stderr); code != 0 || stderr.Len() > 0 {
		t.Errorf("delete --force of an unknown ID: exit %d, %q; want 0, as runc", code, stderr.String())
	}
}

// TestStateStopped: a container whose VMM process is gone (or whose
// PID another process has now) is stopped, with no PID.
func TestStateStopped(t *testing.T) {
	root := t.TempDir()
	start, ok := procStartTime(os.Getpid())
	if !ok {
		t.Fatal("no start time of this process")
	}
	for _, tc := range []struct {
		name string
		rec  record
		want string
	}{
		{"no VMM yet", record{}, statusCreating},
		{"reused PID", record{Pid: os.Getpid(), StartTime: start + 1}, statusStopped},
		{"no such process", record{Pid: 1 << 30, StartTime: start}, statusStopped},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := strings.ReplaceAll(tc.name, " ", "-")
			dir := filepath.Join(root, id)
			os.Mkdir(dir, 0o700)
			tc.rec.ID, tc.rec.Bundle = id, "/bundle"
			tc.rec.Annotations = map[string]string{"a": "b"}
			if err := tc.rec.save(dir); err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			out := captureStdout(t, func() {
				if code := run([]string{"--root", root, "state", id}, &stderr); code != 0 {
					t.Errorf("exit %d: %s", code, stderr.String())
				}
			})
			var st ociState
			if err := json.Unmarshal(out, &st); err != nil {
				t.Fatalf("%q: %v", out, err)
			}
			wantPid := 0
			if tc.want != statusStopped {
				wantPid = tc.rec.Pid
			}
			if st.Status != tc.want || st.ID != id || st.Bundle != "/bundle" || st.Pid != wantPid || st.OCIVersion == "" || st.Annotations["a"] != "b" {
				t.Errorf("state %+v, want status %s pid %d", st, tc.want, wantPid)
			}
		})
	}
}

func captureStdout(t *testing.T, f func()) []byte {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan []byte)
	go func() {
		var b bytes.Buffer
		b.ReadFrom(r)
		done <- b.Bytes()
	}()
	f()
	os.Stdout = old
	w.Close()
	return <-done
}

func TestParseSignal(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want unix.Signal
		ok   bool
	}{
		{"9", unix.SIGKILL, true},
		{"KILL", unix.SIGKILL, true},
		{"SIGTERM", unix.SIGTERM, true},
		{"term", unix.SIGTERM, true},
		{"SIGRTMIN", 0, false},
		{"0", 0, false},
		{"-1", 0, false},
		{"65", 0, false},
		{"", 0, false},
		{"SIGNOPE", 0, false},
	} {
		got, err := parseSignal(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseSignal(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseStat(t *testing.T) {
	tail := " 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 12345 0 0"
	for _, tc := range []struct {
		name, stat string
		want       uint64
		ok         bool
	}{
		{"plain", "42 (vessel-runtime) S 1" + tail, 12345, true},
		{"name with ) and spaces", "42 (a) S (b) R 1" + tail, 12345, true},
		{"zombie", "42 (vessel-runtime) Z 1" + tail, 0, false},
		{"dead", "42 (vessel-runtime) X 1" + tail, 0, false},
		{"short", "42 (vessel-runtime) S 1 0", 0, false},
		{"no name", "42 vessel-runtime S 1" + tail, 0, false},
	} {
		got, ok := parseStat([]byte(tc.stat))
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: %d %v, want %d %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func TestValidID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"a", true},
		{"abc-1.2_3", true},
		{strings.Repeat("f", 64), true},
		{strings.Repeat("f", 129), false},
		{"", false},
		{".", false},
		{"..", false},
		{"-a", false},
		{"a/b", false},
		{"a b", false},
	} {
		if got := validID(tc.id); got != tc.ok {
			t.Errorf("validID(%q) = %v, want %v", tc.id, got, tc.ok)
		}
	}
}

func TestGuestSpec(t *testing.T) {
	b, err := loadBundle(testBundle(t, func(s *specs.Spec) {
		s.Root = &specs.Root{Path: "rootfs", Readonly: true}
		s.Linux.CgroupsPath = "system.slice:docker:abc"
		s.Linux.MountLabel = "system_u:object_r:container_file_t:s0"
		s.Process.ApparmorProfile = "docker-default"
		s.Process.SelinuxLabel = "system_u:system_r:container_t:s0"
		s.Hooks = &specs.Hooks{Poststop: []specs.Hook{{Path: "/bin/true"}}}
	}))
	if err != nil {
		t.Fatal(err)
	}
	g := b.guestSpec()
	if g.Root.Path != "rootfs" || !g.Root.Readonly || g.Linux.CgroupsPath != "" || g.Linux.MountLabel != "" {
		t.Errorf("guest spec root %+v cgroups %q mount label %q", g.Root, g.Linux.CgroupsPath, g.Linux.MountLabel)
	}
	if g.Process.ApparmorProfile != "" || g.Process.SelinuxLabel != "" || g.Hooks != nil {
		t.Errorf("guest spec keeps host policies: apparmor %q selinux %q hooks %v", g.Process.ApparmorProfile, g.Process.SelinuxLabel, g.Hooks)
	}
	if b.spec.Linux.CgroupsPath != "system.slice:docker:abc" || b.spec.Process.ApparmorProfile != "docker-default" || b.spec.Hooks == nil || !filepath.IsAbs(b.rootfs) {
		t.Errorf("the bundle's spec changed: %q %q, rootfs %q", b.spec.Linux.CgroupsPath, b.spec.Process.ApparmorProfile, b.rootfs)
	}
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestPlanBinds(t *testing.T) {
	bundleDir := testBundle(t, nil)
	os.Mkdir(filepath.Join(bundleDir, "etc"), 0o755)
	host := t.TempDir()
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/data", Type: "bind", Source: host, Options: []string{"rbind", "rw"}},
		{Destination: "/etc/x", Type: "none", Source: "etc", Options: []string{"bind", "ro", "rprivate"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm"},
	}
	binds, err := planBinds(bundleDir, mounts)
	if err != nil {
		t.Fatal(err)
	}
	want := []bind{
		{source: host, vol: agentproto.Volume{Tag: "vessel-bind-0", Destination: "/data", Options: []string{"rbind", "rw"}}},
		{source: filepath.Join(bundleDir, "etc"), vol: agentproto.Volume{Tag: "vessel-bind-1", Destination: "/etc/x", ReadOnly: true, Options: []string{"bind", "ro", "rprivate"}}},
	}
	if !reflect.DeepEqual(binds, want) {
		t.Errorf("binds %+v, want %+v", binds, want)
	}
	b := &bundle{spec: &specs.Spec{Root: &specs.Root{Path: "r"}, Linux: &specs.Linux{}, Mounts: mounts}, binds: binds}
	g := b.guestSpec()
	if len(g.Mounts) != 2 || g.Mounts[0].Destination != "/proc" || g.Mounts[1].Destination != "/dev/shm" || len(b.spec.Mounts) != 4 {
		t.Errorf("guest mounts %+v (bundle's %d)", g.Mounts, len(b.spec.Mounts))
	}
}

// TestExitStatus: a hostile guest's exit status cannot turn into
// another after os.Exit's truncation to 8 bits.
func TestExitStatus(t *testing.T) {
	for _, tc := range []struct{ in, want int }{
		{0, 0}, {3, 3}, {143, 143}, {255, 255}, {256, 255}, {512, 255}, {-1, 255}, {1 << 40, 255},
	} {
		if got := exitStatus(tc.in); got != tc.want {
			t.Errorf("exitStatus(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// TestRunHooks: hooks run in order with runc's argv, exactly their env,
// the state on stdin and the bundle as working directory; a failure
// stops the list and names the hook; a timeout kills it.
func TestRunHooks(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	script := `echo "$(head -c 5 /proc/$$/cmdline | tr '\0' _) $0 env=$(env | sort | tr '\n' ,) cwd=$(pwd)" >>` + out + `; cat >>` + out + `; echo >>` + out
	two := 2
	h := &specs.Hooks{
		Prestart: []specs.Hook{
			{Path: "/bin/sh", Args: []string{"first", "-c", script, "a1"}, Env: []string{"A=1"}},
			{Path: "/bin/sh", Args: []string{"second", "-c", script, "a2"}, Timeout: &two},
		},
		Poststop: []specs.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", "sleep 10"}, Timeout: &two}},
	}
	st := ociState{OCIVersion: ociVersion, ID: "c1", Status: statusCreating, Pid: 42, Bundle: dir}
	if err := runHooks(context.Background(), h, hookPrestart, dir, st); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	state, _ := json.Marshal(st)
	want := fmt.Sprintf("first a1 env=A=1,PWD=%[1]s, cwd=%[1]s\n%[2]s\nsecon a2 env=PWD=%[1]s, cwd=%[1]s\n%[2]s\n", dir, state)
	if string(b) != want {
		t.Errorf("hooks saw\n%s\nwant\n%s", b, want)
	}
	start := time.Now()
	err := runHooks(context.Background(), h, hookPoststop, dir, st)
	if err == nil || !strings.Contains(err.Error(), "poststop hook #0 (/bin/sh): timed out after 2 s") {
		t.Errorf("slow hook: %v", err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("slow hook ran %v, past its timeout", d)
	}
	if err := runHooks(context.Background(), h, hookPoststart, dir, st); err != nil {
		t.Errorf("no poststart hooks: %v", err)
	}
}

// TestRunPostHooks: a failing poststart or poststop hook does not stop
// the ones after it (runtime-spec, runtime.md "Lifecycle", as
// runtime-tools' poststart_fail and poststop_fail check), and each
// failure is reported; a failing prestart hook stops the list.
func TestRunPostHooks(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	list := []specs.Hook{
		{Path: "/bin/sh", Args: []string{"sh", "-c", "exit 3"}},
		{Path: "/bin/sh", Args: []string{"sh", "-c", "echo second >>" + out}},
		{Path: "/bin/sh", Args: []string{"sh", "-c", "exit 4"}},
		{Path: "/bin/sh", Args: []string{"sh", "-c", "echo fourth >>" + out}},
	}
	st := ociState{OCIVersion: ociVersion, ID: "c1", Status: statusStopped, Bundle: dir}
	for _, kind := range []string{hookPoststart, hookPoststop} {
		os.Remove(out)
		h := &specs.Hooks{Poststart: list, Poststop: list}
		errs := runPostHooks(context.Background(), h, kind, dir, st)
		if b, _ := os.ReadFile(out); string(b) != "second\nfourth\n" {
			t.Errorf("%s: the hooks after a failed one wrote %q, want both", kind, b)
		}
		if len(errs) != 2 || !strings.Contains(errs[0].Error(), kind+" hook #0") || !strings.Contains(errs[1].Error(), kind+" hook #2") {
			t.Errorf("%s: failures %v, want hooks #0 and #2", kind, errs)
		}
	}
	os.Remove(out)
	err := runHooks(context.Background(), &specs.Hooks{Prestart: list}, hookPrestart, dir, st)
	if err == nil || !strings.Contains(err.Error(), "prestart hook #0") {
		t.Errorf("prestart: %v, want hook #0's failure", err)
	}
	if _, serr := os.Stat(out); serr == nil {
		t.Error("prestart: a hook after the failed one ran")
	}
}

// TestSockPathLong: a state directory too deep for a socket's address
// (a --root in a temporary directory with a 64-character ID) still gets
// working sockets, through a descriptor of the directory.
func TestSockPathLong(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("r", 40), strings.Repeat("0123456789abcdef", 4))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if len(filepath.Join(dir, ctlSock)) <= maxSockPath {
		t.Fatalf("test directory %q is not long enough", dir)
	}
	path, err := sockPath(dir, ctlSock)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("listen on %s: %v", path, err)
	}
	defer ln.Close()
	if _, err := os.Stat(filepath.Join(dir, ctlSock)); err != nil {
		t.Errorf("the socket is not in the state directory: %v", err)
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	defer c.Close()
	b, _ := io.ReadAll(c)
	if string(b) != "hi" {
		t.Errorf("read %q", b)
	}
	short := t.TempDir()
	if p, _ := sockPath(short, ctlSock); p != filepath.Join(short, ctlSock) {
		t.Errorf("a short directory's socket: %s", p)
	}
}

func TestVMSize(t *testing.T) {
	g := &globals{cpus: 1, memoryMiB: 512}
	i64 := func(v int64) *int64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	host := runtime.NumCPU()
	for _, tc := range []struct {
		name    string
		r       *specs.LinuxResources
		cpus    int
		memMiB  uint64
		wantErr string
	}{
		{"defaults", nil, 1, 512, ""},
		{"memory limit", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(256 << 20)}}, 1, 256 + guestOverhead>>20, ""},
		{"unlimited", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-1)}}, 1, 512, ""},
		{"quota", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(150000), Period: u64(100000)}}, min(2, host), 512, ""},
		{"quota default period", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(50000)}}, 1, 512, ""},
		{"cpuset", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0,1"}}, min(2, host), 512, ""},
		{"quota over a smaller cpuset", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(400000), Period: u64(100000), Cpus: "0,1"}}, min(2, host), 512, ""},
		{"quota under the cpuset", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(100000), Period: u64(100000), Cpus: "0-3"}}, 1, 512, ""},
		{"many cpus", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0-1000"}}, host, 512, ""},
		{"bad cpuset", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "3-1"}}, 0, 0, "linux.resources.cpu.cpus"},
		{"huge memory", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 50)}}, 0, 0, "more than a VM can have"},
		{"more than the host", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 45)}}, 0, 0, "more than the host's"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cpus, mem, err := g.vmSize(&specs.Spec{Linux: &specs.Linux{Resources: tc.r}})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || cpus != tc.cpus || mem != tc.memMiB<<20 {
				t.Errorf("%d vCPUs, %d MiB, %v; want %d, %d", cpus, mem>>20, err, tc.cpus, tc.memMiB)
			}
		})
	}
	r := guestResources(&specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "2-3", Mems: "0", Shares: u64(512)}})
	if r.CPU.Cpus != "" || r.CPU.Mems != "" || *r.CPU.Shares != 512 {
		t.Errorf("guest resources %+v", r.CPU)
	}
	// docker's --blkio-weight reaches the guest; --device-read-bps and
	// --blkio-weight-device name host devices, and do not.
	w := uint16(300)
	dev := specs.LinuxBlockIODevice{Major: 8, Minor: 0}
	in := &specs.LinuxResources{BlockIO: &specs.LinuxBlockIO{Weight: &w,
		WeightDevice:          []specs.LinuxWeightDevice{{LinuxBlockIODevice: dev, Weight: &w}},
		ThrottleReadBpsDevice: []specs.LinuxThrottleDevice{{LinuxBlockIODevice: dev, Rate: 1 << 20}}}}
	r = guestResources(in)
	if b := r.BlockIO; b == nil || b.Weight == nil || *b.Weight != 300 || len(b.WeightDevice)+len(b.ThrottleReadBpsDevice) != 0 {
		t.Errorf("guest block I/O %+v", r.BlockIO)
	}
	if len(in.BlockIO.ThrottleReadBpsDevice) != 1 {
		t.Error("the bundle's resources changed")
	}
	if guestResources(nil) != nil {
		t.Error("no resources became some")
	}
}

// TestSharedTmpRoot: a state root in the shared temporary directory (the
// unprivileged default without XDG_RUNTIME_DIR) is made 0700, and one
// that another user made first, or left open to others, is refused
// before any state in it is read.
func TestSharedTmpRoot(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	root := filepath.Join(tmp, fmt.Sprintf("vessel-runtime-%d", os.Geteuid()))
	for _, tc := range []struct {
		name  string
		setup func()
		want  string
	}{
		{"fresh", func() {}, `container "x" does not exist`},
		{"open to others", func() { os.Chmod(root, 0o777) }, "open to other users"},
		{"another user's", func() { os.Chmod(root, 0o700); os.Chown(root, 1234, 1234) }, "belongs to another user"},
		{"a symlink", func() { os.RemoveAll(root); os.Symlink(t.TempDir(), root) }, "is a symlink"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			var stderr bytes.Buffer
			if code := run([]string{"--root", root, "state", "x"}, &stderr); code != 1 || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, %q; want 1 and %q", code, stderr.String(), tc.want)
			}
			if tc.name == "fresh" {
				if fi, err := os.Lstat(root); err != nil || fi.Mode().Perm() != 0o700 {
					t.Errorf("the root: %v, %v; want mode 0700", fi.Mode(), err)
				}
			}
		})
	}
}
