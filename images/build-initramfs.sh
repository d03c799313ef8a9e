#!/usr/bin/env bash
# Builds vessel's guest initramfs with u-root's mkuimage (Go module mode,
# offline from the module cache): vessel's guest init (guest/vesselinit) as
# /init, vessel's container agent (guest/vesselagent) with a static runc
# (images/build-runc.sh) as /bin/runc, plus the u-root commands listed in
# images/tools.go and gosh as the shell (/bin/sh) for debugging.
#
#   images/build-initramfs.sh OUT.cpio
set -euo pipefail
out=${1:?usage: build-initramfs.sh OUT.cpio}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mapfile -t cmds < <(grep -o '"github.com/u-root/u-root/cmds/[a-z]*/[a-z0-9_-]*"' images/tools.go | tr -d '"')
runc=$(images/build-runc.sh)
tmp="$out.tmp.$$"
# mkuimage keeps its work dir on failure: give it one we always remove.
work=$(mktemp -d)
trap 'rm -rf "$tmp" "$work"' EXIT
# mkuimage logs every step; keep its output unless it fails.
if ! log=$(TMPDIR=$work GOFLAGS=-mod=mod go tool mkuimage -initcmd=vesselinit -defaultsh=gosh -o "$tmp" \
	-files "$runc:bin/runc" "${cmds[@]}" ./guest/vesselinit ./guest/vesselagent 2>&1); then
	echo "$log" >&2
	echo "build-initramfs: mkuimage failed" >&2
	exit 1
fi
mv "$tmp" "$out"
