package main

import (
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestTrimArches(t *testing.T) {
	docker := []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	noIA32 := map[specs.Arch]bool{specs.ArchX86: true}
	for _, tc := range []struct {
		name    string
		in      []specs.Arch
		foreign map[specs.Arch]bool
		want    []specs.Arch
	}{
		{"docker's, no IA32 emulation", docker, noIA32, []specs.Arch{specs.ArchX86_64, specs.ArchX32}},
		{"docker's, a kernel that runs all", docker, nil, docker},
		{"none listed", nil, noIA32, nil},
		{"only foreign ones", []specs.Arch{specs.ArchX86}, noIA32, []specs.Arch{specs.ArchX86}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, Architectures: slices.Clone(tc.in)}
			trimArches(&specs.Spec{Linux: &specs.Linux{Seccomp: s}}, tc.foreign)
			if !slices.Equal(s.Architectures, tc.want) {
				t.Errorf("architectures %v, want %v", s.Architectures, tc.want)
			}
		})
	}
	trimArches(&specs.Spec{}, noIA32)                      // no Linux section: nothing to do, no panic
	trimArches(&specs.Spec{Linux: &specs.Linux{}}, noIA32) // no profile
}
