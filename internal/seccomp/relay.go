package seccomp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/sys/unix"
)

// A filtered process's call outside its list ends it with Go's crash
// report for the SIGSYS on its fd 2: "SIGSYS: bad system call", the
// goroutines, then the registers, where rax holds the call's number (the
// kernel rolls it back for a seccomp trap). The relay, a child started by
// StartRelay, holds the process's real standard error, passes everything
// through, and replaces such a report with one line.

// parentRelays is set by ParentRelays.
var parentRelays bool

// ParentRelays says that this process's parent relays its standard error
// (Relay), so that StartRelay need not: a jailed VMM is PID 1 of its PID
// namespace, and a relay of its own would die with it before it could
// report; the user network's helper has its VMM relay it, which outlives
// it, rather than start a process for it.
func ParentRelays() { parentRelays = true }

const (
	relayEnv     = "VESSEL_SECCOMP_RELAY"      // set in the relay: the profile's name
	relayLogEnv  = "VESSEL_SECCOMP_LOG"        // a log file the relay also writes the line to
	relayJSONEnv = "VESSEL_SECCOMP_LOG_FORMAT" // "json": the log's lines are runc's JSON
)

// maxReport bounds what the relay holds back while it reads a report.
const maxReport = 1 << 20

// StartRelay makes this process's fd 2 a pipe to a relay process whose
// standard error is the real one (and which also appends its report to
// logPath, in runc's JSON form when json is set). Call it before Install.
func StartRelay(p Profile, logPath string, json bool) error {
	if disabled() || parentRelays {
		return nil
	}
	// This executable again, by /proc/self/exe: in a jail (internal/jail)
	// its path is not there.
	const self = "/proc/self/exe"
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("seccomp: relay: %w", err)
	}
	defer r.Close()
	defer w.Close()
	// A dup: os.Stderr is fd 2, which is about to become the pipe.
	realErr, err := unix.FcntlInt(2, unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return fmt.Errorf("seccomp: relay: %w", err)
	}
	realErrF := os.NewFile(uintptr(realErr), "stderr")
	defer realErrF.Close()
	// The relay gets its stdin and stderr only: descriptors this process
	// was given without close-on-exec (a published port's listener, in
	// the user network's helper) must not live on in it.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fds, _ := os.ReadDir("/proc/self/fd")
		for _, fd := range fds {
			if n, err := strconv.Atoi(fd.Name()); err == nil && n > 2 {
				unix.FcntlInt(uintptr(n), unix.F_SETFD, unix.FD_CLOEXEC)
			}
		}
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), relayEnv+"="+p.String(), relayLogEnv+"="+logPath)
	if json {
		cmd.Env = append(cmd.Env, relayJSONEnv+"=json")
	}
	// Its stdout too: os/exec would open /dev/null, which a jail
	// (internal/jail) does not have.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = r, realErrF, realErrF
	// Its own process group: the terminal's ^C is for the VMM, and the
	// relay must outlive it to report its end.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("seccomp: relay: %w", err)
	}
	// Not waited for: it ends after this process (at the end of its
	// input), and a wait would be a call the filter may not allow.
	if err := unix.Dup3(int(w.Fd()), 2, 0); err != nil {
		cmd.Process.Kill()
		return fmt.Errorf("seccomp: relay: %w", err)
	}
	return nil
}

// RelayMain runs the relay and exits if this process is one (StartRelay
// started it); it returns at once otherwise. Each binary that installs a
// filter calls it first thing in main.
func RelayMain() {
	name := os.Getenv(relayEnv)
	if name == "" {
		return
	}
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE)
	// The log is opened now: the relay's own filter has no openat. The
	// filter keeps the relay to its pipe and descriptors, so that code
	// another process of its user wrote into it gains nothing.
	var logf *os.File
	if path := os.Getenv(relayLogEnv); path != "" {
		logf, _ = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	}
	if err := Install(relay); err != nil {
		fmt.Fprintf(os.Stderr, "vessel: %v\n", err)
		os.Exit(1)
	}
	line := Relay(os.Stdin, os.Stderr, name)
	if line != "" {
		fmt.Fprintln(os.Stderr, line)
		if logf != nil {
			if os.Getenv(relayJSONEnv) == "json" {
				b, _ := json.Marshal(map[string]string{"level": "error", "msg": line, "time": time.Now().UTC().Format(time.RFC3339Nano)})
				fmt.Fprintf(logf, "%s\n", b)
			} else {
				fmt.Fprintln(logf, line)
			}
		}
	}
	os.Exit(0)
}

var sigsysMark = []byte("SIGSYS: bad system call\nPC=")

// regLine finds the first line of text that is register name's in Go's
// register dump ("NAME", spaces, "0x" and lower-case hex digits), and
// returns its hex digits and the offset just past the line's newline
// (-1 without one). (Hand-written rather than a regular expression: the
// package's users compile nothing at start-up, and their binaries carry
// no regexp engine for two patterns.)
func regLine(text []byte, name string) (hex []byte, end int, ok bool) {
	for off := 0; off < len(text); {
		line := text[off:]
		next := -1
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			line, next = line[:i], off+i+1
		}
		if rest, found := bytes.CutPrefix(line, []byte(name+" ")); found {
			rest = bytes.TrimLeft(rest, " ")
			if digits, found := bytes.CutPrefix(rest, []byte("0x")); found && len(digits) > 0 && isLowerHex(digits) {
				return digits, next, true
			}
		}
		if next < 0 {
			break
		}
		off = next
	}
	return nil, -1, false
}

// isLowerHex reports whether b is all lower-case hex digits.
func isLowerHex(b []byte) bool {
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Relay copies in to out until in ends, holding back a seccomp crash
// report (from its mark to the end of its register dump) and returning
// the one line that replaces it. Output that only looks like a report
// (text after the register dump, no rax, or too long) is passed on as it
// was.
func Relay(in io.Reader, out io.Writer, who string) string {
	var held []byte  // from the mark on
	var dump dumpEnd // where held's register dump ends, found as held grows
	var carry []byte
	buf := make([]byte, 32<<10)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			if held != nil {
				held = append(held, buf[:n]...)
				if len(held) > maxReport || dump.after(held) {
					out.Write(held)
					held, dump = nil, dumpEnd{}
				}
			} else {
				data := append(carry, buf[:n]...)
				if i := bytes.Index(data, sigsysMark); i >= 0 {
					out.Write(data[:i])
					held = append([]byte(nil), data[i:]...)
					carry = nil
				} else {
					// Keep what could be the start of a mark.
					keep := min(len(data), len(sigsysMark)-1)
					out.Write(data[:len(data)-keep])
					carry = append(carry[:0:0], data[len(data)-keep:]...)
				}
			}
		}
		if err != nil {
			break
		}
	}
	out.Write(carry)
	if held == nil {
		return ""
	}
	rax, _, ok := regLine(held, "rax")
	_, gsEnd, gsOK := regLine(held, "gs")
	if !ok || !gsOK || gsEnd < 0 {
		out.Write(held)
		return ""
	}
	nr, err := strconv.ParseUint(string(rax), 16, 32)
	if err != nil {
		out.Write(held)
		return ""
	}
	return fmt.Sprintf("vessel: seccomp: the %s made a system call outside its filter, %s (%d), and was stopped", who, syscallName(int(nr)), nr)
}

// dumpEnd finds the end of a held report's register dump (its "gs"
// line's newline) as the report grows, looking at each byte once for a
// newline and scanning each complete line once: the relay reads what a
// process facing the guest writes (the user network's helper's), which
// could otherwise make every byte it sends cost a scan of all it sent
// before (complete lines), or of the whole line it is writing.
type dumpEnd struct {
	from int // held before this offset holds no gs line; the last line, incomplete, starts here
	seen int // held before this offset was looked at for newlines
	end  int // just past the gs line's newline; 0 until found
	// examined counts the bytes looked at, for the test that the work
	// stays linear in what was held.
	examined int
}

// after reports whether text follows the register dump's last line in
// held, which only grows between calls: a crash report ends there,
// with the process.
func (d *dumpEnd) after(held []byte) bool {
	if d.end == 0 {
		d.examined += len(held) - d.seen
		if i := bytes.LastIndexByte(held[d.seen:], '\n'); i >= 0 {
			lines := held[d.from : d.seen+i+1] // the complete lines not scanned yet
			d.examined += len(lines)
			if _, end, ok := regLine(lines, "gs"); ok && end >= 0 {
				d.end = d.from + end
			} else {
				d.from = d.seen + i + 1
			}
		}
		d.seen = len(held)
	}
	return d.end > 0 && d.end < len(held)
}

// syscallName is x86-64's name for the call number nr.
func syscallName(nr int) string {
	if info, err := arch.GetInfo(""); err == nil {
		if name, ok := info.SyscallNumbers[nr]; ok {
			return name
		}
	}
	return "syscall"
}
