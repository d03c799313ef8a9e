#!/usr/bin/env bash
# Builds vessel's guest kernel from Debian's linux-source-6.1 package with the
# project's config fragment (images/kernel/vessel.config) and caches it in the
# user cache dir, keyed by the source package version, the fragment and this
# script. Prints the cache directory holding bzImage, vmlinux and config.
#
#   images/build-kernel.sh            build (or reuse) and print the directory
#
# Environment: VESSEL_CACHE_DIR overrides the cache root
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/vessel).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fragment="$here/kernel/vessel.config"
tarball=/usr/src/linux-source-6.1.tar.xz

if [[ ! -r $tarball ]]; then
	echo "build-kernel: $tarball is missing: install the linux-source-6.1 package (make deps)" >&2
	exit 2
fi
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { echo "$srcver"; cat "$fragment" "$0"; } | sha256sum | cut -c1-16)
cache=${VESSEL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vessel}/kernel
out="$cache/6.1-$key"

if [[ -f $out/bzImage && -f $out/vmlinux ]]; then
	echo "$out"
	exit 0
fi

# One build at a time: a second caller waits, then finds the result.
mkdir -p "$cache"
exec 9>"$cache/.lock"
if ! flock -n 9; then
	echo "build-kernel: another build is running; waiting for it" >&2
	flock 9
fi
if [[ -f $out/bzImage && -f $out/vmlinux ]]; then
	echo "$out"
	exit 0
fi
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "build-kernel: building Linux $srcver with $(basename "$fragment") in $work (about 5 minutes on 2 cores)" >&2
tar -C "$work" -xJf "$tarball"
src="$work/linux-source-6.1"
jobs=$(nproc)
(
	cd "$src"
	make -s tinyconfig
	scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null
	make -s olddefconfig
	# Every option the fragment asks for must have survived olddefconfig:
	# a silently dropped option is a kernel that boots without the feature.
	missing=0
	while IFS= read -r line; do
		case $line in CONFIG_*=*) ;; *) continue ;; esac
		opt=${line%%=*} val=${line#*=}
		if [[ $val == n ]]; then
			if grep -q "^$opt=" .config; then echo "build-kernel: $opt is set but the fragment disables it" >&2; missing=1; fi
		elif ! grep -qx "$opt=$val" .config; then
			echo "build-kernel: $opt=$val did not survive olddefconfig (missing dependency?)" >&2
			missing=1
		fi
	done <"$fragment"
	[[ $missing == 0 ]] || exit 1
	make -s -j"$jobs" bzImage vmlinux
) >&2 # stdout is for the result's path only: kconfig's merge messages go to stderr
staging="$work/out"
mkdir -p "$staging"
cp "$src/arch/x86/boot/bzImage" "$src/vmlinux" "$src/.config" "$staging/"
mv "$staging/.config" "$staging/config"
echo "$srcver" >"$staging/source-version"
rm -rf "$out"
mv "$staging" "$out"
echo "$out"
