package share

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/hugelgupf/p9/linux"
	"github.com/hugelgupf/p9/p9"
	"golang.org/x/sys/unix"
)

func newShare(t *testing.T, readOnly bool) (*Share, string, p9.File) {
	t.Helper()
	dir := t.TempDir()
	s, err := New(dir, readOnly, NewFDBudget(1024))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	root, err := s.Attach()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return s, dir, root
}

func walk(t *testing.T, f p9.File, names ...string) p9.File {
	t.Helper()
	_, nf, err := f.Walk(names)
	if err != nil {
		t.Fatalf("walk %v: %v", names, err)
	}
	t.Cleanup(func() { nf.Close() })
	return nf
}

func wantErrno(t *testing.T, what string, err error, want linux.Errno) {
	t.Helper()
	if got := linux.ExtractErrno(err); err == nil || got != want {
		t.Errorf("%s: error %v, want %v", what, err, want)
	}
}

func TestReadWrite(t *testing.T) {
	s, dir, root := newShare(t, false)
	f, _, _, err := root.Create("a.txt", p9.ReadWrite, 0o640, p9.NoUID, p9.NoGID)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := f.WriteAt([]byte("hello, share"), 0); n != 12 || err != nil {
		t.Fatalf("write: %d %v", n, err)
	}
	buf := make([]byte, 64)
	n, err := f.ReadAt(buf, 7)
	if err != nil || string(buf[:n]) != "share" {
		t.Fatalf("read: %q %v", buf[:n], err)
	}
	f.Close()
	st, err := os.Stat(filepath.Join(dir, "a.txt"))
	if err != nil {
		t.Fatal(err)
	}
	// The guest's mode, without the host's umask.
	if st.Mode().Perm() != 0o640 || st.Size() != 12 {
		t.Errorf("host sees %v, %d bytes", st.Mode(), st.Size())
	}

	if _, err := root.Mkdir("d", 0o777, p9.NoUID, p9.NoGID); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "d")); err != nil || st.Mode().Perm() != 0o777 {
		t.Errorf("mkdir: %v %v", st.Mode(), err)
	}
	d := walk(t, root, "d")
	if err := root.RenameAt("a.txt", d, "b.txt"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "d", "b.txt")); err != nil || string(b) != "hello, share" {
		t.Fatalf("after rename: %q %v", b, err)
	}
	b := walk(t, root, "d", "b.txt")
	_, _, attr, err := b.GetAttr(p9.AttrMaskAll)
	if err != nil || attr.Size != 12 || !attr.Mode.IsRegular() {
		t.Errorf("getattr: %v %v", attr, err)
	}
	if err := b.SetAttr(p9.SetAttrMask{Size: true, Permissions: true}, p9.SetAttr{Size: 5, Permissions: 0o6755}); err != nil {
		t.Fatal(err)
	}
	st, _ = os.Stat(filepath.Join(dir, "d", "b.txt"))
	if st.Size() != 5 || st.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 || st.Mode().Perm() != 0o755 {
		t.Errorf("setattr: host sees %v, %d bytes", st.Mode(), st.Size())
	}
	if _, err := root.Symlink("d/b.txt", "ln", p9.NoUID, p9.NoGID); err != nil {
		t.Fatal(err)
	}
	if target, err := walk(t, root, "ln").Readlink(); err != nil || target != "d/b.txt" {
		t.Errorf("readlink: %q %v", target, err)
	}
	if err := root.Link(b, "hard"); err != nil {
		t.Fatal(err)
	}
	if err := d.UnlinkAt("b.txt", 0); err != nil {
		t.Fatal(err)
	}
	if err := root.UnlinkAt("d", unix.AT_REMOVEDIR); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "hard")); err != nil || string(b) != "hello" {
		t.Errorf("hard link: %q %v", b, err)
	}
	if _, err := root.StatFS(); err != nil {
		t.Error(err)
	}
	if s.fds.Load() == 0 {
		t.Error("no descriptors counted")
	}
}

func TestReaddir(t *testing.T) {
	_, dir, root := newShare(t, false)
	want := map[string]bool{}
	for i := 0; i < 300; i++ {
		name := fmt.Sprintf("file-%03d", i)
		want[name] = true
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	want["sub"] = true
	d := walk(t, root)
	if _, _, err := d.Open(p9.ReadOnly); err != nil {
		t.Fatal(err)
	}
	// Read in small pages, continuing from the last entry's offset as
	// Linux does; then once more from the start.
	for pass := 0; pass < 2; pass++ {
		var got []string
		off := uint64(0)
		for {
			ents, err := d.Readdir(off, 500)
			if err != nil {
				t.Fatal(err)
			}
			if len(ents) == 0 {
				break
			}
			var size uint64
			for _, e := range ents {
				got = append(got, e.Name)
				size += direntSize(e.Name)
				if e.Name == "sub" && e.Type != p9.TypeDir {
					t.Errorf("sub has type %v", e.Type)
				}
			}
			if size > 500 {
				t.Fatalf("page of %d bytes", size)
			}
			off = ents[len(ents)-1].Offset
		}
		sort.Strings(got)
		if len(got) != len(want) {
			t.Fatalf("pass %d: %d entries, want %d", pass, len(got), len(want))
		}
		for i, n := range got {
			if !want[n] || (i > 0 && got[i-1] == n) {
				t.Fatalf("pass %d: unexpected or repeated %q", pass, n)
			}
		}
	}
}

// TestConfined is the hostile guest: nothing it does reaches outside the
// shared directory.
func TestConfined(t *testing.T) {
	_, dir, root := newShare(t, false)
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	os.WriteFile(secret, []byte("host only"), 0o600)
	// One symlink the host left, one the guest makes.
	os.Symlink(outside, filepath.Join(dir, "hostlink"))
	if _, err := root.Symlink("/", "guestlink", p9.NoUID, p9.NoGID); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Symlink(secret, "filelink", p9.NoUID, p9.NoGID); err != nil {
		t.Fatal(err)
	}
	for _, path := range [][]string{
		{"hostlink", "secret"},
		{"guestlink", "etc", "passwd"},
		{"guestlink", filepath.Base(outside), "secret"},
	} {
		if _, _, err := root.Walk(path); err == nil {
			t.Errorf("walk %v went through a symlink", path)
		}
	}
	for _, name := range []string{"hostlink", "filelink"} {
		l := walk(t, root, name)
		wantErrno(t, "open "+name, func() error { _, _, err := l.Open(p9.ReadOnly); return err }(), linux.ELOOP)
		wantErrno(t, "truncate "+name, l.SetAttr(p9.SetAttrMask{Size: true}, p9.SetAttr{}), linux.EOPNOTSUPP)
		wantErrno(t, "link "+name, root.Link(l, name+"2"), linux.EPERM)
	}
	for _, name := range []string{"..", ".", "a/b", "", "x\x00y"} {
		if _, _, err := root.Walk([]string{name}); err == nil {
			t.Errorf("walk %q succeeded", name)
		}
		if _, _, _, err := root.Create(name, p9.ReadWrite, 0o644, p9.NoUID, p9.NoGID); err == nil {
			t.Errorf("create %q succeeded", name)
		}
		if err := root.UnlinkAt(name, 0); err == nil {
			t.Errorf("unlink %q succeeded", name)
		}
	}
	// Creating over a symlink does not follow it.
	if _, _, _, err := root.Create("filelink", p9.ReadWrite, 0o644, p9.NoUID, p9.NoGID); err == nil {
		t.Error("create over a symlink succeeded")
	}
	// Device nodes, FIFOs and sockets are neither made nor opened.
	for _, mode := range []p9.FileMode{p9.ModeCharacterDevice, p9.ModeBlockDevice, p9.ModeNamedPipe, p9.ModeSocket} {
		_, err := root.Mknod("node", mode|0o666, 1, 3, p9.NoUID, p9.NoGID)
		wantErrno(t, fmt.Sprintf("mknod %#o", mode), err, linux.EPERM)
	}
	if _, err := root.Mknod("plain", p9.ModeRegular|0o644, 0, 0, p9.NoUID, p9.NoGID); err != nil {
		t.Errorf("mknod of a regular file: %v", err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o666); err != nil {
		t.Fatal(err)
	}
	fifo := walk(t, root, "fifo")
	wantErrno(t, "open fifo", func() error { _, _, err := fifo.Open(p9.ReadOnly); return err }(), linux.EPERM)
	if b, _ := os.ReadFile(secret); string(b) != "host only" {
		t.Error("the secret changed")
	}
}

func TestReadOnly(t *testing.T) {
	_, dir, root := newShare(t, true)
	os.WriteFile(filepath.Join(dir, "f"), []byte("data"), 0o644)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	f := walk(t, root, "f")
	for _, flags := range []p9.OpenFlags{p9.WriteOnly, p9.ReadWrite, p9.ReadOnly | unix.O_TRUNC} {
		wantErrno(t, fmt.Sprintf("open %#o", flags), func() error { _, _, err := f.Open(flags); return err }(), linux.EROFS)
	}
	wantErrno(t, "setattr", f.SetAttr(p9.SetAttrMask{Permissions: true}, p9.SetAttr{Permissions: 0o777}), linux.EROFS)
	_, _, _, err := root.Create("new", p9.ReadWrite, 0o644, p9.NoUID, p9.NoGID)
	wantErrno(t, "create", err, linux.EROFS)
	_, err = root.Mkdir("new", 0o755, p9.NoUID, p9.NoGID)
	wantErrno(t, "mkdir", err, linux.EROFS)
	_, err = root.Symlink("f", "new", p9.NoUID, p9.NoGID)
	wantErrno(t, "symlink", err, linux.EROFS)
	wantErrno(t, "link", root.Link(f, "new"), linux.EROFS)
	wantErrno(t, "unlink", root.UnlinkAt("f", 0), linux.EROFS)
	wantErrno(t, "rename", root.RenameAt("f", root, "g"), linux.EROFS)
	if _, _, err := f.Open(p9.ReadOnly); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if n, err := f.ReadAt(buf, 0); string(buf[:n]) != "data" || err != nil {
		t.Errorf("read: %q %v", buf[:n], err)
	}
	_, err = f.WriteAt([]byte("x"), 0)
	wantErrno(t, "write", err, linux.EROFS)
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("the directory changed: %v", entries)
	}
}

// TestFDBudget: the shares of one VM together never hold more
// descriptors than the VM's one budget, whichever of them the guest
// opens files through, and each gets its descriptors back as files
// close.
func TestFDBudget(t *testing.T) {
	const shares, max = 4, 24
	fds := NewFDBudget(max)
	var roots []p9.File
	var all []*Share
	for i := 0; i < shares; i++ {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
		s, err := New(dir, false, fds)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		root, err := s.Attach()
		if err != nil {
			t.Fatal(err)
		}
		all, roots = append(all, s), append(roots, root)
	}
	held := func() int {
		n := 0
		for _, s := range all {
			n += s.OpenFiles()
		}
		return n
	}
	// Every way a guest holds descriptors, through every share in turn,
	// until each share is refused.
	hold := []struct {
		name string
		do   func(root p9.File, i int) (p9.File, error)
	}{
		{"walk", func(root p9.File, _ int) (p9.File, error) {
			_, f, err := root.Walk([]string{"f"})
			return f, err
		}},
		{"open", func(root p9.File, _ int) (p9.File, error) {
			_, f, err := root.Walk([]string{"f"})
			if err == nil {
				if _, _, err = f.Open(p9.ReadOnly); err != nil {
					f.Close()
				}
			}
			return f, err
		}},
		{"create", func(root p9.File, i int) (p9.File, error) {
			f, _, _, err := root.Create(fmt.Sprintf("new%d", i), p9.ReadWrite, 0o644, p9.NoUID, p9.NoGID)
			return f, err
		}},
	}
	var files []p9.File
	refused := make([]bool, shares)
	for i := 0; i < 10*max; i++ {
		k := i % shares
		f, err := hold[i/shares%len(hold)].do(roots[k], i)
		switch {
		case err == nil:
			files = append(files, f)
		case errors.Is(err, linux.ENFILE):
			refused[k] = true
		default:
			t.Fatalf("%s through share %d: %v", hold[i/shares%len(hold)].name, k, err)
		}
		if n := held(); n > max || n != fds.InUse() {
			t.Fatalf("the shares hold %d descriptors, the budget counts %d of %d", n, fds.InUse(), max)
		}
	}
	for k, r := range refused {
		if !r {
			t.Errorf("share %d was never refused", k)
		}
	}
	if fds.InUse() != max {
		t.Errorf("%d of %d descriptors used when every share is refused", fds.InUse(), max)
	}
	// Directories and symlinks made need a descriptor for a moment.
	_, err := roots[0].Mkdir("d", 0o755, p9.NoUID, p9.NoGID)
	wantErrno(t, "mkdir with the budget spent", err, linux.ENFILE)
	for _, f := range files {
		f.Close()
	}
	// Each share's root and the roots the guest attached are left.
	if n := fds.InUse(); n != 2*shares {
		t.Errorf("%d descriptors used after closing, want %d", n, 2*shares)
	}
	if _, err := roots[0].Mkdir("d", 0o755, p9.NoUID, p9.NoGID); err != nil {
		t.Errorf("mkdir after closing: %v", err)
	}
	for i, root := range roots {
		root.Close()
		all[i].Close()
	}
	if n := fds.InUse(); n != 0 {
		t.Errorf("%d descriptors used after the shares closed", n)
	}
	// A share that does not fit is refused.
	if _, err := New(t.TempDir(), false, NewFDBudget(0)); !errors.Is(err, linux.ENFILE) {
		t.Errorf("a share over an empty budget: %v", err)
	}
}

func TestVMFDs(t *testing.T) {
	for _, tc := range []struct {
		nofile uint64
		want   int
	}{
		{0, 0},
		{1024, 256},    // a quarter: the VMM keeps the rest
		{5000, 1250},   // still a quarter: 904 would be left after the reserve
		{20000, 15904}, // the limit minus the VMM's reserve
		{1 << 20, MaxVMFDs},
		{unix.RLIM_INFINITY, MaxVMFDs},
	} {
		got := VMFDs(tc.nofile)
		if got != tc.want {
			t.Errorf("VMFDs(%d) = %d, want %d", tc.nofile, got, tc.want)
		}
		if rest := int64(tc.nofile) - int64(got); tc.nofile < 1<<40 && rest < int64(tc.nofile)*3/4 && rest < VMMReserveFDs {
			t.Errorf("VMFDs(%d) = %d leaves the VMM %d", tc.nofile, got, rest)
		}
	}
}

// TestServer runs the share behind p9's server and client, as the guest
// reaches it.
func TestServer(t *testing.T) {
	s, dir, _ := newShare(t, false)
	os.WriteFile(filepath.Join(dir, "hello"), []byte("from the host"), 0o644)
	before := s.fds.Load()
	cs, ss := net.Pipe()
	srv := p9.NewServer(s)
	done := make(chan error, 1)
	go func() { done <- srv.Handle(ss, ss) }()
	c, err := p9.NewClient(cs, p9.WithMessageSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	root, err := c.Attach("")
	if err != nil {
		t.Fatal(err)
	}
	_, f, err := root.Walk([]string{"hello"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.Open(p9.ReadOnly); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, err := f.ReadAt(buf, 0)
	if string(buf[:n]) != "from the host" {
		t.Errorf("read %q %v", buf[:n], err)
	}
	if _, _, err := root.Walk([]string{".."}); err == nil {
		t.Error("walk .. succeeded")
	}
	f.Close()
	root.Close()
	c.Close()
	<-done
	if n := s.fds.Load(); n != before {
		t.Errorf("%d descriptors left after the connection ended", n)
	}
}

// TestOwner: as root the VMM gives created files the guest's owner, as a
// docker bind mount does; otherwise they are the VMM user's.
func TestOwner(t *testing.T) {
	_, dir, root := newShare(t, false)
	wantUID, wantGID := os.Geteuid(), os.Getegid()
	if wantUID == 0 {
		wantUID, wantGID = 1234, 5678
	}
	f, _, _, err := root.Create("f", p9.ReadWrite, 0o644, 1234, 5678)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := root.Mkdir("d", 0o755, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Symlink("f", "l", 1234, 5678); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"f", "d", "l"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, name), &st); err != nil {
			t.Fatal(err)
		}
		if int(st.Uid) != wantUID || int(st.Gid) != wantGID {
			t.Errorf("%s is owned by %d:%d, want %d:%d", name, st.Uid, st.Gid, wantUID, wantGID)
		}
	}
}
