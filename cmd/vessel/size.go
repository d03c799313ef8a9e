package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// parseSize parses a memory size: a number with an optional unit K, M, G
// or T (powers of 1024; "KiB"/"KB"/"k" forms accepted); a bare number is
// MiB, as with QEMU's -m and Firecracker's mem_size_mib.
func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty size")
	}
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q does not start with a number", s)
	}
	n, err := strconv.ParseUint(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	unit := strings.ToUpper(strings.TrimSpace(t[i:]))
	unit = strings.TrimSuffix(strings.TrimSuffix(unit, "IB"), "B")
	var shift uint
	switch unit {
	case "":
		shift = 20
	case "K":
		shift = 10
	case "M":
		shift = 20
	case "G":
		shift = 30
	case "T":
		shift = 40
	default:
		return 0, fmt.Errorf("size %q has an unknown unit (use K, M, G or T)", s)
	}
	if n > math.MaxUint64>>shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n << shift, nil
}
