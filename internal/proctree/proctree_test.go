package proctree

import (
	"os"
	"os/exec"
	"slices"
	"testing"
)

func TestTree(t *testing.T) {
	c := exec.Command("sh", "-c", "sleep 30 & wait")
	if err := c.Start(); err != nil {
		t.Skip(err)
	}
	defer func() { c.Process.Kill(); c.Wait() }()
	var tree []int
	for i := 0; i < 100 && len(tree) < 3; i++ {
		var err error
		if tree, err = Tree(os.Getpid()); err != nil {
			t.Fatal(err)
		}
	}
	if len(tree) < 3 || tree[0] != os.Getpid() || !slices.Contains(tree, c.Process.Pid) {
		t.Errorf("Tree(self) = %v, want self, the shell %d and its sleep", tree, c.Process.Pid)
	}
	if _, ok := parent(-1); ok {
		t.Error("parent of no process")
	}
}
