//go:build cgo

package jail

// withCgo: syscall.AllThreadsSyscall, which Enter needs, fails with
// ENOTSUP in a program linked with cgo (go test -race is).
const withCgo = true
