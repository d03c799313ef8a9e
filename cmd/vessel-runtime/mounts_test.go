package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// bindFilesChild is set in the environment of the child that
// TestBindFiles runs in a mount namespace of its own, as create runs
// the VMM process.
const bindFilesChild = "VESSEL_RUNTIME_TEST_BINDFILES"

func TestMain(m *testing.M) {
	if dir := os.Getenv(bindFilesChild); dir != "" {
		if err := bindFilesProbe(dir); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// bindFilesProbe lays out the files share for dir/ro and dir/rw and
// reports what a 9P server working in it could do: list it, read and
// write each file, create a file beside them.
func bindFilesProbe(dir string) error {
	if err := privateMounts(); err != nil {
		return err
	}
	binds := []bind{
		{source: filepath.Join(dir, "src", "ro"), file: true, vol: agentproto.Volume{Tag: filesTag, Path: "f0", Destination: "/etc/hosts", ReadOnly: true}},
		{source: filepath.Join(dir, "src"), vol: agentproto.Volume{Tag: "vessel-bind-0", Destination: "/data"}},
		{source: filepath.Join(dir, "src", "rw"), file: true, vol: agentproto.Volume{Tag: filesTag, Path: "f1", Destination: "/etc/resolv.conf"}},
	}
	share, err := bindFiles(filepath.Join(dir, "state"), binds)
	if err != nil {
		return err
	}
	ents, _ := os.ReadDir(share)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	fmt.Printf("share %s: %s\n", strings.TrimPrefix(share, dir), strings.Join(names, " "))
	for _, f := range []string{"f0", "f1"} {
		b, _ := os.ReadFile(filepath.Join(share, f))
		err := appendFile(filepath.Join(share, f), "more\n")
		fmt.Printf("%s: %q write=%v\n", f, b, errno(err))
	}
	err = os.WriteFile(filepath.Join(share, "new"), nil, 0o644)
	fmt.Printf("create: %v\n", errno(err))
	err = os.Remove(filepath.Join(share, "f0"))
	fmt.Printf("remove: %v\n", errno(err))
	return nil
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(s)
	return err
}

// errno names an error's errno, or "ok".
func errno(err error) string {
	var e unix.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	if err != nil {
		return err.Error()
	}
	return "ok"
}

// TestBindFiles: the files share holds exactly the bound files, a
// read-only one cannot be written through it, a read-write one writes
// the host file, nothing can be added or removed, and none of it is
// visible outside the VMM process's mount namespace.
func TestBindFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bind mounts in a new mount namespace need root; `make test` runs as root")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(dir, "state"), 0o700)
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "ro"), []byte("ro\n"), 0o644)
	os.WriteFile(filepath.Join(src, "rw"), []byte("rw\n"), 0o644)
	os.WriteFile(filepath.Join(src, "sibling"), []byte("secret\n"), 0o644)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), bindFilesChild+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	want := `share /state/files: f0 f1
f0: "ro\n" write=EROFS
f1: "rw\n" write=ok
create: EROFS
remove: EROFS
`
	if string(out) != want {
		t.Errorf("the share, seen by its VMM process:\n%s\nwant\n%s", out, want)
	}
	if b, _ := os.ReadFile(filepath.Join(src, "rw")); string(b) != "rw\nmore\n" {
		t.Errorf("the read-write file on the host: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(src, "ro")); string(b) != "ro\n" {
		t.Errorf("the read-only file on the host: %q", b)
	}
	// The mounts were the child's: here the share is an empty directory.
	if ents, err := os.ReadDir(filepath.Join(dir, "state", filesDir)); err != nil || len(ents) != 0 {
		t.Errorf("the share outside the VMM's namespace: %v %v, want an empty directory", ents, err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), dir) {
		t.Errorf("a mount of the child reached this namespace:\n%s", mi)
	}
}
