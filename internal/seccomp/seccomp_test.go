package seccomp

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	bpf "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	RelayMain()
	if os.Getenv("SECCOMP_TEST_CHILD") != "" {
		child()
		return
	}
	os.Exit(m.Run())
}

// listed reports whether p allows name without conditions, and whether
// with some.
func listed(t *testing.T, p Profile, name string) (plain, cond bool) {
	t.Helper()
	policy, err := p.policy()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range policy.Syscalls {
		if g.Action != bpf.ActionAllow {
			continue
		}
		for _, n := range g.Names {
			plain = plain || n == name
		}
		for _, n := range g.NamesWithCondtions {
			cond = cond || n.Name == name
		}
	}
	return plain, cond
}

// TestProfiles: what each allow-list lets through, and what it keeps
// from a compromised process.
func TestProfiles(t *testing.T) {
	const (
		no    = 0
		plain = 1
		cond  = 2
	)
	for _, tc := range []struct {
		p     Profile
		calls map[string]int
	}{
		{VMM, map[string]int{
			"read": plain, "futex": plain, "openat": cond, "pwritev": plain, "accept4": plain,
			"fchmodat": cond, "fchmod": cond, "mkdirat": cond,
			// The shares' calls are the share server's.
			"mknodat": no, "symlinkat": no, "linkat": no, "fchown": no, "fchownat": no, "utimensat": no,
			"openat2": no, "truncate": no, "fgetxattr": no,
			"ioctl": cond, "socket": cond, "clone": cond, "mmap": cond, "mprotect": cond,
			"execve": no, "execveat": no, "fork": no, "vfork": no, "clone3": no, "ptrace": no,
			"mount": no, "umount2": no, "pivot_root": no, "chroot": no, "setns": no, "unshare": no,
			"setuid": no, "bpf": no, "init_module": no, "kexec_load": no, "keyctl": no,
			"process_vm_writev": no, "reboot": no, "perf_event_open": no, "userfaultfd": no,
		}},
		{RuntimeVMM, map[string]int{
			"mount": plain, "move_mount": plain, "umount2": plain, "socket": cond,
			"execve": no, "open_tree": no, "setns": no, "unshare": no, "pivot_root": no,
		}},
		{Share, map[string]int{
			"openat": cond, "openat2": no, "mkdirat": cond, "mknodat": cond, "fchmodat": cond, "fchownat": plain,
			"symlinkat": plain, "linkat": plain, "renameat": plain, "unlinkat": plain, "recvmsg": plain,
			"socket": no, "connect": no, "bind": no, "sendmsg": no, "ioctl": no, "kill": no,
			"execve": no, "mount": no, "fork": no,
		}},
		{Usernet, map[string]int{
			"sendmsg": plain, "connect": plain, "socket": cond, "openat": cond,
			"ioctl": cond, "execve": no, "unlinkat": no, "renameat": no, "mount": no,
			"fchown": no, "mkdirat": no,
		}},
	} {
		for name, want := range tc.calls {
			p, c := listed(t, tc.p, name)
			got := no
			if p {
				got = plain
			} else if c {
				got = cond
			}
			if got != want {
				t.Errorf("%s profile, %s: %d, want %d (0 refused, 1 allowed, 2 allowed on conditions)", tc.p, name, got, want)
			}
		}
	}
}

// TestRelay: a crash report for a seccomp trap becomes one line naming
// the call; other output passes through unchanged, reports that are not
// whole or are followed by more output included.
func TestRelay(t *testing.T) {
	report, err := os.ReadFile(filepath.Join("testdata", "getppid-report.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, in, out, line string
	}{
		{"plain output", "hello\nworld", "hello\nworld", ""},
		{"report", "before\n" + string(report), "before\n", "vessel: seccomp: the VMM made a system call outside its filter, getppid (110), and was stopped"},
		{"text after the report", string(report) + "more\n", string(report) + "more\n", ""},
		{"no registers", "SIGSYS: bad system call\nPC=0x1 m=0 sigcode=1\n", "SIGSYS: bad system call\nPC=0x1 m=0 sigcode=1\n", ""},
		{"mark split over reads", "x" + string(report), "x", "vessel: seccomp: the VMM made a system call outside its filter, getppid (110), and was stopped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			line := Relay(&chunked{data: []byte(tc.in), n: 7}, &out, "VMM")
			if out.String() != tc.out || line != tc.line {
				t.Errorf("out %q line %q, want %q %q", out.String(), line, tc.out, tc.line)
			}
		})
	}
}

// chunked reads n bytes at a time.
type chunked struct {
	data []byte
	n    int
}

func (c *chunked) Read(b []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, os.ErrClosed
	}
	k := min(c.n, len(b), len(c.data))
	copy(b, c.data[:k])
	c.data = c.data[k:]
	return k, nil
}

// child is TestEnforced's process: it installs the VMM filter with its
// relay, reports the seccomp mode of each of its threads, and makes the
// system call it was asked to.
func child() {
	if err := StartRelay(VMM, "", false); err != nil {
		os.Stdout.WriteString("relay: " + err.Error() + "\n")
		os.Exit(1)
	}
	if err := Install(VMM); err != nil {
		os.Stdout.WriteString("install: " + err.Error() + "\n")
		os.Exit(1)
	}
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		b, _ := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "status"))
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Seccomp:") {
				os.Stdout.WriteString(strings.Join(strings.Fields(l), " ") + "\n")
			}
		}
	}
	// The heap grows (new mappings, which Go's runtime names) and
	// threads start, under the filter.
	var sink [][]byte
	done := make(chan bool)
	for i := 0; i < 8; i++ {
		go func() {
			b := make([]byte, 8<<20)
			b[0] = 1
			done <- b[0] == 1
		}()
		sink = append(sink, make([]byte, 4<<20))
	}
	for i := 0; i < 8; i++ {
		<-done
	}
	_ = sink
	os.Stdout.WriteString("ok\n")
	switch os.Getenv("SECCOMP_TEST_CHILD") {
	case "ptrace":
		syscall.RawSyscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
	case "socket-inet":
		syscall.RawSyscall(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
	case "chmod-setuid":
		// A plain mode is allowed; a set-user-ID one is not.
		f := os.Getenv("SECCOMP_TEST_FILE")
		if err := unix.Fchmodat(unix.AT_FDCWD, f, 0o755, 0); err != nil {
			os.Stdout.WriteString("chmod 0755: " + err.Error() + "\n")
			os.Exit(1)
		}
		unix.Fchmodat(unix.AT_FDCWD, f, 0o4755, 0)
	}
	os.Exit(0)
}

// TestEnforced: in a process of its own, the VMM filter is on every
// thread (Seccomp: 2), allowed calls work, and a call outside the list
// (ptrace; a socket of a family other than AF_UNIX) stops the process
// with Go's exit status 2 and one line on standard error.
func TestEnforced(t *testing.T) {
	if !bpf.Supported() {
		t.Fatal("seccomp filters are not supported by this kernel")
	}
	for _, tc := range []struct {
		call, name string
		nr         int
	}{
		{"none", "", 0},
		{"ptrace", "ptrace", unix.SYS_PTRACE},
		{"socket-inet", "socket", unix.SYS_SOCKET},
		{"chmod-setuid", "fchmodat", unix.SYS_FCHMODAT},
	} {
		t.Run(tc.call, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "f")
			if err := os.WriteFile(file, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), "SECCOMP_TEST_CHILD="+tc.call, "SECCOMP_TEST_FILE="+file)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			out := stdout.String()
			if !strings.HasSuffix(out, "ok\n") || strings.Count(out, "Seccomp: 2\n") < 2 || strings.Contains(out, "Seccomp: 0") {
				t.Errorf("the child's threads: %q, want Seccomp: 2 on each", out)
			}
			if tc.name == "" {
				if err != nil || stderr.Len() > 0 {
					t.Errorf("an allowed run: %v, stderr %q", err, stderr.String())
				}
				return
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Errorf("%s: %v, want exit status 2", tc.call, err)
			}
			if fi, err := os.Stat(file); err != nil || fi.Mode()&os.ModeSetuid != 0 {
				t.Errorf("%s: %v, %v: the file became set-user-ID", tc.call, fi.Mode(), err)
			}
			want := "vessel: seccomp: the VMM made a system call outside its filter, " + tc.name
			if s := stderr.String(); !strings.HasPrefix(s, want) || strings.Count(s, "\n") != 1 {
				t.Errorf("stderr %q, want one line starting %q", s, want)
			}
		})
	}
}

// TestRegLine: a register's line in Go's crash report is its name at the
// start of a line, spaces, and 0x with lower-case hex digits to the line's
// end; the end is past its newline, -1 without one.
func TestRegLine(t *testing.T) {
	for _, tc := range []struct {
		text, name, hex string
		end             int
		ok              bool
	}{
		{"rax    0x65\nrbx 0x0\n", "rax", "65", 12, true},
		{"r8 0x1\nrax 0x3a\n", "rax", "3a", 16, true},
		{"rax 0x3a", "rax", "3a", -1, true},
		{"raxx 0x1\n", "rax", "", -1, false},
		{" rax 0x1\n", "rax", "", -1, false},
		{"rax 0x\n", "rax", "", -1, false},
		{"rax 0xABC\n", "rax", "", -1, false},
		{"rax 0x1 more\n", "rax", "", -1, false},
		{"rax0x1\n", "rax", "", -1, false},
		{"gs 0xZ\ngs     0x0\nfs 0x0\n", "gs", "0", 18, true},
		{"", "gs", "", -1, false},
	} {
		hex, end, ok := regLine([]byte(tc.text), tc.name)
		if string(hex) != tc.hex || end != tc.end || ok != tc.ok {
			t.Errorf("regLine(%q, %q) = %q, %d, %v; want %q, %d, %v", tc.text, tc.name, hex, end, ok, tc.hex, tc.end, tc.ok)
		}
	}
}

// TestDumpEnd: a held report's dump end is found as the report grows one
// byte at a time, and the complete lines before the last are not scanned
// again (a writer sending a byte at a time must not cost the relay a
// scan of everything it sent before for each one).
func TestDumpEnd(t *testing.T) {
	report := "SIGSYS: bad system call\nPC=0x1 m=0\nrax    0x65\nrbx 0x0\ngs     0x0\nexit status 2\n"
	var d dumpEnd
	var held []byte
	for i := 0; i < len(report); i++ {
		held = append(held, report[i])
		after := d.after(held)
		end := strings.Index(report, "gs     0x0\n") + len("gs     0x0\n")
		if want := len(held) > end; after != want {
			t.Fatalf("after %q: %v, want %v", held, after, want)
		}
		if d.end == 0 {
			if last := bytes.LastIndexByte(held, '\n'); d.from != last+1 {
				t.Fatalf("after %q: scanning from %d, want %d (past the last complete line)", held, d.from, last+1)
			}
		}
	}
}

// TestDumpEndLinear: a report held while its writer sends one byte at a
// time, with a long line that never ends, costs the relay work linear
// in its length: the incomplete line is not scanned again for every
// byte (it was, making a 128 KiB line cost seconds of a VMM core).
func TestDumpEndLinear(t *testing.T) {
	report := []byte("SIGSYS: bad system call\nPC=0x1 m=0\nrax    0x65\n" + strings.Repeat("x", 64<<10))
	var d dumpEnd
	for i := 1; i <= len(report); i++ {
		if d.after(report[:i]) {
			t.Fatal("a report without its gs line ended")
		}
	}
	if d.examined > 3*len(report) {
		t.Errorf("%d bytes examined for a report of %d sent a byte at a time, want at most 3 times its length", d.examined, len(report))
	}
}
