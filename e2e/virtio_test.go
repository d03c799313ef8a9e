//go:build e2e

package e2e

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

var (
	roDiskSum = flag.String("e2e.rosum", "", "guest half of TestDisks: SHA-256 of the read-only disk")
)

// ext4Image makes a sparse image of size bytes at path holding an ext4
// file system, filled from the directory tree unless tree is "".
func ext4Image(t *testing.T, path string, size int64, tree string) string {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	args := []string{"-q", "-F"}
	if tree != "" {
		args = append(args, "-d", tree)
	}
	if out, err := exec.Command("mkfs.ext4", append(args, path)...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return path
}

// diskFiles are the files the guest writes onto the ext4 disk: name and
// size.
var diskFiles = []struct {
	name string
	size int
}{{"small", 1000}, {"one-mib", 1 << 20}, {"eight-mib", 8 << 20}}

// TestDisks attaches two disks: an ext4 image the guest mounts and fills
// with random files, and a read-only raw image with a serial. The host then
// reads the files back out of the ext4 image (debugfs) and compares the
// checksums the guest printed, and checks the read-only image is
// unchanged.
func TestDisks(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	dir := t.TempDir()
	fsImg := filepath.Join(dir, "fs.img")
	var before int64
	// A fresh file system for every attempt (vesselCmd retries a
	// platform fault), so a crashed attempt's writes count for nothing.
	fresh := func(*exec.Cmd) {
		ext4Image(t, fsImg, 64<<20, "")
		before = allocated(t, fsImg)
	}
	roImg := filepath.Join(dir, "ro.img")
	ro := make([]byte, 1<<20)
	rand.Read(ro)
	if err := os.WriteFile(roImg, ro, 0o644); err != nil {
		t.Fatal(err)
	}
	roSum := sha256.Sum256(ro)

	r := vesselCmd(t, fresh, "vm", "run", "--kernel", filepath.Join(guestDir, "bzImage"), "--initrd", guestInitrd(t),
		"--disk", fsImg, "--disk", roImg+",ro,serial=vessel-ro",
		"--", "/e2e.test", "-e2e.guest", "-test.run", "^TestGuestDisks$", "-test.v", "-e2e.rosum="+hex.EncodeToString(roSum[:]))
	if r.code != 0 || !strings.Contains(r.stdout, "--- PASS: TestGuestDisks") {
		t.Fatalf("guest check failed:\n%v", r)
	}
	sums := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "SUM" {
			sums[f[1]] = f[2]
		}
	}
	for _, f := range diskFiles {
		out := filepath.Join(dir, "out-"+f.name)
		if b, err := exec.Command("debugfs", "-R", fmt.Sprintf("dump /%s %s", f.name, out), fsImg).CombinedOutput(); err != nil {
			t.Fatalf("debugfs dump %s: %v\n%s", f.name, err, b)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatalf("%s not in the image the guest wrote: %v", f.name, err)
		}
		h := sha256.Sum256(b)
		if got := hex.EncodeToString(h[:]); len(b) != f.size || got != sums[f.name] {
			t.Errorf("%s: host reads %d bytes, sha256 %s; guest wrote %d bytes, sha256 %q", f.name, len(b), got, f.size, sums[f.name])
		}
	}
	after, _ := os.ReadFile(roImg)
	if sha256.Sum256(after) != roSum {
		t.Error("the read-only image changed")
	}
	// Discard: the guest also wrote and deleted a scratch file of
	// scratchSize on a file system mounted with -o discard. Had its
	// blocks not been punched out of the image, the image would hold
	// them too.
	grown := allocated(t, fsImg) - before
	var files int64
	for _, f := range diskFiles {
		files += int64(f.size)
	}
	const journal = 4 << 20 // mke2fs's journal for a 64 MiB file system
	if limit := files + journal + scratchSize/2; grown > limit {
		t.Errorf("the image grew by %d KiB for %d KiB of files: the %d KiB the guest deleted were not discarded",
			grown>>10, files>>10, scratchSize>>10)
	}
	t.Logf("image grew by %d KiB for %d KiB of files (%d KiB written and deleted)", grown>>10, files>>10, scratchSize>>10)
}

// scratchSize is what the guest writes and deletes to show discard.
const scratchSize = 24 << 20

// allocated returns the bytes a sparse file has allocated.
func allocated(t *testing.T, path string) int64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestGuestDisks is the guest half of TestDisks.
func TestGuestDisks(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of TestDisks; runs inside the VM")
	}
	// The read-only disk: flagged so, with its serial, readable, and
	// refusing writes.
	for file, want := range map[string]string{"/sys/block/vdb/ro": "1", "/sys/block/vdb/serial": "vessel-ro", "/sys/block/vda/ro": "0"} {
		b, err := os.ReadFile(file)
		if got := strings.TrimSpace(string(b)); err != nil || got != want {
			t.Errorf("%s = %q (%v), want %q", file, got, err, want)
		}
	}
	if f, err := os.OpenFile("/dev/vdb", os.O_WRONLY, 0); err == nil {
		_, werr := f.Write(make([]byte, 512))
		serr := f.Sync()
		f.Close()
		if werr == nil && serr == nil {
			t.Error("wrote to the read-only disk")
		}
	}
	f, err := os.Open("/dev/vdb")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	io.Copy(h, f)
	f.Close()
	if got := hex.EncodeToString(h.Sum(nil)); got != *roDiskSum {
		t.Errorf("read-only disk reads as sha256 %s, host has %s", got, *roDiskSum)
	}

	// The ext4 disk: mount, write, sync, unmount.
	if err := os.MkdirAll("/mnt", 0o755); err != nil {
		t.Fatal(err)
	}
	// The disk caches writes (so the driver sends flushes) and takes
	// discards.
	for file, want := range map[string]string{"/sys/block/vda/queue/write_cache": "write back", "/sys/block/vda/queue/discard_max_bytes": "!0"} {
		b, _ := os.ReadFile(file)
		got := strings.TrimSpace(string(b))
		if want == "!0" && (got == "" || got == "0") || want != "!0" && got != want {
			t.Errorf("%s = %q, want %s", file, got, want)
		}
	}
	if err := unix.Mount("/dev/vda", "/mnt", "ext4", 0, "discard"); err != nil {
		t.Fatalf("mount /dev/vda: %v", err)
	}
	scratch := make([]byte, scratchSize)
	rand.Read(scratch)
	if err := os.WriteFile("/mnt/scratch", scratch, 0o644); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	if err := os.Remove("/mnt/scratch"); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	for _, df := range diskFiles {
		b := make([]byte, df.size)
		rand.Read(b)
		if err := os.WriteFile("/mnt/"+df.name, b, 0o644); err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		fmt.Printf("SUM %s %s\n", df.name, hex.EncodeToString(s[:]))
	}
	unix.Sync()
	if err := unix.Unmount("/mnt", 0); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	// Mounting the read-only disk's device read-write must fail.
	if err := unix.Mount("/dev/vdb", "/mnt", "ext4", 0, ""); err == nil {
		unix.Unmount("/mnt", 0)
		t.Error("mounted the read-only disk read-write")
	}
}

// TestEntropy checks that the guest's CRNG is ready at init, fed by
// virtio-rng, without waiting.
func TestEntropy(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	r := vessel(t, "vm", "run", "--kernel", filepath.Join(guestDir, "bzImage"), "--initrd", guestInitrd(t),
		"--", "/e2e.test", "-e2e.guest", "-test.run", "^TestGuestEntropy$", "-test.v")
	if r.code != 0 || !strings.Contains(r.stdout, "--- PASS: TestGuestEntropy") {
		t.Fatalf("guest check failed:\n%v", r)
	}
}

// TestGuestEntropy is the guest half of TestEntropy.
func TestGuestEntropy(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of TestEntropy; runs inside the VM")
	}
	b, err := os.ReadFile("/sys/class/misc/hw_random/rng_current")
	if got := strings.TrimSpace(string(b)); err != nil || !strings.HasPrefix(got, "virtio_rng") {
		t.Errorf("hw_random source %q (%v), want virtio_rng", got, err)
	}
	buf := make([]byte, 32)
	if _, err := unix.Getrandom(buf, unix.GRND_NONBLOCK); err != nil {
		if errors.Is(err, unix.EAGAIN) {
			t.Fatal("getrandom would block: the CRNG is not ready at init")
		}
		t.Fatal(err)
	}
	hw, err := os.Open("/dev/hwrng")
	if err != nil {
		t.Fatal(err)
	}
	defer hw.Close()
	if _, err := io.ReadFull(hw, buf); err != nil {
		t.Fatalf("read /dev/hwrng: %v", err)
	}
}

// TestRootDisk boots from a disk: the initramfs's tree (vessel's init
// included) on an ext4 image, no initrd, root=/dev/vda. The guest checks
// that its root is that disk and leaves a file there for the host to find.
func TestRootDisk(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	cpioFile, err := os.Open(filepath.Join(guestDir, "initramfs.cpio"))
	if err != nil {
		t.Fatal(err)
	}
	defer cpioFile.Close()
	ex := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	ex.Dir, ex.Stdin = tree, cpioFile
	if out, err := ex.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(tree, "e2e.test"), selfBinary(t), 0o755); err != nil {
		t.Fatal(err)
	}
	img := ext4Image(t, filepath.Join(dir, "root.img"), 256<<20, tree)
	r := vessel(t, "vm", "run", "--kernel", filepath.Join(guestDir, "bzImage"), "--disk", img,
		"--cmdline", defaultCmdline+" root=/dev/vda rw init=/init",
		"--", "/e2e.test", "-e2e.guest", "-test.run", "^TestGuestRootDisk$", "-test.v")
	if r.code != 0 || !strings.Contains(r.stdout, "--- PASS: TestGuestRootDisk") {
		t.Fatalf("guest check failed:\n%v", r)
	}
	out := filepath.Join(dir, "written")
	if b, err := exec.Command("debugfs", "-R", "dump /root-disk-proof "+out, img).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v\n%s", err, b)
	}
	if b, _ := os.ReadFile(out); string(b) != "written on the root disk\n" {
		t.Errorf("the file the guest wrote on / reads %q on the host", b)
	}
}

// TestGuestRootDisk is the guest half of TestRootDisk.
func TestGuestRootDisk(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of TestRootDisk; runs inside the VM")
	}
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[1] == "/" && f[2] == "ext4" {
			found = true
		}
	}
	if !found {
		t.Fatalf("/ is not the ext4 disk:\n%s", mounts)
	}
	if err := os.WriteFile("/root-disk-proof", []byte("written on the root disk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
}
