//go:build !cgo

package jail

// withCgo: see cgo_test.go.
const withCgo = false
