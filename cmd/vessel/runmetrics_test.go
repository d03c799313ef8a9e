package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/guest/agentproto"
)

func TestGuestSteps(t *testing.T) {
	many := make([]agentproto.Step, 20)
	for i := range many {
		many[i] = agentproto.Step{Name: "runc", MS: float64(i)}
	}
	for _, tc := range []struct {
		name string
		in   []agentproto.Step
		want []string
	}{
		{"none", nil, nil},
		{"ok", []agentproto.Step{{Name: "disks", MS: 1}, {Name: "runc", MS: 2.5}}, []string{"disks", "runc"}},
		{"bad names", []agentproto.Step{{Name: ""}, {Name: "Runc"}, {Name: "a\nb"}, {Name: strings.Repeat("a", 17)}, {Name: "ok"}}, []string{"ok"}},
		{"bad times", []agentproto.Step{{Name: "neg", MS: -1}, {Name: "nan", MS: math.NaN()}, {Name: "inf", MS: math.Inf(1)}, {Name: "ok", MS: 0}}, []string{"ok"}},
		{"too many", many, []string{"runc", "runc", "runc", "runc", "runc", "runc", "runc", "runc"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, s := range guestSteps(tc.in) {
				got = append(got, s.Name)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("guestSteps = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRunPhasesWrite(t *testing.T) {
	r := newRunPhases()
	r.mark("agent")
	r.mark("create", agentproto.Step{Name: "runc", MS: 12.5})
	path := filepath.Join(t.TempDir(), "m.json")
	if err := r.write(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Phases []runPhase `json:"phases"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Phases) != 2 || m.Phases[0].Guest != nil || len(m.Phases[1].Guest) != 1 || m.Phases[1].Guest[0].Name != "runc" || m.Phases[1].Guest[0].MS != 12.5 {
		t.Errorf("phases = %+v", m.Phases)
	}
}
