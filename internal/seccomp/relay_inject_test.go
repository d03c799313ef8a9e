package seccomp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"

	bpf "github.com/elastic/go-seccomp-bpf"
)

// The relay StartRelay starts is a child of the filtered process and
// runs the same executable. A compromised filtered process (openat and
// pwrite64 are on its list) that writes the relay's code through
// /proc/<relay>/mem must gain nothing: the relay is not dumpable (only
// CAP_SYS_PTRACE opens its memory) and has a filter of its own that
// refuses what the VMM's refuses. (Found by the session 9 review.)

const injectEnv = "SECCOMP_TEST_RELAY_INJECT"

func init() {
	if os.Getenv(injectEnv) != "" && os.Getenv(relayEnv) == "" {
		injectChild()
	}
}

// escaped runs in the relay once its code is patched: it makes
// calls the VMM filter refuses (execve of a shell) and leaves a marker.
var escapedOnce bool

//go:noinline
func escaped() {
	if escapedOnce {
		return
	}
	escapedOnce = true
	marker := os.Getenv(injectEnv)
	status, _ := os.ReadFile("/proc/self/status")
	var sc string
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "Seccomp:") {
			sc = strings.Join(strings.Fields(l), " ")
		}
	}
	exec.Command("/bin/sh", "-c", "echo \"escaped pid $$ "+sc+"\" > "+marker).Run()
}

// injectChild plays the compromised VMM: it installs the VMM filter with
// its relay, then patches the relay.
func injectChild() {
	fail := func(f string, a ...any) {
		fmt.Fprintf(os.Stdout, "inject: "+f+"\n", a...)
		os.Exit(3)
	}
	if err := StartRelay(VMM, "", false); err != nil {
		fail("relay: %v", err)
	}
	if err := Install(VMM); err != nil {
		fail("install: %v", err)
	}
	// From here on, only what the VMM filter allows.
	relay := 0
	ents, _ := os.ReadDir("/proc")
	self := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == self {
			relay, _ = strconv.Atoi(e.Name())
		}
	}
	if relay == 0 {
		fail("no relay child")
	}
	target := reflect.ValueOf((*os.File).Write).Pointer()
	if n := runtime.FuncForPC(target).Name(); n != "os.(*File).Write" {
		fail("target is %s", n)
	}
	evil := reflect.ValueOf(escaped).Pointer()
	// The same executable, not position-independent: the same addresses.
	// movabs rax, evil; jmp rax
	code := []byte{0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xe0}
	binary.LittleEndian.PutUint64(code[2:], uint64(evil))
	mem, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", relay), os.O_RDWR, 0)
	if err != nil {
		fail("open the relay's memory: %v", err)
	}
	if _, err := mem.WriteAt(code, int64(target)); err != nil {
		fail("write the relay's code: %v", err)
	}
	mem.Close()
	fmt.Fprintln(os.Stdout, "patched")
	// The relay writes what it reads to its stderr: the patched Write.
	os.Stderr.WriteString("trigger\n")
	os.Exit(0)
}

// TestRelayInjection: a filtered process that patches its relay's code
// to run a shell there does not get the shell run. As root (this test
// run by make test), the write itself succeeds (CAP_SYS_PTRACE) and the
// relay's filter stops the shell.
func TestRelayInjection(t *testing.T) {
	if !bpf.Supported() {
		t.Skip("no seccomp")
	}
	marker := filepath.Join(t.TempDir(), "escaped")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), injectEnv+"="+marker)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("child: %v, stdout %q, stderr %q", err, stdout.String(), stderr.String())
	b, rerr := os.ReadFile(marker)
	if rerr == nil {
		t.Errorf("the VMM-filtered process ran code in its unfiltered relay: %q", strings.TrimSpace(string(b)))
	}
}
