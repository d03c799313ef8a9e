package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// guestMain runs a workload inside the guest and prints its RESULT lines,
// then the interrupts its virtio devices took meanwhile (an IRQS line,
// counted by the guest from /proc/interrupts, the same way under every
// VMM).
func guestMain(args []string) error {
	before, irqErr := guestIRQs()
	if err := guestWorkload(args); err != nil {
		return err
	}
	if irqErr == nil {
		var after irqCounts
		if after, irqErr = guestIRQs(); irqErr == nil {
			printIRQs(after.sub(before))
		}
	}
	if irqErr != nil {
		fmt.Fprintf(os.Stderr, "benchio guest: interrupts not counted: %v\n", irqErr)
	}
	return nil
}

// guestWorkload runs one workload:
//
//	idle                          nothing (the boot-only baseline)
//	block SIZE OPS DURATION       /dev/vda: sequential write, read, random read
//	tcp-send HOST:PORT BYTES      send to a host listener
//	tcp-recv PORT                 receive one stream
//	vsock-send PORT BYTES         send to the host (CID 2)
//	vsock-recv PORT               receive one stream
func guestWorkload(args []string) error {
	if len(args) == 0 {
		return errors.New("no workload")
	}
	num := func(i int) (int64, error) {
		if i >= len(args) {
			return 0, fmt.Errorf("%s: missing argument %d", args[0], i)
		}
		return strconv.ParseInt(args[i], 10, 64)
	}
	switch args[0] {
	case "idle":
		return nil
	case "block":
		size, err := num(1)
		if err != nil {
			return err
		}
		ops, err := num(2)
		if err != nil {
			return err
		}
		if len(args) < 4 {
			return errors.New("block: missing duration")
		}
		dur, err := time.ParseDuration(args[3])
		if err != nil {
			return err
		}
		rs, err := blockWorkloads("/dev/vda", size, ops, dur)
		if err != nil {
			return err
		}
		for _, r := range rs {
			printResult(r)
		}
		return nil
	case "tcp-send":
		n, err := num(2)
		if err != nil {
			return err
		}
		c, err := net.DialTimeout("tcp", args[1], 30*time.Second)
		if err != nil {
			return err
		}
		d, err := sendAll(c.(*net.TCPConn), n)
		if err != nil {
			return err
		}
		printResult(Result{Name: "tcp send", Bytes: n, Seconds: d.Seconds()})
		return nil
	case "tcp-recv":
		port, err := num(1)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			return err
		}
		fmt.Println(listeningLine)
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			return err
		}
		k, d, err := recvAll(c)
		if err != nil {
			return err
		}
		printResult(Result{Name: "tcp recv", Bytes: k, Seconds: d.Seconds()})
		return nil
	case "vsock-send":
		port, err := num(1)
		if err != nil {
			return err
		}
		n, err := num(2)
		if err != nil {
			return err
		}
		c, err := dialVsock(uint32(port))
		if err != nil {
			return err
		}
		d, err := sendAll(c, n)
		c.Close()
		if err != nil {
			return err
		}
		printResult(Result{Name: "vsock send", Bytes: n, Seconds: d.Seconds()})
		return nil
	case "vsock-recv":
		port, err := num(1)
		if err != nil {
			return err
		}
		c, err := acceptVsock(uint32(port))
		if err != nil {
			return err
		}
		k, d, err := recvAll(c)
		if err != nil {
			return err
		}
		printResult(Result{Name: "vsock recv", Bytes: k, Seconds: d.Seconds()})
		return nil
	}
	return fmt.Errorf("unknown workload %q", args[0])
}
