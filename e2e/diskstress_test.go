//go:build e2e

package e2e

import (
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var stressTime = flag.Duration("e2e.stresstime", 0, "TestDiskStress: how long the guest's I/O runs (0: 30 s on the emulated nested platform, 90 s elsewhere)")

// stressDuration is how long TestDiskStress's I/O runs. On the emulated
// nested platform QEMU's faults (a triple fault, a vCPU left in the outer
// kernel's VMRUN) come with the guest's exits: under this load about one
// per 70-100 s of I/O was measured (2026-12-05), so the run there is
// short enough that a retry usually gets through.
func stressDuration() time.Duration {
	switch {
	case *stressTime != 0:
		return *stressTime
	case onEmulatedSVM():
		return 30 * time.Second
	default:
		return 90 * time.Second
	}
}

// Sizes of TestDiskStress's disks and its guest's workers.
const (
	stressRawSize  = 96 << 20 // /dev/vda, used raw
	stressFSSize   = 96 << 20 // /dev/vdb, ext4, a file per worker
	stressRawJobs  = 4
	stressFileJobs = 2
	stressFileSize = 16 << 20
	stressSeqSize  = 24 << 20 // the sequential job's file
	stressSeqIO    = 1 << 20
	stressBlock    = 4 << 10
	stressMaxIO    = 128 << 10
	// stressStuck is how long one request may take before the guest
	// reports it stuck (a request takes milliseconds, tens of them on
	// the emulated platform).
	stressStuck = 30 * time.Second
)

// TestDiskStress is the disk-hang reproduction: sustained random
// O_DIRECT reads and writes of 4 KiB to 128 KiB with flushes, from
// several guest threads at once on two disks (four on a raw disk, two on
// files in an overlay over an ext4 disk made as vessel run's scratch
// disk), beside a thread doing what vessel bench compare's disk workload
// does (1 MiB records written in sequence, synced, read back), for
// -e2e.stresstime of guest time, every block read checked against what
// was written. A request that never completes fails the test with
// vessel's description of the VM (its virtio rings' indexes, the
// interrupt controllers), asked for with SIGUSR2, instead of hanging
// the suite.
func TestDiskStress(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw.img")
	fs := filepath.Join(dir, "fs.img")
	fresh := func() {
		if err := os.WriteFile(raw, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(raw, stressRawSize); err != nil {
			t.Fatal(err)
		}
		// As vessel run's scratch disk (container.MakeScratch): lazy
		// inode table and journal initialisation, so the guest's
		// ext4lazyinit zeroes the inode tables meanwhile.
		if err := os.WriteFile(fs, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(fs, stressFSSize); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", fs).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4: %v\n%s", err, out)
		}
	}
	// The VM has what vessel run's VMs have beside their disks: 512 MiB
	// and free page reporting to a balloon.
	args := []string{"vm", "run", "--cpus", "2", "--memory", "512M", "--balloon", "reporting,deflate-on-oom",
		"--kernel", filepath.Join(guestDir, "bzImage"), "--initrd", guestInitrd(t),
		"--disk", raw, "--disk", fs,
		"--", "/e2e.test", "-e2e.guest", "-test.run", "^TestGuestDiskStress$", "-test.v",
		"-e2e.stresstime=" + stressDuration().String()}
	fresh()
	r := runDiagnosable(t, args)
	if why, flaky := platformFlake(r); flaky {
		t.Logf("RETRY: %s; retrying once:\n%v", why, r)
		fresh()
		r = runDiagnosable(t, args)
	}
	if r.code != 0 || !strings.Contains(r.stdout, "--- PASS: TestGuestDiskStress") {
		t.Fatalf("the guest's disk I/O failed or hung:\n%v", r)
	}
	for _, l := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(l, "stress:") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

// runDiagnosable runs vessel with args. A guest that reports a stuck
// request, or a run past its limit, gets vessel's diagnosis (SIGUSR2:
// vessel describes the VM, stops it and exits 125); a vessel that does
// not end then is stopped with SIGQUIT (its goroutines' stacks) and the
// test fails.
func runDiagnosable(t *testing.T, args []string) result {
	t.Helper()
	limit := stressDuration() + 3*time.Minute
	cmd := exec.Command(vesselBin, args...)
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("run vessel: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	var stuckAt time.Time
	diagnosed := false
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-tick.C:
		}
		if diagnosed {
			if time.Since(start) > limit+time.Minute {
				cmd.Process.Signal(syscall.SIGQUIT)
				select {
				case err = <-done:
				case <-time.After(10 * time.Second):
					cmd.Process.Kill()
					err = <-done
				}
				t.Fatalf("vessel did not end within a minute of SIGUSR2 (stopped with SIGQUIT):\n%v",
					result{stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)})
			}
			continue
		}
		if stuckAt.IsZero() && strings.Contains(out.String(), "stress: STUCK") {
			stuckAt = time.Now() // let the guest finish its report
		}
		why := ""
		switch {
		case !stuckAt.IsZero() && time.Since(stuckAt) > 5*time.Second:
			why = "the guest reported a stuck request"
		case time.Since(start) > limit:
			why = fmt.Sprintf("the run took more than %v", limit)
		}
		if why != "" {
			t.Logf("%s: asking vessel for its diagnosis (SIGUSR2)", why)
			cmd.Process.Signal(diagnoseSignal)
			diagnosed = true
		}
	}
	r := result{stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run vessel: %v", err)
	}
	t.Logf("vessel %s: exit %d in %v", strings.Join(args, " "), r.code, r.elapsed.Round(time.Millisecond))
	return r
}

// diagnoseSignal makes vessel vm run describe its VM and stop it.
const diagnoseSignal = syscall.SIGUSR2

// cancelDescribed makes a vessel vm run that cmd's context ends get
// diagnoseSignal, and bounds the wait for it to describe its VM (slow
// on the emulated platform) and exit: the failure then says where the
// VM was, a jailed VMM's state included (vessel's own goroutine dump
// lacks it), and platformFlake and runblock tell the platform's known
// faults by it.
func cancelDescribed(cmd *exec.Cmd) {
	cmd.Cancel = func() error { return cmd.Process.Signal(diagnoseSignal) }
	cmd.WaitDelay = time.Minute
}

// stressJob is one guest worker's disk space and its record of what it
// wrote there: the generation of every block (0: never written, reads
// as zeros).
type stressJob struct {
	name      string
	f         *os.File
	base, len int64 // byte range of f the job owns
	gen       []uint32
	next      uint32
	seed      uint64
	// seq makes the job write its range in 1 MiB records, one after
	// another, sync, and read them back, as vessel bench compare's
	// disk workload, over and over, instead of random requests.
	seq bool
	// started is when the request in flight began (UnixNano), 0 when
	// none is; op names it.
	started atomic.Int64
	op      atomic.Value
	reads   atomic.Int64
	writes  atomic.Int64
	flushes atomic.Int64
	bytes   atomic.Int64
}

// fill writes block b's content for generation g into p: every 8 bytes
// name the job, the block, the generation and the word's position.
func (j *stressJob) fill(p []byte, b int64, g uint32) {
	for i := 0; i < len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], j.seed^uint64(b)<<32^uint64(g)<<12^uint64(i))
	}
}

func (j *stressJob) check(p []byte, b int64) error {
	g := j.gen[b]
	want := make([]byte, len(p))
	if g != 0 {
		j.fill(want, b, g)
	}
	if string(p) != string(want) {
		i := 0
		for i < len(p) && p[i] == want[i] {
			i++
		}
		return fmt.Errorf("%s: block %d (generation %d) differs at byte %d: read %x, want %x", j.name, b, g, i,
			p[i&^7:i&^7+8], want[i&^7:i&^7+8])
	}
	return nil
}

// do runs one request and records it as in flight meanwhile.
func (j *stressJob) do(op string, f func() error) error {
	j.op.Store(op)
	j.started.Store(time.Now().UnixNano())
	err := f()
	j.started.Store(0)
	return err
}

// run does random requests until the deadline.
func (j *stressJob) run(deadline time.Time, rng *rand.Rand) error {
	size := int64(stressMaxIO)
	if j.seq {
		size = stressSeqIO
	}
	buf, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf) // page-aligned, as O_DIRECT needs
	blocks := j.len / stressBlock
	if j.seq {
		return j.runSeq(deadline, buf)
	}
	for time.Now().Before(deadline) {
		n := int64(1 + rng.IntN(stressMaxIO/stressBlock))
		b := rng.Int64N(blocks - n + 1)
		p := buf[:n*stressBlock]
		off := j.base + b*stressBlock
		switch k := rng.IntN(20); {
		case k < 9:
			err := j.do(fmt.Sprintf("read %d KiB at %d", len(p)>>10, off), func() error {
				_, err := j.f.ReadAt(p, off)
				return err
			})
			if err != nil {
				return fmt.Errorf("%s: read: %w", j.name, err)
			}
			for i := int64(0); i < n; i++ {
				if err := j.check(p[i*stressBlock:(i+1)*stressBlock], b+i); err != nil {
					return err
				}
			}
			j.reads.Add(1)
		case k < 19:
			for i := int64(0); i < n; i++ {
				j.next++
				j.gen[b+i] = j.next
				j.fill(p[i*stressBlock:(i+1)*stressBlock], b+i, j.next)
			}
			err := j.do(fmt.Sprintf("write %d KiB at %d", len(p)>>10, off), func() error {
				_, err := j.f.WriteAt(p, off)
				return err
			})
			if err != nil {
				return fmt.Errorf("%s: write: %w", j.name, err)
			}
			j.writes.Add(1)
		default:
			if err := j.do("fsync", j.f.Sync); err != nil {
				return fmt.Errorf("%s: fsync: %w", j.name, err)
			}
			j.flushes.Add(1)
			continue
		}
		j.bytes.Add(int64(len(p)))
	}
	return nil
}

// runSeq writes the job's range in records of len(buf), syncs, and reads
// it back, until the deadline.
func (j *stressJob) runSeq(deadline time.Time, buf []byte) error {
	per := int64(len(buf)) / stressBlock
	for time.Now().Before(deadline) {
		for b := int64(0); b+per <= j.len/stressBlock; b += per {
			for i := int64(0); i < per; i++ {
				j.next++
				j.gen[b+i] = j.next
				j.fill(buf[i*stressBlock:(i+1)*stressBlock], b+i, j.next)
			}
			off := j.base + b*stressBlock
			if err := j.do(fmt.Sprintf("write %d KiB at %d", len(buf)>>10, off), func() error { _, err := j.f.WriteAt(buf, off); return err }); err != nil {
				return fmt.Errorf("%s: write: %w", j.name, err)
			}
			j.writes.Add(1)
			j.bytes.Add(int64(len(buf)))
		}
		if err := j.do("fsync", j.f.Sync); err != nil {
			return fmt.Errorf("%s: fsync: %w", j.name, err)
		}
		j.flushes.Add(1)
		for b := int64(0); b+per <= j.len/stressBlock; b += per {
			off := j.base + b*stressBlock
			if err := j.do(fmt.Sprintf("read %d KiB at %d", len(buf)>>10, off), func() error { _, err := j.f.ReadAt(buf, off); return err }); err != nil {
				return fmt.Errorf("%s: read: %w", j.name, err)
			}
			for i := int64(0); i < per; i++ {
				if err := j.check(buf[i*stressBlock:(i+1)*stressBlock], b+i); err != nil {
					return err
				}
			}
			j.reads.Add(1)
			j.bytes.Add(int64(len(buf)))
		}
	}
	return nil
}

// verify reads back the job's whole range.
func (j *stressJob) verify() error {
	buf, err := unix.Mmap(-1, 0, stressMaxIO, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	per := int64(stressMaxIO / stressBlock)
	for b := int64(0); b < j.len/stressBlock; b += per {
		n := min(per, j.len/stressBlock-b)
		p := buf[:n*stressBlock]
		if err := j.do("verify read", func() error { _, err := j.f.ReadAt(p, j.base+b*stressBlock); return err }); err != nil {
			return fmt.Errorf("%s: verify: %w", j.name, err)
		}
		for i := int64(0); i < n; i++ {
			if err := j.check(p[i*stressBlock:(i+1)*stressBlock], b+i); err != nil {
				return fmt.Errorf("verify: %w", err)
			}
		}
	}
	return nil
}

// stuckReport is the guest's view of its disks when a request is stuck.
func stuckReport() string {
	var b strings.Builder
	for _, f := range []string{"/sys/block/vda/inflight", "/sys/block/vdb/inflight", "/sys/block/vda/stat", "/sys/block/vdb/stat"} {
		c, _ := os.ReadFile(f)
		fmt.Fprintf(&b, "stress: STUCK %s: %s\n", f, strings.Join(strings.Fields(string(c)), " "))
	}
	c, _ := os.ReadFile("/proc/interrupts")
	for _, l := range strings.Split(string(c), "\n") {
		if strings.Contains(l, "virtio") || strings.Contains(l, "CPU0") {
			fmt.Fprintf(&b, "stress: STUCK interrupts: %s\n", strings.Join(strings.Fields(l), " "))
		}
	}
	return b.String()
}

// TestGuestDiskStress is the guest half of TestDiskStress.
func TestGuestDiskStress(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of TestDiskStress; runs inside the VM")
	}
	rawDev, err := os.OpenFile("/dev/vda", os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rawDev.Close()
	if err := os.MkdirAll("/mnt", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("/dev/vdb", "/mnt", "ext4", 0, ""); err != nil {
		t.Fatalf("mount /dev/vdb: %v", err)
	}
	defer unix.Unmount("/mnt", 0)
	// The files are in an overlay whose upper layer is on the disk, as
	// a container's rootfs on vessel run's scratch disk.
	for _, d := range []string{"/mnt/upper", "/mnt/work", "/lower", "/ovl"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("overlay", "/ovl", "overlay", 0, "lowerdir=/lower,upperdir=/mnt/upper,workdir=/mnt/work"); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	defer unix.Unmount("/ovl", 0)
	var jobs []*stressJob
	per := int64(stressRawSize / stressRawJobs)
	for i := 0; i < stressRawJobs; i++ {
		jobs = append(jobs, &stressJob{name: fmt.Sprintf("vda job %d", i), f: rawDev, base: int64(i) * per, len: per})
	}
	for i := 0; i <= stressFileJobs; i++ {
		name, size, seq := fmt.Sprintf("/ovl/job%d", i), int64(stressFileSize), false
		if i == stressFileJobs {
			name, size, seq = "/ovl/seq", stressSeqSize, true
		}
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|unix.O_DIRECT, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		// Allocated, so that writes go straight to the disk's blocks
		// and unwritten ones read as zeros.
		if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, &stressJob{name: "vdb " + name, f: f, len: size, seq: seq})
	}
	for i, j := range jobs {
		j.gen = make([]uint32, j.len/stressBlock)
		j.seed = uint64(i+1) * 0x9e3779b97f4a7c15
	}

	fmt.Printf("stress: start: %d jobs for %v\n", len(jobs), stressDuration())
	start := time.Now()
	deadline := start.Add(stressDuration())
	stop := make(chan struct{})
	var monitor sync.WaitGroup
	monitor.Add(1)
	go func() {
		defer monitor.Done()
		reported := false
		progress := time.NewTicker(10 * time.Second)
		defer progress.Stop()
		check := time.NewTicker(time.Second)
		defer check.Stop()
		for {
			select {
			case <-stop:
				return
			case <-progress.C:
				var ops, bytes int64
				for _, j := range jobs {
					ops += j.reads.Load() + j.writes.Load() + j.flushes.Load()
					bytes += j.bytes.Load()
				}
				fmt.Printf("stress: %v: %d requests, %d MiB\n", time.Since(start).Round(time.Second), ops, bytes>>20)
			case <-check.C:
			}
			if reported {
				continue
			}
			for _, j := range jobs {
				if s := j.started.Load(); s != 0 && time.Since(time.Unix(0, s)) > stressStuck {
					op, _ := j.op.Load().(string)
					fmt.Printf("stress: STUCK: %s: %s in flight for %v\n%s", j.name, op,
						time.Since(time.Unix(0, s)).Round(time.Second), stuckReport())
					reported = true
					break
				}
			}
		}
	}()

	errs := make(chan error, len(jobs))
	for i, j := range jobs {
		go func() {
			err := j.run(deadline, rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))))
			if err == nil {
				err = j.verify()
			}
			errs <- err
		}()
	}
	for range jobs {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	close(stop)
	monitor.Wait()
	var reads, writes, flushes, bytes int64
	for _, j := range jobs {
		reads, writes, flushes, bytes = reads+j.reads.Load(), writes+j.writes.Load(), flushes+j.flushes.Load(), bytes+j.bytes.Load()
	}
	el := time.Since(start)
	fmt.Printf("stress: done in %v: %d reads, %d writes, %d flushes, %d MiB (%s requests/s)\n", el.Round(time.Millisecond),
		reads, writes, flushes, bytes>>20, strconv.FormatFloat(float64(reads+writes+flushes)/stressDuration().Seconds(), 'f', 0, 64))
}

// TestVMRunDiagnosis: SIGUSR2 makes vessel vm run describe its VM (each
// vCPU, the interrupt controllers, every virtio ring), stop it and exit
// 125 with the description: what TestDiskStress asks of a run whose
// guest stopped answering.
func TestVMRunDiagnosis(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(vesselBin, "vm", "run", "--disk", disk, "--", "sh", "-c", "echo up; sleep 600")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitUp(t, cmd, out, &stderr, bootTimeout)
	expectDiagnosis(t, cmd, &stderr, cmd.Process.Pid, "stopped for a diagnosis", "the VM's state when vessel gave up on it:",
		"vCPU 0: ", "rip 0x", "cr3 0x", "stack [", "IOAPIC: irr", "q0 avail", "block status 0xf")
}
