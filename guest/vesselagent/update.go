package main

import (
	"context"
	"errors"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// update applies new cgroup limits to the container with runc update.
// The host validated them against the VM's size; runc checks the rest.
func (c *container) update(ctx context.Context, r *specs.LinuxResources) error {
	if r == nil {
		return errors.New("update: no resources")
	}
	if err := c.runc.Update(ctx, c.id, r); err != nil {
		return c.runcError("update", err)
	}
	return nil
}
