package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseResults(t *testing.T) {
	out := "[    1.0] boot\nRESULT {\"name\":\"tcp recv\",\"bytes\":1048576,\"seconds\":0.5}\r\nnoise RESULT {\"name\":\"x\",\"bytes\":2,\"ops\":4,\"seconds\":2}\n"
	rs, err := parseResults(out)
	if err != nil || len(rs) != 2 {
		t.Fatalf("parseResults: %v %v", rs, err)
	}
	if rs[0].MiBps() != 2 || rs[1].IOPS() != 2 {
		t.Errorf("rates: %v MiB/s, %v IOPS", rs[0].MiBps(), rs[1].IOPS())
	}
	if _, err := parseResults("RESULT {broken"); err == nil {
		t.Error("a broken RESULT line parsed")
	}
	if (Result{}).MiBps() != 0 || (Result{}).IOPS() != 0 {
		t.Error("zero-time result has a rate")
	}
}

func TestPublishedAddr(t *testing.T) {
	if got := publishedAddr([]string{"--net", "user,publish=127.0.0.1:4000:5201"}); got != "127.0.0.1:4000" {
		t.Errorf("publishedAddr = %q", got)
	}
	if got := publishedAddr([]string{"--disk", "x"}); got != "" {
		t.Errorf("publishedAddr without publish = %q", got)
	}
}

func TestParseFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"-size-mib", "8", "-runs", "1", "-workloads", "block,vsock"})
	if err != nil || cfg.Size != 8<<20 || !cfg.Workloads["block"] || cfg.Workloads["tap"] {
		t.Fatalf("parseFlags: %+v %v", cfg, err)
	}
	for _, bad := range [][]string{{"-workloads", "disk"}, {"-runs", "0"}, {"-size-mib", "0"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%v) accepted", bad)
		}
	}
}

func TestRenderMarkdown(t *testing.T) {
	r := &report{
		Platform: "test platform",
		Rows:     []row{{Area: "block", Name: "seq read", Unit: "MiB/s", Guest: 50, Host: 100, HostWhat: "file"}},
		Cost:     []cost{{Run: "block", MiB: 64, UserExits: 2, Notifies: 18, SavedVsExitAll: 10}},
		Took:     90 * time.Second,
	}
	md := renderMarkdown(r)
	for _, want := range []string{"test platform", "| block | seq read | 50.0 MiB/s | 100.0 MiB/s | 0.50x | file |", "10.0x", "Took 1m30s"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestAddCost(t *testing.T) {
	b := &bench{}
	idle := metrics{Exits: map[string]uint64{"io": 300}, KVMStats: map[string]uint64{"exits": 1000}}
	run := metrics{Exits: map[string]uint64{"io": 300, "mmio": 100}, KVMStats: map[string]uint64{"exits": 3000}}
	run.Devices = append(run.Devices, struct {
		Type       string `json:"type"`
		Interrupts uint64 `json:"interrupts"`
		Notifies   uint64 `json:"notifies"`
	}{"net", 50, 900})
	b.addCost("x", "net", 10, run, idle)
	c := b.rep.Cost[0]
	if c.UserExits != 10 || c.KVMExits != 200 || c.Interrupts != 5 || c.Notifies != 90 || c.SavedVsExitAll != 10 {
		t.Errorf("cost %+v", c)
	}
}
