package atomicfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestWrite(t *testing.T) {
	for _, durable := range []bool{false, true} {
		dir := t.TempDir()
		name := filepath.Join(dir, "state.json")
		if err := Write(name, []byte("old"), 0o600, durable); err != nil {
			t.Fatal(err)
		}
		if err := Write(name, []byte("new"), 0o644, durable); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(name)
		if err != nil || string(b) != "new" {
			t.Errorf("durable %v: read %q, %v; want new", durable, b, err)
		}
		if st, err := os.Stat(name); err != nil || st.Mode().Perm() != 0o644 {
			t.Errorf("durable %v: mode %v, %v; want 0644", durable, st.Mode(), err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Errorf("durable %v: %d files in the directory, want 1 (no temporary file left)", durable, len(ents))
		}
	}
}

// TestWriteConcurrent: writers of one name at once never leave a mixed
// or truncated file (each wrote a shared temporary name before, so one
// could truncate what another was renaming).
func TestWriteConcurrent(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "state.json")
	contents := [][]byte{bytes.Repeat([]byte("a"), 64<<10), bytes.Repeat([]byte("b"), 32<<10)}
	var wg sync.WaitGroup
	for _, c := range contents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				if err := Write(name, c, 0o600, false); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(name)
			if err != nil {
				continue // not written yet
			}
			if !bytes.Equal(b, contents[0]) && !bytes.Equal(b, contents[1]) {
				t.Errorf("read a file of %d bytes that neither writer wrote whole", len(b))
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-done
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), TempPrefix(name)) {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

func TestWriteMissingDirectory(t *testing.T) {
	if err := Write(filepath.Join(t.TempDir(), "absent", "f"), nil, 0o600, false); err == nil {
		t.Error("write into a missing directory succeeded")
	}
}
