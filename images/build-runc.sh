#!/usr/bin/env bash
# Builds a static runc from its Go module for the guest initramfs (the
# OCI runtime vesselagent drives) and caches it in the user cache dir,
# keyed by runc's version, the Go version and this script. Prints the
# binary's path.
#
# cgo is needed (runc's nsenter is C); -static links glibc in, and with
# the seccomp build tag Debian's static libseccomp (libseccomp-dev): the
# specs docker, podman and containerd give carry a seccomp profile, which
# runc applies in the guest as on a host. The libpathrs tag is left out:
# Debian has no build of that library.
#
#   images/build-runc.sh
#
# Environment: VESSEL_CACHE_DIR overrides the cache root
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/vessel).
set -euo pipefail

version=v1.5.2
key=$( { echo "$version"; go env GOVERSION; cat "$0"; } | sha256sum | cut -c1-16)
cache=${VESSEL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vessel}/runc
out="$cache/$version-$key"
if [[ -x $out/runc ]]; then
	echo "$out/runc"
	exit 0
fi
if ! command -v gcc >/dev/null; then
	echo "build-runc: gcc is missing: install gcc and libc6-dev (make deps)" >&2
	exit 2
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "build-runc: building runc $version (static, about a minute)" >&2
if ! pkg-config --exists libseccomp; then
	echo "build-runc: libseccomp is missing: install libseccomp-dev and pkg-config (make deps)" >&2
	exit 2
fi
if ! log=$(GOBIN=$tmp CGO_ENABLED=1 go install -trimpath -tags "seccomp netgo osusergo" \
	-ldflags "-s -w -extldflags -static" "github.com/opencontainers/runc@$version" 2>&1); then
	echo "$log" >&2
	echo "build-runc: go install failed" >&2
	exit 1
fi
rm -rf "$out"
mv "$tmp" "$out"
echo "$out/runc"
