package cmdline

import (
	"errors"
	"reflect"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, s := range []Spec{
		{},
		{TTY: true},
		{Argv: []string{"uname", "-a"}},
		{Argv: []string{"true"}, Control: true},
		{TTY: true, Control: true},
		{Argv: []string{"sh", "-c", "exit 7"}, TTY: false},
		{Argv: []string{"echo", `a "quoted" arg`, "x=y", "tab\there", "ünïcode", ""}},
		{Control: true, Net: []Net{{MAC: "52:54:00:12:34:56"}}},
		{Net: []Net{
			{MAC: "52:54:00:12:34:56", Addr: "172.16.0.2/24", Gateway: "172.16.0.1", DNS: []string{"1.1.1.1", "2001:db8::1"}, MTU: 9000},
			{MAC: "52:54:00:12:34:57"},
		}},
	} {
		enc, err := Encode(s)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode("console=ttyS0 quiet " + enc + " panic=-1")
		if err != nil {
			t.Fatalf("Decode(%q): %v", enc, err)
		}
		if len(s.Argv) == 0 {
			s.Argv = nil
		}
		if !reflect.DeepEqual(got, s) {
			t.Errorf("round trip of %+v gave %+v", s, got)
		}
	}
}

func TestDecodeMalformed(t *testing.T) {
	for _, in := range []string{"vessel.cmd=!!!", "vessel.cmd=e30", "vessel.cmd=WzEsMl0"} {
		if _, err := Decode(in); !errors.Is(err, ErrBadCmd) {
			t.Errorf("Decode(%q) = %v, want ErrBadCmd", in, err)
		}
	}
}

func TestNetInvalid(t *testing.T) {
	for _, n := range []Net{
		{MAC: "nope"},
		{MAC: "52:54:00:12:34:56", Addr: "10.0.0.2"},
		{MAC: "52:54:00:12:34:56", Addr: "10.0.0.2/24", Gateway: "gw"},
		{MAC: "52:54:00:12:34:56", DNS: []string{"1.1.1"}},
		{MAC: "52:54:00:12:34:56", MTU: 67},
		{MAC: "52:54:00:12:34:56", MTU: 65536},
	} {
		if _, err := Encode(Spec{Net: []Net{n}}); !errors.Is(err, ErrBadNet) {
			t.Errorf("Encode(%+v) = %v, want ErrBadNet", n, err)
		}
	}
	// vessel.net of [{"mac":"x"}] and of something that is not JSON.
	for _, in := range []string{"vessel.net=W3sibWFjIjoieCJ9XQ", "vessel.net=e30", "vessel.net=***"} {
		if _, err := Decode(in); !errors.Is(err, ErrBadNet) {
			t.Errorf("Decode(%q) = %v, want ErrBadNet", in, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("vessel.cmd=WyJscyJd vessel.tty=1")
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := Decode(s)
		if err != nil {
			return
		}
		enc, err := Encode(spec)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Decode(enc)
		if err != nil || !reflect.DeepEqual(again.Argv, spec.Argv) && len(spec.Argv) > 0 {
			t.Fatalf("re-decode of %q: %+v %v", enc, again, err)
		}
	})
}
