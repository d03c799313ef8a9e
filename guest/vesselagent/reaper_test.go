package main

import (
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestReaper: commands started through the reaper get their own exit
// status (128+N when signal N killed them), and an exit that comes
// before anyone watches for it is kept for the watcher.
func TestReaper(t *testing.T) {
	r := newReaper()
	for _, tc := range []struct {
		args []string
		kill syscall.Signal
		want int
	}{
		{[]string{"sh", "-c", "exit 3"}, 0, 3},
		{[]string{"true"}, 0, 0},
		{[]string{"sleep", "10"}, syscall.SIGKILL, 128 + 9},
		{[]string{"sleep", "10"}, syscall.SIGTERM, 128 + 15},
	} {
		c := exec.Command(tc.args[0], tc.args[1:]...)
		ch, err := r.Start(c)
		if err != nil {
			t.Fatal(err)
		}
		if tc.kill != 0 {
			c.Process.Signal(tc.kill)
		}
		if got, _ := r.Wait(c, ch); got != tc.want {
			t.Errorf("%q (signal %d): status %d, want %d", tc.args, tc.kill, got, tc.want)
		}
	}

	// An exit nobody waits for yet, as a container process that runc
	// started and that ended before its pid file was read.
	c := exec.Command("sh", "-c", "exit 5")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		_, ok := r.unclaimed[c.Process.Pid]
		r.mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the exit was not collected")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case e := <-r.watch(c.Process.Pid):
		if e.Status != 5 {
			t.Errorf("kept exit status %d, want 5", e.Status)
		}
	case <-time.After(5 * time.Second):
		t.Error("watch missed an exit that had happened")
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{
		"abc": true, "a-b_c.d": true, "0123456789abcdef": true,
		"": false, "-a": false, "a/b": false, "../x": false, "a b": false,
	} {
		if validID(id) != want {
			t.Errorf("validID(%q) = %v", id, !want)
		}
	}
}
