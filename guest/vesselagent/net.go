package main

import (
	"fmt"
	"net"

	"github.com/vesselvm/vessel/guest/agentproto"
	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/guest/netconf"
)

// stepMAC names the reply's step of Create.MAC's change.
const stepMAC = "mac"

// netAction is one change create makes to the guest's network before it
// makes the container: an interface's new address (mac) or one
// interface's configuration (link).
type netAction struct {
	// step is the reply's step the action is timed in: stepMAC for
	// Create.MAC, agentproto.StepNet for Create.MACs and Create.Net.
	step string
	mac  *agentproto.MACChange
	link *cmdline.Net
}

func (a netAction) String() string {
	if a.mac != nil {
		return fmt.Sprintf("%s: mac %s to %s", a.step, a.mac.From, a.mac.To)
	}
	return fmt.Sprintf("%s: link %s", a.step, a.link.MAC)
}

// planNet checks cr's network changes and returns them in the order
// create applies them: Create.MAC, then Create.MACs, then Create.Net.
// Nothing is changed when one is invalid:
//   - every MAC change parses, gives a unicast Ethernet address, and
//     neither moves an interface another one moves nor gives an address
//     another one gives or moves;
//   - every Net is valid (cmdline.Net.Validate), has an address or is
//     Static (no DHCP: the host gives a restored clone its configuration),
//     is the only one for its interface and, with MAC changes, names the
//     address one of them gives (the interfaces have their template's
//     addresses until then).
func planNet(cr *agentproto.Create) ([]netAction, error) {
	var acts []netAction
	if cr.MAC != nil {
		acts = append(acts, netAction{step: stepMAC, mac: cr.MAC})
	}
	for i := range cr.MACs {
		acts = append(acts, netAction{step: agentproto.StepNet, mac: &cr.MACs[i]})
	}
	from, to := map[string]int{}, map[string]int{}
	for i, a := range acts {
		f, t, err := parseMACChange(a.mac)
		if err != nil {
			return nil, err
		}
		if _, dup := from[f.String()]; dup {
			return nil, fmt.Errorf("mac: two changes move the interface that has %s", f)
		}
		if _, dup := to[t.String()]; dup {
			return nil, fmt.Errorf("mac: two changes give address %s", t)
		}
		from[f.String()], to[t.String()] = i, i
	}
	for a, i := range to {
		if j, ok := from[a]; ok && j != i {
			return nil, fmt.Errorf("mac: %s is both an address to change and one to give", a)
		}
	}
	seen := map[string]bool{}
	for i := range cr.Net {
		n := &cr.Net[i]
		if err := n.Validate(); err != nil {
			return nil, fmt.Errorf("net %s: %w", n.MAC, err)
		}
		if n.DHCP() {
			return nil, fmt.Errorf("net %s: no address and not static: the agent does not run DHCP", n.MAC)
		}
		hw, _ := net.ParseMAC(n.MAC) // Validate parsed it
		mac := hw.String()
		if seen[mac] {
			return nil, fmt.Errorf("net %s: the interface is configured twice", mac)
		}
		seen[mac] = true
		if _, ok := to[mac]; len(to) > 0 && !ok {
			if _, old := from[mac]; old {
				return nil, fmt.Errorf("net %s: a MAC change moves this interface to another address: name that one", mac)
			}
			return nil, fmt.Errorf("net %s: no MAC change gives an interface this address", mac)
		}
		acts = append(acts, netAction{step: agentproto.StepNet, link: n})
	}
	return acts, nil
}

// applyNet carries out planNet's actions in order, each step's timed in
// steps once its last action is done (stepMAC, agentproto.StepNet), and
// returns how many interfaces it configured. It stops at the first
// failure, whose error names the interface and what failed.
func applyNet(acts []netAction, steps *stepTimer) (links int, err error) {
	for i, a := range acts {
		if a.mac != nil {
			err = setMAC(a.mac)
		} else if err = netconf.ConfigureLink(*a.link); err != nil {
			err = fmt.Errorf("net %s: %w", a.link.MAC, err)
		} else {
			links++
		}
		if err != nil {
			return links, err
		}
		if i == len(acts)-1 || acts[i+1].step != a.step {
			steps.mark(a.step)
		}
	}
	return links, nil
}
