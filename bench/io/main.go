// Command benchio is vessel's I/O benchmark (`make bench-io`): block,
// TCP and vsock throughput inside a vessel guest against the same work
// done by a host process on the same platform, and the cost of that I/O
// in exits, interrupts and notifications per MiB. It is a benchmark, not
// a test: it prints ratios and asserts nothing.
//
// The same binary runs in the guest (`benchio guest WORKLOAD ...`, packed
// into the initramfs at /benchio) and prints RESULT lines the host half
// collects from the console.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
	"github.com/vesselvm/vessel/bench/internal/benchutil"
	"golang.org/x/sys/unix"
)

// config is the host half's flags.
type config struct {
	Vessel, Kernel, Initrd string
	Size                   int64 // bytes per block and stream transfer
	RandOps                int64
	RandTime               time.Duration
	Runs                   int
	Workloads              map[string]bool
	Out                    string
}

// Workload areas.
var allWorkloads = []string{"block", "tap", "user", "vsock"}

// Addresses of the TAP network the benchmark sets up.
const (
	tapName   = "vbenchtap0"
	tapHost   = "172.31.0.1"
	tapGuest  = "172.31.0.2"
	guestPort = 5201
	vsockPort = 5202
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "guest" {
		if err := guestMain(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "benchio guest: %v\n", err)
			os.Exit(1)
		}
		return
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchio: %v\n", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "benchio: %v\n", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*config, error) {
	fs := flag.NewFlagSet("benchio", flag.ContinueOnError)
	cfg := &config{}
	cache, _ := os.UserCacheDir()
	guest := filepath.Join(cache, "vessel", "guest")
	if d := os.Getenv("VESSEL_GUEST_DIR"); d != "" {
		guest = d
	}
	fs.StringVar(&cfg.Vessel, "vessel", "bin/vessel", "vessel binary")
	fs.StringVar(&cfg.Kernel, "kernel", filepath.Join(guest, "bzImage"), "guest kernel")
	fs.StringVar(&cfg.Initrd, "initrd", filepath.Join(guest, "initramfs.cpio"), "base initramfs (benchio is appended)")
	size := fs.Int("size-mib", 64, "MiB per block pass and per stream")
	fs.Int64Var(&cfg.RandOps, "rand-ops", 20000, "4 KiB random reads at most")
	fs.DurationVar(&cfg.RandTime, "rand-time", 20*time.Second, "time for random reads at most")
	fs.IntVar(&cfg.Runs, "runs", 3, "runs per measurement (medians reported)")
	wl := fs.String("workloads", strings.Join(allWorkloads, ","), "comma list of "+strings.Join(allWorkloads, ", "))
	fs.StringVar(&cfg.Out, "out", "", "also write the results as JSON here")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *size < 1 || cfg.Runs < 1 {
		return nil, errors.New("-size-mib and -runs must be at least 1")
	}
	cfg.Size = int64(*size) << 20
	cfg.Workloads = map[string]bool{}
	for _, w := range strings.Split(*wl, ",") {
		if !contains(allWorkloads, w) {
			return nil, fmt.Errorf("unknown workload %q (want %s)", w, strings.Join(allWorkloads, ", "))
		}
		cfg.Workloads[w] = true
	}
	return cfg, nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// report is everything measured.
type report struct {
	Platform string        `json:"platform"`
	Rows     []row         `json:"rows"`
	Cost     []cost        `json:"cost"`
	Notes    []string      `json:"notes,omitempty"`
	Took     time.Duration `json:"took_ns"`
}

// row is one workload: medians of the guest and the host baseline.
type row struct {
	Area     string  `json:"area"`
	Name     string  `json:"name"`
	Unit     string  `json:"unit"`
	Guest    float64 `json:"guest"`
	Host     float64 `json:"host"`
	HostWhat string  `json:"host_what"`
}

// cost is the per-MiB price of one guest run's I/O, boot subtracted.
type cost struct {
	Run            string  `json:"run"`
	MiB            float64 `json:"mib"`
	UserExits      float64 `json:"user_exits_per_mib"`
	KVMExits       float64 `json:"kvm_exits_per_mib"`
	Interrupts     float64 `json:"interrupts_per_mib"`
	Notifies       float64 `json:"notifies_per_mib"`
	SavedVsExitAll float64 `json:"exits_saved_factor"`
}

// bench is one benchmark session.
type bench struct {
	cfg    *config
	initrd string
	dir    string
	rep    report
	log    func(format string, a ...any)
}

func run(cfg *config) error {
	start := time.Now()
	dir, err := os.MkdirTemp("", "benchio")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b := &bench{cfg: cfg, dir: dir, log: func(f string, a ...any) { fmt.Fprintf(os.Stderr, "benchio: "+f+"\n", a...) }}
	if b.initrd, err = b.makeInitrd(); err != nil {
		return err
	}
	b.rep.Platform = benchutil.Describe()
	cleanup := func() {}
	if cfg.Workloads["tap"] {
		if cleanup, err = setupTap(); err != nil {
			return err
		}
	}
	// Ctrl-C: remove the TAP device, keep nothing half-made.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGINT, unix.SIGTERM)
	go func() {
		<-sig
		cleanup()
		os.RemoveAll(dir)
		os.Exit(130)
	}()
	defer cleanup()

	for _, area := range allWorkloads {
		if !cfg.Workloads[area] {
			continue
		}
		var err error
		switch area {
		case "block":
			err = b.block()
		case "tap":
			err = b.tcp("tap", []string{"--net", "tap=" + tapName + ",ip=" + tapGuest + "/24,gw=" + tapHost}, tapHost, tapGuest)
		case "user":
			err = b.tcp("user", []string{"--net", fmt.Sprintf("user,publish=127.0.0.1:%d:%d", freePort(), guestPort)}, "127.0.0.1", "")
		case "vsock":
			err = b.vsock()
		}
		if err != nil {
			return fmt.Errorf("%s: %w", area, err)
		}
	}
	b.rep.Took = time.Since(start)
	md := renderMarkdown(&b.rep)
	fmt.Print(md)
	if cfg.Out != "" {
		j, _ := json.MarshalIndent(b.rep, "", "  ")
		if err := os.WriteFile(cfg.Out, j, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// makeInitrd appends this binary as /benchio to the base initramfs.
func (b *bench) makeInitrd() (string, error) {
	base, err := os.ReadFile(b.cfg.Initrd)
	if err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	buf.Write(base)
	w := cpio.Newc.Writer(&buf)
	if err := cpio.WriteRecords(w, []cpio.Record{cpio.StaticFile("benchio", string(bin), 0o755)}); err != nil {
		return "", err
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return "", err
	}
	path := filepath.Join(b.dir, "initramfs.cpio")
	return path, os.WriteFile(path, buf.Bytes(), 0o644)
}

// guestRun is one vessel run.
type guestRun struct {
	results []Result
	metrics metrics
	stdout  string
}

// metrics is the part of vessel's --metrics JSON the benchmark uses.
type metrics struct {
	Exits    map[string]uint64 `json:"exits"`
	KVMStats map[string]uint64 `json:"kvm_vcpu_stats"`
	Devices  []struct {
		Type       string `json:"type"`
		Interrupts uint64 `json:"interrupts"`
		Notifies   uint64 `json:"notifies"`
	} `json:"devices"`
}

// userExits sums the userspace exits.
func (m metrics) userExits() float64 {
	var n uint64
	for _, v := range m.Exits {
		n += v
	}
	return float64(n)
}

// device sums interrupts and notifies of the devices of type typ.
func (m metrics) device(typ string) (irqs, notifies float64) {
	for _, d := range m.Devices {
		if d.Type == typ {
			irqs += float64(d.Interrupts)
			notifies += float64(d.Notifies)
		}
	}
	return irqs, notifies
}

// vessel boots a guest with devs running `/benchio guest args...`;
// onListen, if set, runs once the guest prints its listening line. On the
// emulated nested platform a guest triple fault (QEMU's nested SVM now
// and then corrupts a nested guest's state) is retried once, and the
// report says so; anything else fails the benchmark.
func (b *bench) vessel(devs []string, args []string, onListen func()) (*guestRun, error) {
	r, err := b.vesselOnce(devs, args, onListen)
	if err != nil && strings.Contains(err.Error(), "triple fault") && strings.Contains(b.rep.Platform, "QEMU TCG") {
		note := fmt.Sprintf("Retried once: `%s` hit a guest triple fault on the emulated platform.", strings.Join(args, " "))
		b.log("%s", note)
		b.rep.Notes = append(b.rep.Notes, note)
		r, err = b.vesselOnce(devs, args, onListen)
	}
	return r, err
}

func (b *bench) vesselOnce(devs []string, args []string, onListen func()) (*guestRun, error) {
	mfile := filepath.Join(b.dir, "metrics.json")
	os.Remove(mfile)
	cmdArgs := append([]string{"vm", "run", "--kernel", b.cfg.Kernel, "--initrd", b.initrd, "--memory", "512M", "--metrics", mfile}, devs...)
	cmdArgs = append(cmdArgs, "--")
	cmdArgs = append(cmdArgs, append([]string{"/benchio", "guest"}, args...)...)
	cmd := exec.Command(b.cfg.Vessel, cmdArgs...)
	var stderr bytes.Buffer
	out := &watch{line: listeningLine, f: onListen}
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("vessel %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), stderr.String())
	}
	r := &guestRun{stdout: out.String()}
	var err error
	if r.results, err = parseResults(r.stdout); err != nil {
		return nil, err
	}
	mb, err := os.ReadFile(mfile)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(mb, &r.metrics); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return r, nil
}

// watch collects output and calls f once when line appears.
type watch struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	line string
	f    func()
	done bool
}

func (w *watch) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	fire := !w.done && w.f != nil && bytes.Contains(w.buf.Bytes(), []byte(w.line))
	if fire {
		w.done = true
	}
	w.mu.Unlock()
	if fire {
		w.f() // must not block
	}
	return len(p), nil
}

func (w *watch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// addCost records the per-MiB cost of run over the idle baseline.
func (b *bench) addCost(name, typ string, mib float64, run, idle metrics) {
	irq, nt := run.device(typ)
	irq0, nt0 := idle.device(typ)
	c := cost{
		Run:        name,
		MiB:        mib,
		UserExits:  (run.userExits() - idle.userExits()) / mib,
		KVMExits:   float64(int64(run.KVMStats["exits"])-int64(idle.KVMStats["exits"])) / mib,
		Interrupts: (irq - irq0) / mib,
		Notifies:   (nt - nt0) / mib,
	}
	if c.UserExits > 0 {
		c.SavedVsExitAll = (c.UserExits + c.Notifies) / c.UserExits
	}
	b.rep.Cost = append(b.rep.Cost, c)
}

// block: the same passes on a guest virtio disk and on its image file.
func (b *bench) block() error {
	img := filepath.Join(b.dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(img, b.cfg.Size); err != nil {
		return err
	}
	devs := []string{"--disk", img}
	idle, err := b.vessel(devs, []string{"idle"}, nil)
	if err != nil {
		return err
	}
	var guest, host [][]Result
	var last *guestRun
	for i := 0; i < b.cfg.Runs; i++ {
		b.log("block run %d/%d", i+1, b.cfg.Runs)
		r, err := b.vessel(devs, []string{"block", strconv.FormatInt(b.cfg.Size, 10), strconv.FormatInt(b.cfg.RandOps, 10), b.cfg.RandTime.String()}, nil)
		if err != nil {
			return err
		}
		guest, last = append(guest, r.results), r
		h, err := blockWorkloads(img, b.cfg.Size, b.cfg.RandOps, b.cfg.RandTime)
		if err != nil {
			return err
		}
		host = append(host, h)
	}
	for i := range guest[0] {
		unit, value := "MiB/s", Result.MiBps
		if guest[0][i].Ops > 0 {
			unit, value = "IOPS", Result.IOPS
		}
		g := benchutil.Summarize(collect(guest, i, value)).Median
		h := benchutil.Summarize(collect(host, i, value)).Median
		what := "the image file on the host"
		if n := host[0][i].Note; n != "" {
			what += " (" + n + ")"
		}
		b.rep.Rows = append(b.rep.Rows, row{Area: "block", Name: guest[0][i].Name, Unit: unit, Guest: g, Host: h, HostWhat: what})
	}
	var mib float64
	for _, r := range last.results {
		mib += float64(r.Bytes) / (1 << 20)
	}
	b.addCost("block (write, read, random read)", "block", mib, last.metrics, idle.metrics)
	return nil
}

// collect takes result i of every run through f.
func collect(runs [][]Result, i int, f func(Result) float64) []float64 {
	var v []float64
	for _, r := range runs {
		if i < len(r) {
			v = append(v, f(r[i]))
		}
	}
	return v
}
