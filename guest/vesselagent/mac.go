package main

import (
	"bytes"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// setMAC gives the interface that has address m.From address m.To
// (agentproto.Create.MAC and MACs). virtio-net takes a new address while
// it is up (IFF_LIVE_ADDR_CHANGE), so the link's routes and addresses
// stay.
func setMAC(m *agentproto.MACChange) error {
	from, to, err := parseMACChange(m)
	if err != nil {
		return err
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("mac: list the interfaces: %w", err)
	}
	for _, l := range links {
		if bytes.Equal(l.Attrs().HardwareAddr, to) {
			return nil
		}
	}
	for _, l := range links {
		if bytes.Equal(l.Attrs().HardwareAddr, from) {
			if err := netlink.LinkSetHardwareAddr(l, to); err != nil {
				return fmt.Errorf("mac: %s: set address %s: %w", l.Attrs().Name, to, err)
			}
			return nil
		}
	}
	return fmt.Errorf("mac: no interface has address %s", from)
}

// parseMACChange reads m's addresses; the new one must be a unicast
// Ethernet address.
func parseMACChange(m *agentproto.MACChange) (from, to net.HardwareAddr, err error) {
	from, err = net.ParseMAC(m.From)
	if err != nil {
		return nil, nil, fmt.Errorf("mac: %w", err)
	}
	to, err = net.ParseMAC(m.To)
	if err != nil {
		return nil, nil, fmt.Errorf("mac: %w", err)
	}
	if len(to) != 6 || to[0]&1 != 0 {
		return nil, nil, fmt.Errorf("mac: %s is not a unicast Ethernet address", to)
	}
	return from, to, nil
}
