package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"
)

// Run is what one boot of one VMM measured. Pointers are nil when the
// quantity was not measured (the JSON leaves them out).
type Run struct {
	VMM    string `json:"vmm"`
	Round  int    `json:"round"` // 1..N; 0 for a warm-up run
	Warmup bool   `json:"warmup,omitempty"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`

	// TimeToInit is from the VMM's start to the uptime line on its
	// console, measured by benchboot (seconds).
	TimeToInit *float64 `json:"time_to_init_s,omitempty"`
	// GuestUptime is the first number of /proc/uptime as the guest
	// printed it: seconds since the guest kernel started.
	GuestUptime *float64 `json:"guest_uptime_s,omitempty"`
	// InitProbe is when a VMM that reports unknown I/O ports (gokvm)
	// reported the guest init's probe of vessel's control port: the
	// moment the init started its work (seconds from the VMM's start).
	InitProbe *float64 `json:"time_to_init_probe_s,omitempty"`
	// BootToInitMS is vessel's own boot_to_init_ms (--metrics).
	BootToInitMS *float64 `json:"vessel_boot_to_init_ms,omitempty"`
	// VesselExit and VesselStatus are how vessel says the VM ended
	// (--metrics "exit" and "status").
	VesselExit   string `json:"vessel_exit,omitempty"`
	VesselStatus *int   `json:"vessel_status,omitempty"`
	// VesselTotalMS is vessel's own total_ms (--metrics).
	VesselTotalMS *float64 `json:"vessel_total_ms,omitempty"`
	// CPUTotal is user+system CPU of the VMM process from wait4's rusage
	// (seconds), whether it exited or was killed.
	CPUTotal *float64 `json:"cpu_total_s,omitempty"`
	// CPUToInit is utime+stime from /proc/PID/stat when the uptime line
	// appeared (10 ms resolution), summed over the VMM's process tree.
	CPUToInit *float64 `json:"cpu_to_init_s,omitempty"`
	// CPUBeforeKill is utime+stime from /proc/PID/stat just before
	// benchboot killed a VMM that did not exit by itself.
	CPUBeforeKill *float64 `json:"cpu_before_kill_s,omitempty"`
	// Exits are vessel's userspace exits by reason (--metrics).
	Exits      map[string]uint64 `json:"exits,omitempty"`
	ExitsTotal *float64          `json:"exits_total,omitempty"`
	// Memory, sampled from /proc/PID/smaps when the uptime line appeared
	// (MiB): all resident memory, the guest-RAM mappings' part, and the
	// rest, the VMM's overhead.
	// They are the VMM process's: the one that maps the guest RAM.
	RSSMiB         *float64 `json:"rss_mib,omitempty"`
	GuestRSSMiB    *float64 `json:"guest_rss_mib,omitempty"`
	MemOverheadMiB *float64 `json:"mem_overhead_mib,omitempty"`
	// TreeOverheadPSSMiB is the PSS of the VMM's whole process tree (the
	// process benchboot started and all its descendants) minus the guest
	// RAM's PSS: what it costs to serve the VM when one process supervises
	// another (vessel's jailed VMM).
	TreeOverheadPSSMiB *float64 `json:"tree_overhead_pss_mib,omitempty"`
	// Processes counts that tree at the marker.
	Processes *float64 `json:"processes,omitempty"`
	// Wall is from the VMM's start to its exit (seconds).
	Wall *float64 `json:"wall_s,omitempty"`
	// Ending says how the process ended, e.g. "exit status 0" or
	// "killed by benchboot after the guest stopped".
	Ending string   `json:"ending,omitempty"`
	Notes  []string `json:"notes,omitempty"`
	// ConsoleTail holds the last console lines of a failed run.
	ConsoleTail []string `json:"console_tail,omitempty"`
	StderrTail  []string `json:"stderr_tail,omitempty"`
}

func ptr(x float64) *float64 { return &x }

func seconds(d time.Duration) *float64 { return ptr(d.Seconds()) }

// runner runs VMMs one at a time.
type runner struct {
	cfg    *config
	tmpDir string // for vessel's metrics files
}

// afterStopWait is how long a VMM that is not expected to exit by itself
// (gokvm) gets after the uptime line or the guest's last words before it
// is killed; the others get --grace.
const afterStopWait = 2 * time.Second

// consoleEvent is one console line and when benchboot read it.
type consoleEvent struct {
	t    time.Time
	line string
}

// runOne boots spec once and measures it. It never returns before the
// VMM process (and its process group) is gone.
func (r *runner) runOne(ctx context.Context, spec vmmSpec, round int, warmup bool) Run {
	res := Run{VMM: spec.Name, Round: round, Warmup: warmup}
	metrics := filepath.Join(r.tmpDir, fmt.Sprintf("%s-%d-metrics.json", spec.Name, round))
	if warmup {
		metrics = filepath.Join(r.tmpDir, fmt.Sprintf("%s-warmup-metrics.json", spec.Name))
	}
	defer os.Remove(metrics)

	outR, outW, err := os.Pipe()
	if err != nil {
		return failed(res, fmt.Sprintf("console pipe: %v", err))
	}
	defer outR.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		outW.Close()
		return failed(res, fmt.Sprintf("stderr pipe: %v", err))
	}
	defer errR.Close()

	cmd := exec.Command(spec.Path, spec.Args(metrics)...)
	cmd.Stdout, cmd.Stderr = outW, errW // stdin: /dev/null unless spec.Terminal
	if spec.Terminal {
		master, slave, err := newTerminal()
		if err != nil {
			outW.Close()
			errW.Close()
			return failed(res, err.Error())
		}
		// The master stays open until the VMM is gone: a hang-up would
		// end its input.
		defer master.Close()
		defer slave.Close()
		cmd.Stdin = slave
	}
	// A process group of its own, so a kill reaches anything it started;
	// and it dies with benchboot.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		return failed(res, fmt.Sprintf("cannot start %s: %v", spec.Path, err))
	}
	pid := cmd.Process.Pid
	defer syscall.Kill(-pid, syscall.SIGKILL) // stragglers in its group

	lines := make(chan consoleEvent, 1024)
	go readLines(outR, lines)
	var stderrTail tail
	stderrTail.max = 20
	var stderrDone sync.WaitGroup
	stderrDone.Add(1)
	go func() {
		defer stderrDone.Done()
		sc := bufio.NewScanner(errR)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			stderrTail.add(sc.Text())
		}
	}()
	waitCh := make(chan error, 1)
	go func() { waitCh <- cmd.Wait() }()

	var (
		console    = tail{max: 30}
		marker     time.Time // when the uptime line appeared
		probe      string    // the console line reporting the init's control-port probe
		stopped    time.Time // when the guest said it stopped
		timeout    = time.NewTimer(r.cfg.Timeout)
		deadline   <-chan time.Time // after the marker or a stop line
		killedWhy  string
		exited     bool
		interruped bool
	)
	defer timeout.Stop()

	kill := func(why string) {
		if cpu, err := readStatCPU(pid); err == nil {
			res.CPUBeforeKill = seconds(cpu)
		}
		killedWhy = why
		syscall.Kill(-pid, syscall.SIGKILL)
	}

	for !exited {
		select {
		case ev, ok := <-lines:
			if !ok {
				lines = nil
				continue
			}
			console.add(ev.line)
			if probe == "" && isControlPortProbe(ev.line) {
				probe = ev.line
				res.InitProbe = seconds(ev.t.Sub(start))
			}
			if marker.IsZero() {
				if up, ok := ParseUptime(ev.line); ok {
					marker = ev.t
					res.TimeToInit = seconds(marker.Sub(start))
					res.GuestUptime = ptr(up)
					r.sampleAtMarker(pid, spec.MemMiB, &res)
					wait := afterStopWait
					if spec.ExitsOnItsOwn {
						wait = r.cfg.Grace
					}
					deadline = time.After(wait)
				}
			}
			if stopped.IsZero() && isPowerOffLine(ev.line) {
				// The guest is done (or crashed): whatever the VMM does
				// next, there is nothing more to measure.
				stopped = ev.t
				wait := afterStopWait
				if spec.ExitsOnItsOwn {
					wait = r.cfg.Grace
				}
				deadline = time.After(wait)
			}
		case err := <-waitCh:
			exited = true
			if err != nil && !errors.As(err, new(*exec.ExitError)) {
				res.Notes = append(res.Notes, "wait: "+err.Error())
			}
		case <-deadline:
			deadline = nil
			switch {
			case !stopped.IsZero():
				kill("killed by benchboot after the guest stopped")
			default:
				kill("killed by benchboot after the uptime line")
			}
		case <-timeout.C:
			kill("killed by benchboot at the timeout")
		case <-ctx.Done():
			interruped = true
			kill("killed by benchboot: interrupted")
		}
	}
	end := time.Now()
	res.Wall = seconds(end.Sub(start))
	syscall.Kill(-pid, syscall.SIGKILL)
	// The console pipe reaches EOF once nothing holds its write end.
	drain := time.After(2 * time.Second)
	for lines != nil {
		select {
		case ev, ok := <-lines:
			if !ok {
				lines = nil
				break
			}
			console.add(ev.line)
		case <-drain:
			res.Notes = append(res.Notes, "console still open 2s after the VMM exited")
			outR.Close()
			lines = nil
		}
	}
	stderrDone.Wait()

	ps := cmd.ProcessState
	res.Ending = ps.String()
	if killedWhy != "" {
		res.Ending = killedWhy
	}
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		res.CPUTotal = ptr(time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds())
	}
	if spec.Name == nameVessel {
		r.readVesselMetrics(metrics, &res)
	}

	why := ""
	switch {
	case interruped:
		why = "interrupted"
	case marker.IsZero() && probe != "":
		// The time is in InitProbe: keep the reason the same across runs.
		why = fmt.Sprintf("%s stopped the guest when its init probed vessel's control port (%q: "+
			"it treats any unknown I/O port as fatal), then ended with %s", spec.Name, strings.TrimSpace(probe), ps)
	case marker.IsZero() && !stopped.IsZero():
		why = "the guest stopped without printing the uptime line"
	case marker.IsZero() && killedWhy != "":
		why = fmt.Sprintf("no uptime line within %v", r.cfg.Timeout)
	case marker.IsZero():
		why = fmt.Sprintf("%s before printing the uptime line", ps)
	case spec.Name == nameVessel && killedWhy != "":
		why = fmt.Sprintf("vessel did not exit within %v after the guest command finished (%s)", r.cfg.Grace, killedWhy)
	case spec.Name == nameVessel && !ps.Success():
		why = fmt.Sprintf("vessel ended with %s", ps)
	}
	if why != "" {
		if res.VesselExit != "" {
			why += fmt.Sprintf(" (vessel --metrics: exit %s, status %d", res.VesselExit, *res.VesselStatus)
			if res.BootToInitMS != nil {
				why += fmt.Sprintf(", the init wrote its boot marker at %.0f ms", *res.BootToInitMS)
			}
			why += ")"
		}
		if l := console.last(); l != "" {
			why += fmt.Sprintf("; last console line: %q", l)
		} else {
			why += "; the console stayed silent"
		}
		if l := stderrTail.summary(); l != "" {
			why += fmt.Sprintf("; stderr: %q", l)
		}
		res = failed(res, why)
		res.ConsoleTail = console.lines
		res.StderrTail = stderrTail.lines
		return res
	}
	res.OK = true
	return res
}

// sampleAtMarker stops the VMM's processes for a moment (so none can exit
// while they are read) and samples their CPU time and memory. A VMM may
// serve the VM with several processes (vessel's jailed VMM is a child of
// the vessel process that waits for it): the VMM process is the one that
// maps the guest RAM, and the totals cover pid and all its descendants.
func (r *runner) sampleAtMarker(pid, memMiB int, res *Run) {
	pids := processTree(pid)
	for _, p := range pids {
		if err := syscall.Kill(p, syscall.SIGSTOP); err == nil {
			defer syscall.Kill(p, syscall.SIGCONT)
		}
	}
	var cpu time.Duration
	for i, p := range pids {
		c, err := readStatCPU(p)
		if err != nil {
			if i == 0 {
				res.Notes = append(res.Notes, "CPU at the marker: "+err.Error())
				return
			}
			continue // a child that just ended
		}
		cpu += c
	}
	res.CPUToInit = seconds(cpu)
	res.Processes = ptr(float64(len(pids)))

	var (
		vmm, top *MemUsage
		vmms     int
		pss      uint64
		guestPSS uint64
		lastErr  error
	)
	for _, p := range pids {
		maps, err := readSmaps(p)
		if err != nil {
			continue
		}
		u, err := SplitGuestRAM(maps, uint64(memMiB)<<20)
		if top == nil {
			top = &u
		}
		pss += u.PSS
		guestPSS += u.GuestPSS
		if err != nil {
			lastErr = err
			continue
		}
		vmms++
		if vmm == nil {
			vmm = &u
		}
	}
	if vmm == nil {
		if lastErr == nil {
			lastErr = errors.New("no process left to read")
		}
		if top != nil {
			res.RSSMiB = ptr(mib(top.RSS))
		}
		res.Notes = append(res.Notes, "memory: "+lastErr.Error())
		return
	}
	res.RSSMiB = ptr(mib(vmm.RSS))
	res.GuestRSSMiB = ptr(mib(vmm.GuestRSS))
	res.MemOverheadMiB = ptr(mib(vmm.Overhead))
	res.TreeOverheadPSSMiB = ptr(mib(pss - guestPSS))
	if vmm.GuestMaps != 1 {
		res.Notes = append(res.Notes, fmt.Sprintf("memory: %d mappings of the guest RAM size", vmm.GuestMaps))
	}
	if vmms != 1 {
		res.Notes = append(res.Notes, fmt.Sprintf("memory: %d processes map memory of the guest RAM size; the first was taken as the VMM", vmms))
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// vesselMetrics is the JSON `vessel vm run --metrics` writes.
type vesselMetrics struct {
	Exit         string            `json:"exit"`
	Status       int               `json:"status"`
	BootToInitMS float64           `json:"boot_to_init_ms"`
	TotalMS      float64           `json:"total_ms"`
	Exits        map[string]uint64 `json:"exits"`
}

func (r *runner) readVesselMetrics(path string, res *Run) {
	b, err := os.ReadFile(path)
	if err == nil && len(b) == 0 {
		err = errors.New("empty")
	}
	if err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("--metrics: %v", err))
		return
	}
	var m vesselMetrics
	if err := json.Unmarshal(b, &m); err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("--metrics: %v", err))
		return
	}
	if m.BootToInitMS > 0 {
		res.BootToInitMS = ptr(m.BootToInitMS)
	} else {
		res.Notes = append(res.Notes, "--metrics: boot_to_init_ms is 0 (the guest init never wrote the boot marker)")
	}
	res.VesselTotalMS = ptr(m.TotalMS)
	res.VesselExit, res.VesselStatus = m.Exit, &m.Status
	res.Exits = m.Exits
	var sum uint64
	for _, n := range m.Exits {
		sum += n
	}
	res.ExitsTotal = ptr(float64(sum))
	if m.Exit != "guest-status" && m.Exit != "" {
		res.Notes = append(res.Notes, fmt.Sprintf("--metrics: exit %q status %d", m.Exit, m.Status))
	}
}

// readLines sends every line read from r, timestamped when read, and
// closes ch at EOF. A last line without a newline is sent too.
func readLines(r io.Reader, ch chan<- consoleEvent) {
	defer close(ch)
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		s, err := br.ReadString('\n')
		if s != "" {
			ch <- consoleEvent{t: time.Now(), line: strings.TrimRight(s, "\r\n")}
		}
		if err != nil {
			return
		}
	}
}

func failed(r Run, why string) Run {
	r.OK = false
	r.Error = why
	return r
}

// newTerminal opens a pseudo-terminal pair for a VMM's stdin.
func newTerminal() (console.Console, *os.File, error) {
	m, name, err := console.NewPty()
	if err != nil {
		return nil, nil, fmt.Errorf("pty: %w", err)
	}
	s, err := os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("pty slave %s: %w", name, err)
	}
	return m, s, nil
}
