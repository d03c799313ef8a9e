package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// spec is what the host tells the outer VM's init to run. It travels in the
// initramfs as specPath, which init deletes after reading (it holds the
// per-run nonce that authenticates the exit-status line).
type spec struct {
	Argv     []string `json:"argv"`
	Dir      string   `json:"dir"`
	Env      []string `json:"env"`
	UID      int      `json:"uid"`
	GID      int      `json:"gid"`
	Groups   []int    `json:"groups"`
	Umask    int      `json:"umask"`
	Hostname string   `json:"hostname"`
	// Nonce prefixes every line init prints for the host to parse.
	Nonce string `json:"nonce"`
	// HostTimeNs is the host's wall clock (Unix ns) when QEMU was started:
	// the outer VM has no RTC, init sets its clock from this.
	HostTimeNs int64 `json:"host_time_ns"`
	// TmpfsDirs are mounted as fresh tmpfs (e.g. /tmp, /run) in the outer VM.
	TmpfsDirs []string `json:"tmpfs_dirs"`
	// NineP are the options of the host-root 9p mount.
	NineP   string `json:"ninep"`
	Verbose bool   `json:"verbose"`
}

const specPath = "/testvm-spec.json"

// Names of the virtio-serial ports that carry the command's output.
const (
	stdoutPort = "testvm.stdout"
	stderrPort = "testvm.stderr"
)

func (s *spec) marshal() ([]byte, error) { return json.Marshal(s) }

func parseSpec(b []byte) (*spec, error) {
	var s spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("bad spec: %w", err)
	}
	if len(s.Argv) == 0 || s.Argv[0] == "" {
		return nil, fmt.Errorf("bad spec: empty argv")
	}
	if !validNonce(s.Nonce) {
		return nil, fmt.Errorf("bad spec: bad nonce")
	}
	if !filepath.IsAbs(s.Dir) {
		return nil, fmt.Errorf("bad spec: working directory %q is not absolute", s.Dir)
	}
	return &s, nil
}

func newNonce() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

var nonceRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

func validNonce(n string) bool { return nonceRE.MatchString(n) }

// Console protocol. Init prints these lines on the serial console (which
// carries only kernel and init output, never the command's), each prefixed
// with the per-run nonce:
//
//	NONCE:testvm-start                   the command is about to start
//	NONCE:testvm-alive                   init is still running, every
//	                                     aliveEvery while the command runs
//	NONCE:testvm-exit:STATUS:OUTN:ERRN   it exited with STATUS after writing
//	                                     OUTN bytes to stdout, ERRN to stderr
//	NONCE:testvm-error:MESSAGE           init could not run the command
//
// and the host answers an exit line with NONCE:testvm-ack on the console's
// input once it has received all OUTN+ERRN bytes; init then powers off.
type markerKind int

const (
	markNone markerKind = iota
	markStart
	markAlive
	markExit
	markError
)

type marker struct {
	Kind       markerKind
	Status     int
	OutN, ErrN int64
	Msg        string
}

func startLine(nonce string) string { return nonce + ":testvm-start" }
func aliveLine(nonce string) string { return nonce + ":testvm-alive" }
func ackLine(nonce string) string   { return nonce + ":testvm-ack" }

// aliveEvery is how often init shows it is alive while the command runs.
// The host counts an outer VM silent for --alive-limit (many of these
// periods) as wedged: on the emulated platform one outer CPU can stay
// in a nested guest for good, and the rest of the outer VM then waits
// on it without a word (no RCU stall report, no timer of init's firing).
const aliveEvery = 10 * time.Second

func exitLine(nonce string, status int, outN, errN int64) string {
	return fmt.Sprintf("%s:testvm-exit:%d:%d:%d", nonce, status, outN, errN)
}

func errorLine(nonce, msg string) string {
	msg = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, msg)
	return nonce + ":testvm-error:" + msg
}

// parseMarker recognises a protocol line carrying this run's nonce. The
// marker may follow other text on the same line (console output is not
// guaranteed to start on a fresh line), but must extend to the line's end.
func parseMarker(line, nonce string) (marker, bool) {
	if nonce == "" {
		return marker{}, false
	}
	i := strings.LastIndex(line, nonce+":testvm-")
	if i < 0 {
		return marker{}, false
	}
	rest := strings.TrimRight(line[i+len(nonce)+len(":testvm-"):], " \t\r")
	switch {
	case rest == "start":
		return marker{Kind: markStart}, true
	case rest == "alive":
		return marker{Kind: markAlive}, true
	case strings.HasPrefix(rest, "error:"):
		return marker{Kind: markError, Msg: strings.TrimPrefix(rest, "error:")}, true
	case strings.HasPrefix(rest, "exit:"):
		f := strings.Split(strings.TrimPrefix(rest, "exit:"), ":")
		if len(f) != 3 {
			return marker{}, false
		}
		st, err1 := strconv.Atoi(f[0])
		on, err2 := strconv.ParseInt(f[1], 10, 64)
		en, err3 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || st < 0 || st > 255 || on < 0 || en < 0 {
			return marker{}, false
		}
		return marker{Kind: markExit, Status: st, OutN: on, ErrN: en}, true
	}
	return marker{}, false
}

// Outer-kernel crash classification.

// kernelLineRE matches a printk line (the kernel is built with
// CONFIG_PRINTK_TIME, so every console line it prints starts with a timestamp).
var kernelLineRE = regexp.MustCompile(`^\[\s*\d+\.\d+\]`)

// crashRE matches the first line of an oops, panic or similar.
var crashRE = regexp.MustCompile(`Kernel panic|\bBUG: |general protection fault|\bOops\b|kernel BUG at|[Uu]nable to handle|double fault|stack guard page|soft lockup|hard LOCKUP|stack-protector|Machine check`)

type consoleLine struct {
	Text string
	// AfterStart is true for lines printed after init announced the command's start.
	AfterStart bool
}

// outerCrash returns the first line that shows the outer kernel crashing:
// lines before the command started may come only from the kernel or init;
// after it started, only printk-formatted lines count (the command could
// write to /dev/console). A panic because init itself died is testvm's own
// failure, not the platform's, and does not count.
func outerCrash(lines []consoleLine) (string, bool) {
	for _, l := range lines {
		t := strings.TrimSpace(l.Text)
		if l.AfterStart && !kernelLineRE.MatchString(t) {
			continue
		}
		if strings.Contains(t, "Attempted to kill init") || strings.Contains(t, "No working init found") {
			return "", false
		}
		if crashRE.MatchString(t) {
			return t, true
		}
	}
	return "", false
}

// Environment passed to the command.

// envDrop lists variables that describe the host session and mean nothing
// (or something wrong) inside the outer VM.
var envDrop = map[string]bool{
	"SSH_AUTH_SOCK": true, "SSH_AGENT_PID": true, "SSH_CONNECTION": true, "SSH_CLIENT": true, "SSH_TTY": true,
	"DISPLAY": true, "WAYLAND_DISPLAY": true, "XAUTHORITY": true, "DBUS_SESSION_BUS_ADDRESS": true,
	"XDG_RUNTIME_DIR": true, "TMUX": true, "TMUX_PANE": true, "STY": true, "WINDOWID": true,
	"GPG_AGENT_INFO": true, "NOTIFY_SOCKET": true, "LISTEN_FDS": true, "LISTEN_PID": true,
	"LISTEN_FDNAMES": true, "INVOCATION_ID": true, "JOURNAL_STREAM": true,
}

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// guestEnv returns the host environment minus host-session variables, with
// a PATH guaranteed.
func guestEnv(host []string) []string {
	var env []string
	hasPath := false
	for _, kv := range host {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || envDrop[k] {
			continue
		}
		if k == "PATH" {
			hasPath = true
		}
		env = append(env, kv)
	}
	if !hasPath {
		env = append(env, "PATH="+defaultPath)
	}
	return env
}

// tmpfsDirs returns the candidates (e.g. /tmp, /run) that may be covered by
// a fresh tmpfs: those under which none of the protected paths lies (a tmpfs
// over the checkout, the Go cache or the command itself would hide them).
func tmpfsDirs(candidates, protected []string) []string {
	var out []string
	for _, c := range candidates {
		ok := true
		for _, p := range protected {
			if p == c || strings.HasPrefix(p, strings.TrimSuffix(c, "/")+"/") {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, c)
		}
	}
	return out
}

// protectedPaths collects absolute paths the command may need from the host:
// the working directory, the arguments and path-like environment values.
func protectedPaths(dir string, argv, env []string) []string {
	ps := []string{filepath.Clean(dir)}
	add := func(v string) {
		for _, p := range filepath.SplitList(v) {
			if filepath.IsAbs(p) {
				ps = append(ps, filepath.Clean(p))
			}
		}
	}
	for _, a := range argv {
		if _, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(a, "-") {
			a = v // -flag=/path
		}
		add(a)
	}
	for _, kv := range env {
		_, v, _ := strings.Cut(kv, "=")
		add(v)
	}
	return ps
}
