package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

func TestBzImageVersion(t *testing.T) {
	img := make([]byte, 0x400)
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x20E:], 0x100) // string at 0x300
	copy(img[0x300:], "6.1.192 (root@vm) #1 SMP\x00junk")
	p := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if v, err := bzImageVersion(p); err != nil || v != "6.1.192 (root@vm) #1 SMP" {
		t.Errorf("bzImageVersion = %q, %v", v, err)
	}
	copy(img[0x202:], "XXXX")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := bzImageVersion(p); err == nil {
		t.Error("bzImageVersion accepted an image without HdrS")
	}
}
