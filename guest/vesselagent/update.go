package main

import (
	"context"
	"errors"

	runc "github.com/containerd/go-runc"
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

// stats reads the container's cgroup statistics with runc events
// --stats.
func (c *container) stats(ctx context.Context) (*runc.Stats, error) {
	st, err := c.runc.Stats(ctx, c.id)
	if err != nil {
		return nil, c.runcError("stats", err)
	}
	if st == nil {
		return nil, errors.New("stats: runc events printed no statistics")
	}
	return st, nil
}
