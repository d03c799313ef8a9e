//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestJailHelpers: with --jail (as root) and --net user, the processes
// the jailed VMM started before it entered the jail (the user network's
// helper, and nothing else) are as confined as the VMM: not root, no
// capabilities, a filter each. (Found by the session 9 review: they kept
// root's credentials.)
func TestJailHelpers(t *testing.T) {
	c := jailedCoreEnv(t)
	c.inspectVM = func(t *testing.T, pid int, _ bool) {
		var walk func(p, depth int)
		seen := 0
		walk = func(p, depth int) {
			for _, k := range childrenOf(p) {
				seen++
				st := procStatus(t, k)
				exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", k))
				cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", k))
				t.Logf("the jailed VMM's descendant %d (%s %q): Uid %s CapEff %s Seccomp %s NoNewPrivs %s",
					k, exe, strings.ReplaceAll(string(cmdline), "\x00", " "), st["Uid"], st["CapEff"], st["Seccomp"], st["NoNewPrivs"])
				if st["Uid"] != ids(nobodyID) {
					t.Errorf("descendant %d of the jailed VMM runs as Uid %s, want %s", k, st["Uid"], ids(nobodyID))
				}
				if st["CapEff"] != "0000000000000000" {
					t.Errorf("descendant %d of the jailed VMM has CapEff %s", k, st["CapEff"])
				}
				if st["Seccomp"] != "2" {
					t.Errorf("descendant %d of the jailed VMM has no seccomp filter (Seccomp: %s)", k, st["Seccomp"])
				}
				// Its working directory is on the jail's root file
				// system: relative opens do not reach the host's.
				var cst, rst syscall.Stat_t
				cerr := syscall.Stat(fmt.Sprintf("/proc/%d/cwd", k), &cst)
				rerr := syscall.Stat(fmt.Sprintf("/proc/%d/root", pid), &rst)
				if cerr != nil || rerr != nil || cst.Dev != rst.Dev {
					cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", k))
					t.Errorf("descendant %d of the jailed VMM works in %q (%v), not on the jail's root file system (%v)", k, cwd, cerr, rerr)
				}
				walk(k, depth+1)
			}
		}
		walk(pid, 0)
		// The helper and nothing else: its VMM relays its standard
		// error, with no relay process of its own.
		if seen != 1 {
			t.Errorf("the jailed VMM %d has %d descendants, want one (its user network's helper)", pid, seen)
		}
	}
	t.Run("vm run", c.vmRun)
	c.checkCoreLeft(t)
}

// TestJailCgroupFromLeaf: vessel run from a non-root cgroup that holds
// processes (as under systemd: a session scope, a service) still gives
// the jailed VMM its cgroup with limits. (Found by the session 9 review:
// the jail's group was made below vessel's own, where cgroup v2 refuses
// to delegate controllers, and the VM ran unbounded.)
func TestJailCgroupFromLeaf(t *testing.T) {
	c := jailedCoreEnv(t)
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	own, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "0::")
	if !ok {
		t.Fatalf("no cgroup v2 hierarchy: /proc/self/cgroup is %q", b)
	}
	leaf := "/sys/fs/cgroup/vessel-e2e-leaf"
	if err := os.Mkdir(leaf, 0o755); err != nil {
		t.Fatal(err)
	}
	pid := []byte(fmt.Sprint(os.Getpid()))
	if err := os.WriteFile(leaf+"/cgroup.procs", pid, 0); err != nil {
		os.Remove(leaf)
		t.Fatal(err)
	}
	defer func() {
		if err := os.WriteFile("/sys/fs/cgroup"+own+"/cgroup.procs", pid, 0); err != nil {
			t.Errorf("move back to %s: %v", own, err)
		}
		os.Remove(leaf)
	}()
	t.Run("vm run", c.vmRun)
	c.checkCoreLeft(t)
}
