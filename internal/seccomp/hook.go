//go:build !seccomptest

package seccomp

// afterInstall is a test build's hook (hook_seccomptest.go).
func afterInstall(Profile) {}
