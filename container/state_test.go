package container

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestStateLifecycle(t *testing.T) {
	root := t.TempDir()
	a := &State{ID: strings.Repeat("a", 64), Name: "web", Created: time.Now(), Status: StatusRunning, Pid: os.Getpid()}
	b := &State{ID: "ab" + strings.Repeat("0", 62), Name: "db", Created: time.Now().Add(time.Second), Status: StatusExited, ExitCode: 3}
	for _, s := range []*State{a, b} {
		if err := Create(root, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := Create(root, &State{ID: strings.Repeat("c", 64), Name: "web"}); !errors.Is(err, ErrNameInUse) {
		t.Errorf("a second container named web: %v, want ErrNameInUse", err)
	}
	l, err := List(root)
	if err != nil || len(l) != 2 || l[0].Name != "db" {
		t.Fatalf("List = %v, %v; want db then web", l, err)
	}
	for ref, want := range map[string]string{"web": "web", "aaaa": "web", "ab0": "db", "db": "db"} {
		if s, err := Find(root, ref); err != nil || s.Name != want {
			t.Errorf("Find(%q) = %v, %v; want %s", ref, s, err, want)
		}
	}
	for _, ref := range []string{"a", "zz", ""} { // "a" is ambiguous
		if _, err := Find(root, ref); !errors.Is(err, ErrNoContainer) {
			t.Errorf("Find(%q): %v, want ErrNoContainer", ref, err)
		}
	}
	if !a.Running() {
		t.Error("a state whose process (this test) runs is not running")
	}
	if b.Running() {
		t.Error("an exited state is running")
	}
	if err := a.Delete(); err != nil {
		t.Fatal(err)
	}
	if l, _ := List(root); len(l) != 1 {
		t.Errorf("%d states after Delete, want 1", len(l))
	}
}

func TestLog(t *testing.T) {
	p := t.TempDir() + "/log.json"
	l, err := OpenLog(p)
	if err != nil {
		t.Fatal(err)
	}
	out, errw := l.Writer("stdout"), l.Writer("stderr")
	out.Write([]byte("one\n"))
	errw.Write([]byte("oops\n"))
	out.Write([]byte("two\n"))
	l.Close()
	// A torn last line, as while the container writes, is skipped.
	f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"log":"tor`)
	f.Close()
	var o, e bytes.Buffer
	if err := CopyLog(p, &o, &e); err != nil {
		t.Fatal(err)
	}
	if o.String() != "one\ntwo\n" || e.String() != "oops\n" {
		t.Errorf("replayed stdout %q stderr %q", o.String(), e.String())
	}
}
