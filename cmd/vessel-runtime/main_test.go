package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
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
		{"hooks", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Hooks = &specs.Hooks{Prestart: []specs.Hook{{Path: "/bin/true"}}}
		}), "x"}, "hooks are not supported"},
		{"bind mount of nothing", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/hosts", Source: "/nonexistent/hosts", Options: []string{"rbind", "ro"}})
		}), "x"}, `bind mount of "/nonexistent/hosts" at "/etc/hosts": stat /nonexistent/hosts: no such file`},
		{"bind mount of a device", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/dev/null", Type: "bind", Source: "/dev/null"})
		}), "x"}, "only directories can be bound"},
		{"bind mount of a file", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/hosts", Type: "bind", Source: "/etc/hosts", Options: []string{"rbind", "ro"}})
		}), "x"}, "bind mounts of single files are not supported"},
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
		}), "x"}, "at most 15 bind mounts"},
		{"namespace path", []string{"create", "--bundle", testBundle(t, func(s *specs.Spec) {
			s.Linux.Namespaces[1].Path = "/var/run/netns/x"
		}), "x"}, `network namespace path "/var/run/netns/x"`},
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
	}))
	if err != nil {
		t.Fatal(err)
	}
	g := b.guestSpec()
	if g.Root.Path != "rootfs" || !g.Root.Readonly || g.Linux.CgroupsPath != "" {
		t.Errorf("guest spec root %+v cgroups %q", g.Root, g.Linux.CgroupsPath)
	}
	if b.spec.Linux.CgroupsPath != "system.slice:docker:abc" || !filepath.IsAbs(b.rootfs) {
		t.Errorf("the bundle's spec changed: %q, rootfs %q", b.spec.Linux.CgroupsPath, b.rootfs)
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
		{source: host, vol: agentproto.Volume{Tag: "vessel-bind-1", Destination: "/data", Options: []string{"rbind", "rw"}}},
		{source: filepath.Join(bundleDir, "etc"), vol: agentproto.Volume{Tag: "vessel-bind-2", Destination: "/etc/x", ReadOnly: true, Options: []string{"bind", "ro", "rprivate"}}},
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
