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
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
	"github.com/vesselvm/vessel/bench/internal/benchutil"
	"github.com/vesselvm/vessel/internal/guestdir"
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
	VMMs                   []string // in run order
	QEMU                   string
	QEMUACPI               string // on, off or auto
	QEMUAIO                string
	QEMUCache              string
	VMTimeout              time.Duration // one guest run at most
	Out                    string
}

// has reports whether the VMM name is to be measured.
func (c *config) has(name string) bool { return contains(c.VMMs, name) }

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
	guest := guestdir.Dir()
	fs.StringVar(&cfg.Vessel, "vessel", "bin/vessel", "vessel binary")
	fs.StringVar(&cfg.Kernel, "kernel", filepath.Join(guest, "bzImage"), "guest kernel")
	fs.StringVar(&cfg.Initrd, "initrd", filepath.Join(guest, "initramfs.cpio"), "base initramfs (benchio is appended)")
	size := fs.Int("size-mib", 64, "MiB per block pass and per stream")
	fs.Int64Var(&cfg.RandOps, "rand-ops", 20000, "4 KiB random reads at most")
	fs.DurationVar(&cfg.RandTime, "rand-time", 20*time.Second, "time for random reads at most")
	fs.IntVar(&cfg.Runs, "runs", 3, "runs per measurement (medians reported)")
	wl := fs.String("workloads", strings.Join(allWorkloads, ","), "comma list of "+strings.Join(allWorkloads, ", "))
	vmms := fs.String("vmms", strings.Join(allVMMs, ","), "comma list of the VMMs to measure, in run order: "+strings.Join(allVMMs, ", "))
	fs.StringVar(&cfg.QEMU, "qemu", "qemu-system-x86_64", "QEMU binary (the microvm peer)")
	fs.StringVar(&cfg.QEMUACPI, "qemu-acpi", "auto", "QEMU microvm acpi=: on, off, or auto (on unless the guest command line has acpi=off)")
	fs.StringVar(&cfg.QEMUAIO, "qemu-aio", "io_uring", "QEMU -drive aio=: threads, io_uring or native (native needs -qemu-cache none)")
	fs.StringVar(&cfg.QEMUCache, "qemu-cache", "writeback", "QEMU -drive cache=: writeback is vessel's (the host page cache, fdatasync on flush); none needs O_DIRECT, which tmpfs refuses")
	fs.DurationVar(&cfg.VMTimeout, "vm-timeout", 10*time.Minute, "one guest run at most (a hung run is retried once)")
	fs.StringVar(&cfg.Out, "out", "", "also write the results as JSON here")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
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
	for _, v := range strings.Split(*vmms, ",") {
		if !contains(allVMMs, v) {
			return nil, fmt.Errorf("unknown VMM %q (want %s)", v, strings.Join(allVMMs, ", "))
		}
		if !contains(cfg.VMMs, v) {
			cfg.VMMs = append(cfg.VMMs, v)
		}
	}
	if !contains([]string{"on", "off", "auto"}, cfg.QEMUACPI) {
		return nil, fmt.Errorf("-qemu-acpi %q: want on, off or auto", cfg.QEMUACPI)
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
	VMMs     []string      `json:"vmms"`
	Setup    []string      `json:"setup"` // how each VMM was configured
	Rows     []row         `json:"rows"`
	Cost     []cost        `json:"cost"`
	Notes    []string      `json:"notes,omitempty"`
	Took     time.Duration `json:"took_ns"`
}

// row is one workload: medians per VMM and of the host baseline.
type row struct {
	Area string `json:"area"`
	Name string `json:"name"`
	Unit string `json:"unit"`
	// Guest has the median per VMM; a VMM missing was not measured, and
	// Missing says why.
	Guest    map[string]float64 `json:"guest"`
	Missing  map[string]string  `json:"missing,omitempty"`
	Host     float64            `json:"host"`
	HostWhat string             `json:"host_what"`
}

// cost is the per-MiB price of one workload's I/O under each VMM.
type cost struct {
	Run     string              `json:"run"`
	Device  string              `json:"device"` // virtio device type
	VMM     map[string]*vmmCost `json:"vmm"`
	Missing map[string]string   `json:"missing,omitempty"`
}

// vmmCost is one VMM's cost of a workload: medians over the runs.
type vmmCost struct {
	MiB float64 `json:"mib"`
	// KVM has KVM's own vCPU counters per MiB (kvmKeys), the boot-only
	// run with the same devices subtracted: the same counters for every
	// VMM (vessel reads them itself, QEMU through query-stats). Nil when
	// the kernel lacks KVM_GET_STATS_FD.
	KVM map[string]float64 `json:"kvm_per_mib,omitempty"`
	// GuestIRQs is the interrupts of the workload's device per MiB as the
	// guest counted them (/proc/interrupts around the workload); -1 when
	// the guest could not count.
	GuestIRQs float64 `json:"guest_interrupts_per_mib"`
	// Vessel's own counters (vessel only), boot subtracted.
	UserExits      float64 `json:"user_exits_per_mib,omitempty"`
	Interrupts     float64 `json:"interrupts_per_mib,omitempty"`
	Notifies       float64 `json:"notifies_per_mib,omitempty"`
	SavedVsExitAll float64 `json:"exits_saved_factor,omitempty"`
}

// kvmKeys are the KVM vCPU counters the report shows, in order.
var kvmKeys = []string{"exits", "mmio_exits", "io_exits", "halt_exits", "irq_exits", "irq_window_exits", "insn_emulation", "irq_injections"}

// bench is one benchmark session.
type bench struct {
	cfg    *config
	initrd string
	dir    string
	rep    report
	log    func(format string, a ...any)
	// noQEMU says, per workload area, why QEMU cannot take part.
	noQEMU map[string]string
}

func run(cfg *config) error {
	start := time.Now()
	dir, err := os.MkdirTemp("", "benchio")
	if err != nil {
		return fmt.Errorf("temporary directory: %w", err)
	}
	defer os.RemoveAll(dir)
	b := &bench{cfg: cfg, dir: dir, noQEMU: map[string]string{},
		log: func(f string, a ...any) { fmt.Fprintf(os.Stderr, "benchio: "+f+"\n", a...) }}
	if b.initrd, err = b.makeInitrd(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	b.rep.Platform = benchutil.Describe()
	b.rep.VMMs = cfg.VMMs
	b.describeSetup()
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
		case "tap", "user":
			err = b.tcp(area)
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
		j, err := json.MarshalIndent(b.rep, "", "  ")
		if err != nil {
			return fmt.Errorf("report JSON: %w", err)
		}
		if err := os.WriteFile(cfg.Out, j, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", cfg.Out, err)
		}
	}
	return nil
}

// describeSetup records how the VMMs run, and what QEMU cannot do here.
func (b *bench) describeSetup() {
	c := b.cfg
	b.rep.Setup = append(b.rep.Setup, fmt.Sprintf("Every guest: the same kernel, initramfs (benchio appended) and kernel command line (vessel's default plus the vessel.* parameters for the workload), 1 vCPU, %d MiB.", guestMemMiB))
	if c.has(vmmVessel) {
		b.rep.Setup = append(b.rep.Setup, "vessel: `vessel vm run` with --disk, --net tap=/user, --vsock (hybrid vsock, userspace device); counters from --metrics.")
	}
	if !c.has(vmmQEMU) {
		return
	}
	ver := "QEMU"
	if out, err := exec.Command(c.QEMU, "--version").Output(); err == nil {
		ver, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	}
	b.rep.Setup = append(b.rep.Setup, fmt.Sprintf("QEMU microvm: %s, `-M microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=%s -accel kvm -cpu host`; "+
		"virtio-blk-device on `-drive format=raw,cache=%s,aio=%s` (the same image file); virtio-net-device on `-netdev tap` (QEMU's userspace backend, default offloads) "+
		"and on `-netdev user` (slirp); vsock on vhost-vsock-device where /dev/vhost-vsock exists; KVM counters through QMP query-stats.",
		ver, qemuACPI(c.QEMUACPI), c.QEMUCache, c.QEMUAIO))
	if _, err := os.Stat("/dev/vhost-net"); err != nil {
		b.rep.Setup = append(b.rep.Setup, "No /dev/vhost-net on this host: QEMU's TAP path is its userspace virtio-net, like vessel's.")
	}
	if f, err := os.OpenFile("/dev/vhost-vsock", os.O_RDWR, 0); err != nil {
		b.noQEMU["vsock"] = "no /dev/vhost-vsock on this host (QEMU's vsock is vhost-vsock, a kernel backend; the outer kernel here is built without CONFIG_VHOST_VSOCK)"
	} else {
		f.Close()
	}
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

// guestRun is one guest run under one VMM.
type guestRun struct {
	results []Result
	irqs    irqCounts         // counted by the guest around the workload; nil if not
	kvm     map[string]uint64 // KVM's vCPU counters at the end
	vessel  *metrics          // vessel's --metrics
	stdout  string
}

// metrics is the part of vessel's --metrics JSON the benchmark uses.
type metrics struct {
	Exits    map[string]uint64 `json:"exits"`
	KVMStats map[string]uint64 `json:"kvm_vcpu_stats"`
	Devices  []deviceMetrics   `json:"devices"`
}

// deviceMetrics is one virtio device's counters in vessel's --metrics.
type deviceMetrics struct {
	Type       string `json:"type"`
	Interrupts uint64 `json:"interrupts"`
	Notifies   uint64 `json:"notifies"`
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

// boot runs `/benchio guest args...` under vmmName with the devices d;
// onListen, if set, runs once the guest prints its listening line. On the
// emulated nested platform a run the platform broke (a guest triple fault
// or reset: QEMU's nested SVM now and then corrupts a nested guest's
// state; a run that never ended) is retried once, and the report says
// so; anything else fails the benchmark.
func (b *bench) boot(vmmName string, d vmDevices, args []string, onListen func()) (*guestRun, error) {
	once := b.vesselOnce
	if vmmName == vmmQEMU {
		once = b.qemuOnce
	}
	r, err := once(d, args, onListen)
	if err != nil && errors.Is(err, errPlatform) && strings.Contains(b.rep.Platform, "QEMU TCG") {
		first, _, _ := strings.Cut(err.Error(), "\n")
		note := fmt.Sprintf("Retried once: %s `%s` failed on the emulated platform: %s.", vmmTitle[vmmName], strings.Join(args, " "), first)
		b.log("%s The whole failure:\n%v", note, err)
		b.rep.Notes = append(b.rep.Notes, note)
		r, err = once(d, args, onListen)
	}
	return r, err
}

// watch collects output, calls f once when line appears, and closes
// ended once endLine appears (when set).
type watch struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	line    string
	f       func()
	done    bool
	endLine string
	ended   chan struct{}
	isEnded bool
}

func (w *watch) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	fire := !w.done && w.f != nil && bytes.Contains(w.buf.Bytes(), []byte(w.line))
	if fire {
		w.done = true
	}
	if w.endLine != "" && !w.isEnded && bytes.Contains(w.buf.Bytes(), []byte(w.endLine)) {
		w.isEnded = true
		close(w.ended)
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

// runCost is the cost of one run over its VMM's boot-only run: the bytes
// moved, KVM counters and (vessel) its own counters.
func runCost(typ string, mib float64, run, idle *guestRun) vmmCost {
	c := vmmCost{MiB: mib, GuestIRQs: -1}
	if run.kvm != nil && idle.kvm != nil {
		c.KVM = map[string]float64{}
		for _, k := range kvmKeys {
			c.KVM[k] = float64(int64(run.kvm[k])-int64(idle.kvm[k])) / mib
		}
	}
	if run.irqs != nil {
		c.GuestIRQs = float64(run.irqs[typ]) / mib
	}
	if run.vessel != nil && idle.vessel != nil {
		irq, nt := run.vessel.device(typ)
		irq0, nt0 := idle.vessel.device(typ)
		c.UserExits = (run.vessel.userExits() - idle.vessel.userExits()) / mib
		c.Interrupts = (irq - irq0) / mib
		c.Notifies = (nt - nt0) / mib
		if c.UserExits > 0 {
			c.SavedVsExitAll = (c.UserExits + c.Notifies) / c.UserExits
		}
	}
	return c
}

// medianCost takes the median of each field over the runs' costs.
func medianCost(cs []vmmCost) *vmmCost {
	if len(cs) == 0 {
		return nil
	}
	med := func(f func(vmmCost) float64) float64 {
		v := make([]float64, len(cs))
		for i, c := range cs {
			v[i] = f(c)
		}
		return benchutil.Summarize(v).Median
	}
	m := &vmmCost{
		MiB:            med(func(c vmmCost) float64 { return c.MiB }),
		GuestIRQs:      med(func(c vmmCost) float64 { return c.GuestIRQs }),
		UserExits:      med(func(c vmmCost) float64 { return c.UserExits }),
		Interrupts:     med(func(c vmmCost) float64 { return c.Interrupts }),
		Notifies:       med(func(c vmmCost) float64 { return c.Notifies }),
		SavedVsExitAll: med(func(c vmmCost) float64 { return c.SavedVsExitAll }),
	}
	if cs[0].KVM != nil {
		m.KVM = map[string]float64{}
		for _, k := range kvmKeys {
			m.KVM[k] = med(func(c vmmCost) float64 { return c.KVM[k] })
		}
	}
	return m
}

// measurement collects one workload's values per VMM over the runs.
type measurement struct {
	values map[string][]float64 // per VMM
	costs  map[string][]vmmCost
}

func newMeasurement() *measurement {
	return &measurement{values: map[string][]float64{}, costs: map[string][]vmmCost{}}
}

// addRow appends a row of medians for the VMMs measured.
func (b *bench) addRow(area, name, unit string, m *measurement, host []float64, hostWhat string) {
	r := row{Area: area, Name: name, Unit: unit, Guest: map[string]float64{}, Host: benchutil.Summarize(host).Median, HostWhat: hostWhat}
	for _, v := range b.cfg.VMMs {
		if len(m.values[v]) == 0 {
			if r.Missing == nil {
				r.Missing = map[string]string{}
			}
			r.Missing[v] = b.missingWhy(area, v)
			continue
		}
		r.Guest[v] = benchutil.Summarize(m.values[v]).Median
	}
	b.rep.Rows = append(b.rep.Rows, r)
}

// addCost appends the cost row of a workload.
func (b *bench) addCost(run, area, typ string, m *measurement) {
	c := cost{Run: run, Device: typ, VMM: map[string]*vmmCost{}}
	for _, v := range b.cfg.VMMs {
		if mc := medianCost(m.costs[v]); mc != nil {
			c.VMM[v] = mc
			continue
		}
		if c.Missing == nil {
			c.Missing = map[string]string{}
		}
		c.Missing[v] = b.missingWhy(area, v)
	}
	b.rep.Cost = append(b.rep.Cost, c)
}

// missingWhy says why VMM v has no value for area.
func (b *bench) missingWhy(area, v string) string {
	if v == vmmQEMU && b.noQEMU[area] != "" {
		return b.noQEMU[area]
	}
	return "not measured"
}

// runsQEMU reports whether QEMU takes part in area.
func (b *bench) runsQEMU(area string) bool { return b.cfg.has(vmmQEMU) && b.noQEMU[area] == "" }

// vmmsFor lists the VMMs that take part in area, in run order.
func (b *bench) vmmsFor(area string) []string {
	var l []string
	for _, v := range b.cfg.VMMs {
		if v != vmmQEMU || b.runsQEMU(area) {
			l = append(l, v)
		}
	}
	return l
}

// runOrder is the order of the VMMs in run i: reversed every other run,
// so that no VMM always comes first after the host baseline or another
// VMM's run.
func runOrder(vmms []string, i int) []string {
	o := append([]string(nil), vmms...)
	if i%2 == 1 {
		slices.Reverse(o)
	}
	return o
}

// block: the same passes on a guest virtio disk (the same image file for
// every VMM) and on the image file itself.
func (b *bench) block() error {
	// Written out, not sparse: the first VMM to write would otherwise
	// pay for allocating the file's blocks and the others not.
	img := filepath.Join(b.dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, b.cfg.Size), 0o644); err != nil {
		return fmt.Errorf("disk image: %w", err)
	}
	d := vmDevices{Disk: img}
	vmms := b.vmmsFor("block")
	idle := map[string]*guestRun{}
	for _, v := range vmms {
		r, err := b.boot(v, d, []string{"idle"}, nil)
		if err != nil {
			return err
		}
		idle[v] = r
	}
	var names, units []string
	perResult := []*measurement{}
	costs := newMeasurement()
	var host [][]Result
	args := []string{"block", strconv.FormatInt(b.cfg.Size, 10), strconv.FormatInt(b.cfg.RandOps, 10), b.cfg.RandTime.String()}
	for i := 0; i < b.cfg.Runs; i++ {
		for _, v := range runOrder(vmms, i) {
			b.log("block run %d/%d: %s", i+1, b.cfg.Runs, vmmTitle[v])
			r, err := b.boot(v, d, args, nil)
			if err != nil {
				return err
			}
			if names == nil {
				for _, res := range r.results {
					unit := "MiB/s"
					if res.Ops > 0 {
						unit = "IOPS"
					}
					names, units = append(names, res.Name), append(units, unit)
					perResult = append(perResult, newMeasurement())
				}
			}
			for j := range names {
				if j < len(r.results) {
					perResult[j].values[v] = append(perResult[j].values[v], rate(r.results[j], units[j]))
				}
			}
			var mib float64
			for _, res := range r.results {
				mib += float64(res.Bytes) / (1 << 20)
			}
			costs.costs[v] = append(costs.costs[v], runCost("block", mib, r, idle[v]))
		}
		h, err := blockWorkloads(img, b.cfg.Size, b.cfg.RandOps, b.cfg.RandTime)
		if err != nil {
			return fmt.Errorf("host baseline: %w", err)
		}
		host = append(host, h)
	}
	for j, name := range names {
		what := "the image file on the host"
		if n := host[0][j].Note; n != "" {
			what += " (" + n + ")"
		}
		b.addRow("block", name, units[j], perResult[j], collect(host, j, func(r Result) float64 { return rate(r, units[j]) }), what)
	}
	b.addCost("block (write, read, random read)", "block", "block", costs)
	return nil
}

// rate is a result's throughput in unit (IOPS or MiB/s).
func rate(r Result, unit string) float64 {
	if unit == "IOPS" {
		return r.IOPS()
	}
	return r.MiBps()
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
