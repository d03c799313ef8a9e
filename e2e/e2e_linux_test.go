//go:build e2e

package e2e

import "syscall"

func sysProcAttrNobody() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
}
