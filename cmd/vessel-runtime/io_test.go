package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// unixPair returns two connected Unix stream sockets.
func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// TestSendConsole sends a pty's master as runc does and checks the
// message: one SCM_RIGHTS control message with exactly one descriptor,
// the master's name as its data, and go-runc's ReceiveMaster (what
// containerd's shim uses) takes it as a working console.
func TestSendConsole(t *testing.T) {
	pty, err := newHostPty(&specs.Box{Width: 100, Height: 30})
	if err != nil {
		t.Skipf("no pty here: %v", err)
	}
	defer pty.close()

	t.Run("message", func(t *testing.T) {
		a, b := unixPair(t)
		if err := sendFd(a, pty.master.Name(), pty.master); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(4*4))
		n, oobn, flags, _, err := b.ReadMsgUnix(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(buf[:n]); got != pty.master.Name() || got == "" {
			t.Errorf("data %q, want the master's name %q", got, pty.master.Name())
		}
		if flags&unix.MSG_CTRUNC != 0 {
			t.Errorf("control message truncated")
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			t.Fatalf("%d control messages (%v), want 1", len(msgs), err)
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			t.Fatalf("%d descriptors (%v), want 1", len(fds), err)
		}
		defer unix.Close(fds[0])
		if oobn != unix.CmsgSpace(4) {
			t.Errorf("%d control bytes, want %d (one descriptor)", oobn, unix.CmsgSpace(4))
		}
		ws, err := unix.IoctlGetWinsize(fds[0], unix.TIOCGWINSZ)
		if err != nil || ws.Col != 100 || ws.Row != 30 {
			t.Errorf("received descriptor's size %+v (%v), want 100x30 (a pty master)", ws, err)
		}
	})

	t.Run("go-runc", func(t *testing.T) {
		sock, err := runc.NewTempConsoleSocket()
		if err != nil {
			t.Fatal(err)
		}
		defer sock.Close()
		c, err := dialConsole(sock.Path())
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- sendConsole(c, pty) }()
		m, err := sock.ReceiveMaster()
		if err != nil {
			t.Fatalf("ReceiveMaster: %v", err)
		}
		defer m.Close()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		// The slave is raw: what the client writes arrives as it is.
		if _, err := m.Write([]byte("a\rb\n")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 16)
		pty.slave.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := pty.slave.Read(got)
		if err != nil || string(got[:n]) != "a\rb\n" {
			t.Errorf("the slave read %q (%v), want %q", got[:n], err, "a\rb\n")
		}
	})
}

func TestDialConsoleBadPath(t *testing.T) {
	if _, err := dialConsole(filepath.Join(t.TempDir(), "absent")); err == nil || !strings.HasPrefix(err.Error(), "--console-socket: ") {
		t.Errorf("dialConsole of a missing socket: %v", err)
	}
}

func TestFileConnsCount(t *testing.T) {
	a, _ := unixPair(t)
	f, err := a.File()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fileConns([]*os.File{f}, 3); err == nil {
		t.Errorf("one descriptor taken where three are wanted")
	}
	r, w, _ := os.Pipe()
	defer w.Close()
	if _, err := fileConns([]*os.File{r}, 1); err == nil {
		t.Errorf("a pipe taken as a stream connection")
	}
}

func TestCheckTerminal(t *testing.T) {
	for _, tc := range []struct {
		terminal, detach bool
		sock             string
		want             string
	}{
		{false, true, "", ""},
		{true, true, "/s", ""},
		{true, false, "", ""}, // run, exec: vessel-runtime's own stdio
		{false, false, "", ""},
		{true, true, "", "cannot allocate tty if runc will detach without setting console socket"},
		{false, true, "/s", "cannot use console socket if runc will not detach or allocate tty"},
		{true, false, "/s", "cannot use console socket if runc will not detach or allocate tty"},
	} {
		err := checkTerminal(tc.terminal, tc.detach, tc.sock)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("checkTerminal(terminal %v, detach %v, %q) = %q, want %q", tc.terminal, tc.detach, tc.sock, got, tc.want)
		}
	}
}

// TestExecFlags checks exec's command line: the flags as runc parses
// them and the process they make from the container's.
func TestExecFlags(t *testing.T) {
	base := &specs.Process{Args: []string{"init"}, Env: []string{"PATH=/bin"}, Cwd: "/srv",
		User:         specs.User{UID: 5, GID: 6, AdditionalGids: []uint32{7}},
		Capabilities: &specs.LinuxCapabilities{Bounding: []string{"CAP_KILL"}, Effective: []string{"CAP_KILL"}, Permitted: []string{"CAP_KILL"}}}
	procFile := filepath.Join(t.TempDir(), "process.json")
	os.WriteFile(procFile, []byte(`{"args":["from-file"],"cwd":"/","terminal":true}`), 0o644)
	badFile := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(badFile, []byte(`{"args":[],"cwd":"/"}`), 0o644)
	for _, tc := range []struct {
		name    string
		args    []string
		want    func(p *specs.Process) bool
		wantErr string
	}{
		{"plain", []string{"ctr", "ls", "-l"}, func(p *specs.Process) bool {
			return reflect.DeepEqual(p.Args, []string{"ls", "-l"}) && p.Cwd == "/srv" && !p.Terminal && p.User.UID == 5 &&
				reflect.DeepEqual(p.Env, []string{"PATH=/bin"})
		}, ""},
		{"the command's own flags", []string{"ctr", "sh", "-c", "echo -t"}, func(p *specs.Process) bool {
			return reflect.DeepEqual(p.Args, []string{"sh", "-c", "echo -t"}) && !p.Terminal
		}, ""},
		{"all flags", []string{"-t", "--cwd", "/tmp", "-e", "A=1", "--env", "B=2", "-u", "10:20", "--additional-gids", "30",
			"--additional-gids", "31", "--cap", "CAP_NET_ADMIN", "--no-new-privs", "--apparmor", "prof", "--process-label", "lbl", "ctr", "top"},
			func(p *specs.Process) bool {
				return p.Terminal && p.Cwd == "/tmp" && reflect.DeepEqual(p.Env, []string{"PATH=/bin", "A=1", "B=2"}) &&
					p.User.UID == 10 && p.User.GID == 20 && reflect.DeepEqual(p.User.AdditionalGids, []uint32{7, 30, 31}) &&
					reflect.DeepEqual(p.Capabilities.Bounding, []string{"CAP_KILL", "CAP_NET_ADMIN"}) &&
					reflect.DeepEqual(p.Capabilities.Permitted, []string{"CAP_KILL", "CAP_NET_ADMIN"}) &&
					p.NoNewPrivileges && p.ApparmorProfile == "prof" && p.SelinuxLabel == "lbl"
			}, ""},
		{"user without group", []string{"-u", "10", "ctr", "id"}, func(p *specs.Process) bool {
			return p.User.UID == 10 && p.User.GID == 6
		}, ""},
		{"--process", []string{"--process", procFile, "--detach", "--pid-file", "p", "ctr"}, func(p *specs.Process) bool {
			return reflect.DeepEqual(p.Args, []string{"from-file"}) && p.Terminal
		}, ""},
		{"user by name", []string{"-u", "root", "ctr", "id"}, nil, "parsing root as int for uid failed"},
		{"relative cwd", []string{"--cwd", "tmp", "ctr", "id"}, nil, "cwd must be an absolute path"},
		{"empty --process args", []string{"--process", badFile, "ctr"}, nil, "args must not be empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got *specs.Process
			var err error
			var f execFlags
			c := &cobra.Command{Use: "exec"}
			addExecFlags(c, &f)
			if err = c.ParseFlags(tc.args); err != nil {
				t.Fatalf("parse %v: %v", tc.args, err)
			}
			args := c.Flags().Args()
			if err = execArgs(&f)(c, args); err != nil {
				t.Fatalf("args %v: %v", args, err)
			}
			if args[0] != "ctr" {
				t.Fatalf("ID %q, want ctr", args[0])
			}
			got, err = execProcess(f, args[1:], base, c.Flags().Changed)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(got) {
				b, _ := json.Marshal(got)
				t.Errorf("process %s", b)
			}
			if !reflect.DeepEqual(base.Capabilities.Bounding, []string{"CAP_KILL"}) || !reflect.DeepEqual(base.User.AdditionalGids, []uint32{7}) || len(base.Env) != 1 {
				t.Errorf("the container's process changed: %+v", base)
			}
		})
	}
}

func TestExecArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"ctr"}, false},
		{[]string{"ctr", "ls"}, true},
		{[]string{"--process", "p.json", "ctr"}, true},
		{[]string{"--process", "p.json", "ctr", "ls"}, false},
	} {
		var g globals
		root := newRoot(&g)
		root.SetArgs(append([]string{"exec"}, tc.args...))
		c, args, err := root.Find(append([]string{"exec"}, tc.args...))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		err = c.Args(c, c.Flags().Args())
		if (err == nil) != tc.ok {
			t.Errorf("exec %v: %v, want ok %v", tc.args, err, tc.ok)
		}
	}
}

func TestWritePs(t *testing.T) {
	for _, tc := range []struct {
		format string
		pids   []int
		want   string
	}{
		{"json", []int{1, 23}, "[1,23]\n"},
		{"json", []int{}, "[]\n"},
		{"table", []int{1, 23}, "PID\n1\n23\n"},
	} {
		var b bytes.Buffer
		if err := writePs(&b, tc.format, tc.pids); err != nil {
			t.Fatal(err)
		}
		if b.String() != tc.want {
			t.Errorf("%s %v: %q, want %q", tc.format, tc.pids, b.String(), tc.want)
		}
	}
}

func TestWriteList(t *testing.T) {
	created := time.Date(2026, 12, 4, 20, 0, 0, 5, time.UTC)
	entries := []listEntry{
		{OCIVersion: ociVersion, ID: "a", Pid: 42, Status: "running", Bundle: "/b/a", Rootfs: "/b/a/rootfs", Created: created, Owner: "root"},
		{OCIVersion: ociVersion, ID: "bb", Status: "stopped", Bundle: "/b/bb", Created: created, Owner: "#1000"},
	}
	var b bytes.Buffer
	writeList(&b, "table", false, entries)
	want := "ID          PID         STATUS      BUNDLE      CREATED                          OWNER\n" +
		"a           42          running     /b/a        2026-12-04T20:00:00.000000005Z   root\n" +
		"bb          0           stopped     /b/bb       2026-12-04T20:00:00.000000005Z   #1000\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	writeList(&b, "json", true, entries)
	if b.String() != "a\nbb\n" {
		t.Errorf("-q: %q", b.String())
	}
	b.Reset()
	writeList(&b, "json", false, entries)
	// go-runc's List reads this.
	var got []*runc.Container
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != "a" || got[0].Pid != 42 || got[0].Status != "running" || got[0].Bundle != "/b/a" ||
		got[0].Rootfs != "/b/a/rootfs" || !got[0].Created.Equal(created) || got[1].Pid != 0 {
		t.Errorf("json %s", b.String())
	}
	b.Reset()
	writeList(&b, "json", false, nil)
	if b.String() != "null\n" {
		t.Errorf("json of no containers: %q, want runc's null", b.String())
	}
}

// TestUnsupportedCommands: checkpoint and restore take runc's flags and
// fail with one line.
func TestUnsupportedCommands(t *testing.T) {
	for _, args := range [][]string{
		{"checkpoint", "--image-path", "/x", "--leave-running", "--tcp-established", "ctr"},
		{"restore", "--detach", "--bundle", "/b", "--image-path", "/x", "--pid-file", "p", "ctr"},
	} {
		var stderr bytes.Buffer
		logf := filepath.Join(t.TempDir(), "log")
		if code := run(append([]string{"--root", t.TempDir(), "--log", logf}, args...), &stderr); code != 1 {
			t.Errorf("%v: exit %d, want 1", args, code)
		}
		want := "vessel-runtime: " + args[0] + " is not supported by vessel-runtime\n"
		if stderr.String() != want {
			t.Errorf("%v: %q, want %q", args, stderr.String(), want)
		}
		if b, _ := os.ReadFile(logf); !strings.Contains(string(b), args[0]+" is not supported") {
			t.Errorf("%v: log %q", args, b)
		}
	}
}

func TestFeatures(t *testing.T) {
	var stderr bytes.Buffer
	out, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = out
	code := run([]string{"features"}, &stderr)
	os.Stdout = old
	if code != 0 {
		t.Fatalf("features: exit %d: %s", code, stderr.String())
	}
	b, _ := os.ReadFile(out.Name())
	var f struct {
		OCIVersionMax string
		Linux         struct {
			Namespaces []string
			Seccomp    struct{ Enabled *bool }
		}
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("features: %v: %s", err, b)
	}
	if f.OCIVersionMax != ociVersion || len(f.Linux.Namespaces) == 0 || f.Linux.Seccomp.Enabled == nil || !*f.Linux.Seccomp.Enabled {
		t.Errorf("features: %s", b)
	}
}

// TestExecFailureStatus: as runc's, exec exits 255 when the process
// cannot be started, with one line, and 1 for a bad command line.
func TestExecFailureStatus(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"exec", "x", "ls"}, 255, `vessel-runtime: exec failed: container "x" does not exist` + "\n"},
		{[]string{"exec", "--preserve-fds", "1", "x", "ls"}, 1, "vessel-runtime: --preserve-fds 1: passing extra file descriptors is not supported by vessel-runtime\n"},
		{[]string{"exec", "-d", "--no-such-flag", "x", "ls"}, 1, "vessel-runtime: unknown flag: --no-such-flag\n"},
	} {
		var stderr bytes.Buffer
		if code := run(append([]string{"--root", t.TempDir()}, tc.args...), &stderr); code != tc.code || stderr.String() != tc.want {
			t.Errorf("%v: exit %d %q, want %d %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
}
