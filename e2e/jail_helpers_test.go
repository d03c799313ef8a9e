//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestJailHelpers: with --jail (as root) and --net user, the processes
// the jailed VMM started before it entered the jail (the user network's
// helper, and the helper's seccomp relay) are as confined as the VMM:
// not root, no capabilities, a filter each. (Found by the session 9
// review: they kept root's credentials.)
func TestJailHelpers(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	if os.Geteuid() != 0 {
		t.Skip("--jail needs root")
	}
	c := newCoreEnv(t, 0)
	c.extra = []string{"--jail"}
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
				walk(k, depth+1)
			}
		}
		walk(pid, 0)
		if seen == 0 {
			t.Errorf("the jailed VMM %d has no children: no user network helper?", pid)
		}
	}
	t.Run("vm run", c.vmRun)
	c.checkCoreLeft(t)
}
