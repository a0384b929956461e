#!/usr/bin/env bash
# Build the relaybox appliance image for a Raspberry Pi 4 or 5.
#
#   scripts/build-image.sh rpi4|rpi5
#
# Downloads a pinned Buildroot release (checked against its sha256), builds with
# BR2_EXTERNAL=image/ and leaves build/image-<board>/sdcard.img.xz and sdcard.img.xz.sha256.
# Needs the internet, ~20 GB of disk and a few hours; it is not part of CI (CI only checks the
# tree: tests/test_image_tree.py). Run it as a normal user on a Debian/Ubuntu machine with
# Buildroot's host dependencies (build-essential, file, wget, cpio, unzip, rsync, bc, python3, ...).
#
# Environment: BUILD_DIR (default build/), JOBS (default nproc), DL_DIR (shared download cache).
# Development builds of your working tree: put RELAYBOX_OVERRIDE_SRCDIR=<repo> in
# $BUILD_DIR/image-<board>/local.mk (see image/package/relaybox/relaybox.mk).
set -euo pipefail

# Buildroot 2026.05.1, not the 2025.02.x/2026.02.x LTS: relaybox needs Rust >= 1.95
# (rust-version in Cargo.toml), and the LTS releases ship Rust 1.82 (2025.02) and 1.88 (2026.02).
# 2026.05.1 ships Rust 1.96.1. Every BR2_ symbol in the defconfigs also exists in 2025.02.16.
BR_VERSION=2026.05.1
# sha256 of buildroot-2026.05.1.tar.xz (tag 2026.05.1 = commit cb857ba4c87a93e5265a9e4a3f32071abf39e14a).
# Taken from two independent public notes, not yet from our own download: on the first online build
# also check the release signature (https://buildroot.org/downloads/buildroot-2026.05.1.tar.xz.sign).
BR_SHA256=ae7f706f087b9ae9083a10a587368dfbf53103c28bf81c2d690198dc4090cb58
BR_URL=https://buildroot.org/downloads/buildroot-${BR_VERSION}.tar.xz

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
board=${1:-}
case "$board" in
	rpi4) defconfig=relaybox_rpi4_64_defconfig ;;
	rpi5) defconfig=relaybox_rpi5_defconfig ;;
	*) echo "usage: $0 rpi4|rpi5" >&2; exit 2 ;;
esac

build=${BUILD_DIR:-$REPO/build}
src=$build/buildroot-$BR_VERSION
out=$build/image-$board
tarball=$build/buildroot-$BR_VERSION.tar.xz
mkdir -p "$build"

if [ ! -d "$src" ]; then
	if [ ! -f "$tarball" ]; then
		echo "fetching $BR_URL"
		wget -q -O "$tarball.part" "$BR_URL"
		mv "$tarball.part" "$tarball"
	fi
	echo "$BR_SHA256  $tarball" | sha256sum -c --quiet - || {
		echo "sha256 mismatch for $tarball; delete it to download again" >&2
		exit 1
	}
	tar -C "$build" -xf "$tarball"
fi

make_br() {
	make -C "$src" O="$out" BR2_EXTERNAL="$REPO/image" ${DL_DIR:+BR2_DL_DIR="$DL_DIR"} "$@"
}

[ -f "$out/.config" ] || make_br "$defconfig"
make_br -j"${JOBS:-$(nproc)}"

img=$out/images/sdcard.img
xz -T0 -9 -k -f "$img"
(cd "$out/images" && sha256sum sdcard.img.xz > sdcard.img.xz.sha256)
echo
echo "image:    $img.xz"
echo "checksum: $out/images/sdcard.img.xz.sha256"
echo "flash with Raspberry Pi Imager (Use custom) or: xzcat $img.xz | sudo dd of=/dev/sdX bs=4M conv=fsync status=progress"
