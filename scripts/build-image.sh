#!/usr/bin/env bash
# Build the relaybox appliance image.
#
#   scripts/build-image.sh                         the image CI builds and tests: one image for the
#                                                  Raspberry Pi 4 and Pi 5, from Debian arm64 packages
#   scripts/build-image.sh --buildroot rpi4|rpi5   the Buildroot alternative (needs the internet)
#
# Debian image (default): offline except for Debian's package mirror. Writes
#   build/relaybox-<version>-rpi-arm64.img.xz      the file to flash (Raspberry Pi Imager, or xzcat | dd)
#   build/relaybox-<version>-rpi-arm64.img.xz.sha256
#   build/relaybox.json                            Raspberry Pi Imager os_list entry for it
#   build/relaybox-<version>-rpi-arm64.img         the same image uncompressed (sparse), for the QEMU test
#
# What is in it: Debian 13 (trixie) arm64 packages, extracted by mmdebstrap --variant=extract
# (cached in ~/.cache/relaybox-image, keyed by the recipe; no maintainer script runs, what they
# would do is done here from the host), the trixie-backports kernel (the one that drives the Pi 5's
# SD controller and RP1 and ships the bcm2712 device trees), raspi-firmware (start4.elf, fixup4.dat
# for the Pi 4; the Pi 5 boots from its EEPROM), firmware-brcm80211 + wpasupplicant (Wi-Fi), a
# static aarch64-musl relaybox, buildroot-overlay/, an EROFS root and a busybox initramfs that
# mounts root=PARTUUID=... from the SD card (or a virtio disk under QEMU).
#
# Card layout (MBR; A/B from the first release, changing it later would strand flashed cards):
#   p1  FAT   32 MiB   RELAYBOOT   config: autoboot.txt, what Raspberry Pi Imager writes, setup code
#   p2  FAT  256 MiB   BOOT-A      kernel, initramfs, DTBs, firmware, config.txt, cmdline.txt
#   p3  FAT  256 MiB   BOOT-B      empty until the first update (next issue)
#   p4  extended, the rest:
#   p5  EROFS 1 GiB    root A      PARTUUID 52424f58-05 (cmdline.txt of BOOT-A)
#   p6        1 GiB    root B      empty
#   p7  ext4  32 MiB   relaybox-data, grown to the end of the card on first boot (data-prepare)
#
# Env: BUILD_DIR (build/), RELAYBOX_IMAGE_CACHE (~/.cache/relaybox-image), RELAYBOX_IMAGE_MIRROR
#      (http://deb.debian.org/debian), RELAYBOX_BUILD_ID (default <commit date>.<commit>[-dirty]),
#      RELAYBOX_IMAGE_URL (the download URL written to relaybox.json), XZ_OPT.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

T0=$(date +%s)
step() { echo "== [build-image +$(( $(date +%s) - T0 ))s] $*"; }
die() { echo "error: $*" >&2; exit 1; }

# =================================================================================================
# Buildroot alternative
# =================================================================================================
buildroot_build() {
	# Buildroot 2026.05.1, not the 2025.02.x/2026.02.x LTS: relaybox needs Rust >= 1.95
	# (rust-version in Cargo.toml), and the LTS releases ship Rust 1.82 (2025.02) and 1.88 (2026.02).
	# 2026.05.1 ships Rust 1.96.1.
	local BR_VERSION=2026.05.1
	# sha256 of buildroot-2026.05.1.tar.xz (tag 2026.05.1 = commit cb857ba4c87a93e5265a9e4a3f32071abf39e14a).
	# Taken from two independent public notes, not yet from our own download: on the first online build
	# also check the release signature (https://buildroot.org/downloads/buildroot-2026.05.1.tar.xz.sign).
	local BR_SHA256=ae7f706f087b9ae9083a10a587368dfbf53103c28bf81c2d690198dc4090cb58
	local BR_URL=https://buildroot.org/downloads/buildroot-${BR_VERSION}.tar.xz
	local board=${1:-} defconfig
	case "$board" in
	rpi4) defconfig=relaybox_rpi4_64_defconfig ;;
	rpi5) defconfig=relaybox_rpi5_defconfig ;;
	*) echo "usage: $0 --buildroot rpi4|rpi5" >&2; exit 2 ;;
	esac
	local build=${BUILD_DIR:-$REPO/build}
	local src=$build/buildroot-$BR_VERSION out=$build/image-$board
	local tarball=$build/buildroot-$BR_VERSION.tar.xz
	mkdir -p "$build"
	if [ ! -d "$src" ]; then
		if [ ! -f "$tarball" ]; then
			echo "fetching $BR_URL"
			wget -q -O "$tarball.part" "$BR_URL"
			mv "$tarball.part" "$tarball"
		fi
		echo "$BR_SHA256  $tarball" | sha256sum -c --quiet - || die "sha256 mismatch for $tarball; delete it to download again"
		tar -C "$build" -xf "$tarball"
	fi
	make_br() { make -C "$src" O="$out" BR2_EXTERNAL="$REPO/image" ${DL_DIR:+BR2_DL_DIR="$DL_DIR"} "$@"; }
	[ -f "$out/.config" ] || make_br "$defconfig"
	# This working tree is the relaybox source (no release tarball, no hash): Buildroot rsyncs it.
	printf 'RELAYBOX_OVERRIDE_SRCDIR = %s\n' "$REPO" >"$out/local.mk"
	make_br relaybox-dirclean >/dev/null 2>&1 || true   # pick up edits of the working tree
	make_br -j"${JOBS:-$(nproc)}"
	local img=$out/images/sdcard.img
	xz -T0 -6 -k -f "$img"
	(cd "$out/images" && sha256sum sdcard.img.xz >sdcard.img.xz.sha256)
	echo
	echo "image:    $img.xz"
	echo "checksum: $out/images/sdcard.img.xz.sha256"
	echo "flash with Raspberry Pi Imager (Use custom) or: xzcat $img.xz | sudo dd of=/dev/sdX bs=4M conv=fsync status=progress"
}

if [ "${1:-}" = --buildroot ]; then
	shift
	buildroot_build "$@"
	exit 0
fi

# =================================================================================================
# Update bundles (issue 15): relaybox-<version>-rpi-arm64.update, signed with the key in
# RELAYBOX_UPDATE_KEY_DIR (default image/test-keys: the committed TEST key, so the image is
# test-signed: fine for CI and trying things out, never for a release; scripts/release-key.sh
# makes a release key pair outside the repository)
# =================================================================================================
KEY_DIR=${RELAYBOX_UPDATE_KEY_DIR:-$REPO/image/test-keys}
update_key() {  # sets UPDATE_PUB, UPDATE_PK8, TEST_SIGNED
	UPDATE_PUB=$KEY_DIR/update-key.pub
	[ -f "$UPDATE_PUB" ] || die "no $UPDATE_PUB (RELAYBOX_UPDATE_KEY_DIR=$KEY_DIR; scripts/release-key.sh DIR makes one)"
	grep -Eqx '[0-9a-f]{64}' "$UPDATE_PUB" || die "$UPDATE_PUB is not one line of 64 hex digits"
	UPDATE_PK8=$KEY_DIR/release-key.pk8
	[ -f "$UPDATE_PK8" ] || UPDATE_PK8=$KEY_DIR/update-test-key.pk8
	[ -f "$UPDATE_PK8" ] || die "no release-key.pk8 (or update-test-key.pk8) in $KEY_DIR"
	TEST_SIGNED=
	if [ "$(cd "$KEY_DIR" && pwd -P)" = "$(cd "$REPO/image/test-keys" 2>/dev/null && pwd -P)" ]; then
		TEST_SIGNED=1
		echo "################################################################################"
		echo "## WARNING: test-signed: updates for this image are signed with the TEST key in"
		echo "## image/test-keys/, whose private half is public. Set RELAYBOX_UPDATE_KEY_DIR to"
		echo "## a release key (scripts/release-key.sh) for anything but tests."
		echo "################################################################################"
	fi
}
# the host's relaybox, for `relaybox update-bundle create` (RELAYBOX_BIN: the one scripts/test.sh built)
host_relaybox() {
	HOST_BIN=${RELAYBOX_BIN:-$REPO/target/release/relaybox}
	if [ ! -x "$HOST_BIN" ] || ! "$HOST_BIN" update-bundle --help >/dev/null 2>&1; then
		step "host build of relaybox (for update-bundle create)"
		nice -n 10 cargo build --release --locked -p relaybox 2>&1 | tail -n 3
		HOST_BIN=$REPO/target/release/relaybox
	fi
	"$HOST_BIN" update-bundle --help >/dev/null 2>&1 || die "$HOST_BIN has no update-bundle subcommand"
}
# make_bundle BOOT.img ROOT.img VERSION BUILD_ID OUT: sign, then check the result with the public key
make_bundle() {
	rm -f "$5"
	"$HOST_BIN" update-bundle create --boot "$1" --root "$2" --version "$3" --build-id "$4" \
		--key "$UPDATE_PK8" --out "$5.tmp" || die "update-bundle create failed"
	"$HOST_BIN" update-bundle verify "$5.tmp" --pubkey "$UPDATE_PUB" >/dev/null \
		|| die "the new bundle does not verify with $UPDATE_PUB"
	mv "$5.tmp" "$5"
}

# --rebundle IN.update OUT.update --version V [--build-id ID] [--broken-relaybox]: a bundle made
# from another one's images with another version in os-release (and, for the QEMU rollback test
# only, a relaybox that exits 1): rebuilds the EROFS root, no cross build, ~1 minute.
rebundle() {
	local in=$1 out=$2 version= build_id= broken=
	shift 2
	while [ $# -gt 0 ]; do
		case $1 in
		--version) version=$2; shift 2 ;;
		--build-id) build_id=$2; shift 2 ;;
		--broken-relaybox) broken=1; shift ;;
		*) die "--rebundle: unknown option $1" ;;
		esac
	done
	[ -n "$version" ] || die "--rebundle needs --version"
	build_id=${build_id:-rebundle.$version${broken:+.broken}}
	local w
	w=$(mktemp -d /tmp/relaybox-rebundle.XXXXXX)
	# shellcheck disable=SC2064
	trap "rm -rf '$w'" EXIT
	python3 - "$in" "$w" <<'PY'
import json, struct, sys
src, w = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    assert f.read(8) == b"RBXUPD01", "not a relaybox update bundle"
    (mlen,) = struct.unpack("<I", f.read(4))
    m = json.loads(f.read(mlen))
    f.read(64)
    for part in ("boot", "root"):
        left = m[part]["size"]
        with open(f"{w}/{part}.img", "wb") as o:
            while left:
                b = f.read(min(left, 1 << 20))
                assert b, "truncated bundle"
                o.write(b)
                left -= len(b)
PY
	fsck.erofs --extract="$w/root" "$w/root.img" >/dev/null || die "cannot extract the root of $in"
	rm -f "$w/root.img"
	sed -i -e "s/^VERSION=.*/VERSION=\"$version (build $build_id)\"/" -e "s/^VERSION_ID=.*/VERSION_ID=\"$version\"/" \
		-e "s/^IMAGE_VERSION=.*/IMAGE_VERSION=\"$version\"/" -e "s/^PRETTY_NAME=.*/PRETTY_NAME=\"relaybox $version\"/" \
		-e "s/^BUILD_ID=.*/BUILD_ID=\"$build_id\"/" "$w/root/usr/lib/os-release"
	if [ -n "$broken" ]; then
		printf '#!/bin/sh\n# QEMU rollback test: a relaybox that never becomes healthy\necho "relaybox: broken on purpose (update rollback test)" >&2\nexit 1\n' \
			>"$w/root/usr/bin/relaybox"
	fi
	mkfs.erofs -zlz4hc -T "$SOURCE_DATE_EPOCH" "$w/root.img" "$w/root" >/dev/null 2>&1 || die "mkfs.erofs failed"
	rm -rf "$w/root"
	printf 'relaybox %s (build %s)\n' "$version" "$build_id" >"$w/relaybox-version.txt"
	mcopy -o -i "$w/boot.img" "$w/relaybox-version.txt" ::relaybox-version.txt
	make_bundle "$w/boot.img" "$w/root.img" "$version" "$build_id" "$out"
	echo "bundle: $out ($(stat -c %s "$out") bytes, version $version, build $build_id${broken:+, relaybox broken on purpose})"
}

if [ "${1:-}" = --rebundle ]; then
	[ $# -ge 3 ] || { echo "usage: $0 --rebundle IN.update OUT.update --version V [--build-id ID] [--broken-relaybox]" >&2; exit 2; }
	shift
	export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
	update_key
	host_relaybox
	rebundle "$@"
	exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--buildroot rpi4|rpi5 | --rebundle IN OUT --version V ...]" >&2; exit 2; }

# =================================================================================================
# Debian arm64 image (CI)
# =================================================================================================
BUILD=${BUILD_DIR:-$REPO/build}
CACHE=${RELAYBOX_IMAGE_CACHE:-$HOME/.cache/relaybox-image}
MIRROR=${RELAYBOX_IMAGE_MIRROR:-http://deb.debian.org/debian}
TARGET=aarch64-unknown-linux-musl
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' relay/Cargo.toml | head -n 1)
[ -n "$VERSION" ] || die "no version in relay/Cargo.toml"
COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
DIRTY=
git diff --quiet HEAD -- 2>/dev/null || DIRTY=-dirty
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
BUILD_ID=${RELAYBOX_BUILD_ID:-$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d).$COMMIT$DIRTY}
NAME=relaybox-$VERSION-rpi-arm64
IMG=$BUILD/$NAME.img
DISK_ID=52424f58   # "RBOX": the MBR disk signature, so PARTUUIDs are 52424f58-0N
ROOT_SLOT_MIB=1024
BOOT_SLOT_MIB=256
CONFIG_MIB=32
DATA_MIB=32

# No maintainer script runs, so the Essential set is named too (apt adds only declared
# dependencies); busybox-static is for the initramfs and leaves the root again. The kernel
# (linux-*) comes from trixie-backports (pinned in the setup hook).
SUITE=trixie
PACKAGES=base-files,base-passwd,bash,bsdutils,coreutils,dash,debianutils,diffutils,findutils,grep,gzip,hostname,init-system-helpers,libc-bin,login,mawk,mount,ncurses-base,sed,sysvinit-utils,tar,util-linux,systemd,systemd-sysv,udev,systemd-resolved,systemd-timesyncd,dbus,iproute2,fdisk,e2fsprogs,ca-certificates,kmod,linux-image-arm64,busybox-static,raspi-firmware,firmware-brcm80211,wpasupplicant,wireless-regdb
# the virtio ones for QEMU, the SD card controllers of the Pi 4 (sdhci-iproc) and Pi 5
# (sdhci-brcmstb) and their SD voltage regulator, EROFS; the rest of what they need comes from
# modules.dep, and what the kernel has built in is skipped
INITRD_MODULES="virtio_pci virtio_blk gpio_regulator sdhci_iproc sdhci_brcmstb mmc_block erofs"

mkdir -p "$BUILD" "$CACHE"
WORK=$(mktemp -d /tmp/relaybox-build-image.XXXXXX)
MMDEB_PID=
cleanup() {
	local rc=$?
	if [ -n "$MMDEB_PID" ] && kill -0 "$MMDEB_PID" 2>/dev/null; then
		kill "$MMDEB_PID" 2>/dev/null || true
		wait "$MMDEB_PID" 2>/dev/null || true
		rm -f "$BASE.tmp"
	fi
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT

# -------------------------------------------------------------------------------------------------
step "tools"
need=()
have mmdebstrap || need+=(mmdebstrap)
have depmod || need+=(kmod)
have cpio || need+=(cpio)
have qemu-aarch64-static || need+=(qemu-user-static)
have mkfs.erofs || need+=(erofs-utils)
have aarch64-linux-gnu-gcc || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
have mkfs.vfat || need+=(dosfstools)
have mcopy || need+=(mtools)
have sfdisk || need+=(fdisk)
have mkfs.ext4 || need+=(e2fsprogs)
have xz || need+=(xz-utils)
have zstd || need+=(zstd)
have file || need+=(file)
apt_install "${need[@]}"
ensure_cargo
update_key
host_relaybox

# -------------------------------------------------------------------------------------------------
# The root filesystem recipe; its hash names the cached tarball.
# Extracting instead of installing: the arm64 maintainer scripts would run under qemu-user and take
# ~25 min on a cold cache, most of it update-initramfs; extracted, a cold cache costs the download.
MMDEB_ARGS=(--variant=extract --arch=arm64 --mode=root --format=tar "--include=$PACKAGES"
	'--setup-hook=printf "Package: linux-*\nPin: release n=trixie-backports\nPin-Priority: 990\n" >"$1/etc/apt/preferences.d/relaybox-kernel"'
	"$SUITE" "deb $MIRROR trixie main non-free-firmware" "deb $MIRROR trixie-backports main non-free-firmware")
KEY=$(printf '%s\n' "${MMDEB_ARGS[@]}" | sha256sum | cut -c1-16)
BASE=$CACHE/rootfs-$SUITE-arm64-$KEY.tar
if [ -s "$BASE" ]; then
	step "arm64 root filesystem: cached $BASE"
else
	step "arm64 root filesystem: mmdebstrap --variant=extract $SUITE (+ backports kernel) in the background (once per recipe)"
	timeout 900 mmdebstrap "${MMDEB_ARGS[@]:0:7}" "$BASE.tmp" "${MMDEB_ARGS[@]:7}" \
		>"$WORK/mmdebstrap.log" 2>&1 &
	MMDEB_PID=$!
fi

# -------------------------------------------------------------------------------------------------
step "cross-build relaybox $VERSION (build $BUILD_ID) for $TARGET"
rustup target list --installed 2>/dev/null | grep -qx "$TARGET" || rustup target add "$TARGET" \
	|| die "rustup target add $TARGET failed (no download?)"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static"
export RELAYBOX_BUILD_ID=$BUILD_ID   # relaybox --version and the admin page show it
# without SOURCE_DATE_EPOCH: cc-based build scripts (ring) rerun when it changes, i.e. every commit
# RELAYBOX_CARGO_CACHE (set by scripts/test.sh in CI): a target dir kept between runs, so a CI
# run on a clean clone compiles only relaybox itself for aarch64, not its 300 dependencies.
CROSS_TARGET_DIR=$REPO/target
[ -z "${RELAYBOX_CARGO_CACHE:-}" ] || CROSS_TARGET_DIR=$RELAYBOX_CARGO_CACHE/cross
env -u SOURCE_DATE_EPOCH nice -n 10 cargo build --release --locked --target "$TARGET" \
	--target-dir "$CROSS_TARGET_DIR" -p relaybox 2>&1 | tail -n 3
BIN=$CROSS_TARGET_DIR/$TARGET/release/relaybox
file "$BIN" | grep -q 'ARM aarch64.*statically linked' || die "$BIN is not a static aarch64 binary"
BIN_VERSION=$(qemu-aarch64-static "$BIN" --version) || die "the aarch64 binary does not run under qemu-user"
echo "$BIN_VERSION"
case $BIN_VERSION in *"(build $BUILD_ID)"*) ;; *) die "relaybox --version does not show the build id $BUILD_ID" ;; esac

if [ -n "$MMDEB_PID" ]; then
	step "waiting for mmdebstrap"
	wait "$MMDEB_PID" || { tail -n 30 "$WORK/mmdebstrap.log"; die "mmdebstrap failed"; }
	MMDEB_PID=
	mv "$BASE.tmp" "$BASE"
	step "arm64 root filesystem: $(stat -c %s "$BASE") bytes in $BASE"
fi

# -------------------------------------------------------------------------------------------------
# The kernel module relaybox_tryboot (image/tryboot-module/), cross-built for the image's kernel
# $KVER. Debian's linux-headers-<abi>-arm64 (arm64 headers, Module.symvers) need the host-arch
# linux-kbuild of the same version (fixdep, modpost) and Debian's gcc-14: trixie packages, which
# this (older) build host may not have; so they are installed into a trixie amd64+arm64 chroot
# (mmdebstrap, native maintainer scripts, ~70 s cold), cached in $CACHE, and make runs in it.
# The .ko is cached too, keyed by kernel and module source.
build_tryboot_module() {
	local src=$REPO/image/tryboot-module key kb tc
	key=$(cat "$src"/Kbuild "$src"/*.c | sha256sum | cut -c1-16)
	TRYBOOT_KO=$CACHE/relaybox_tryboot-$KVER-$key.ko
	if [ -s "$TRYBOOT_KO" ]; then
		step "kernel module relaybox_tryboot for $KVER: cached $TRYBOOT_KO"
		return 0
	fi
	[ "$(uname -m)" = x86_64 ] || die "building relaybox_tryboot needs an x86_64 (amd64) build host"
	kb=linux-headers-$KVER
	tc=$CACHE/kbuild-$KVER
	if [ ! -d "$tc" ]; then
		step "kernel module toolchain: mmdebstrap trixie amd64 chroot with gcc-aarch64-linux-gnu and $kb:arm64 (once per kernel)"
		rm -rf "$tc.tmp"
		timeout 900 mmdebstrap --variant=apt --mode=root --format=directory --architectures=amd64,arm64 \
			--include="make,gcc-aarch64-linux-gnu,$kb:arm64" \
			'--setup-hook=printf "Package: linux-*\nPin: release n=trixie-backports\nPin-Priority: 990\n" >"$1/etc/apt/preferences.d/relaybox-kernel"' \
			"$SUITE" "$tc.tmp" "deb $MIRROR trixie main" "deb $MIRROR trixie-backports main" \
			>"$WORK/mmdebstrap-kbuild.log" 2>&1 || { tail -n 30 "$WORK/mmdebstrap-kbuild.log"; rm -rf "$tc.tmp"
			die "cannot install $kb:arm64 (the kernel in the cached root is $KVER; when the mirror has moved on, delete $BASE to take the newer kernel)"; }
		mv "$tc.tmp" "$tc"
	fi
	step "kernel module relaybox_tryboot: make against /usr/src/$kb in $tc"
	local hdr
	hdr=$(cd "$tc/usr/src" && ls -d "$kb" 2>/dev/null) || die "no /usr/src/$kb in $tc"
	rm -rf "$tc/build"
	mkdir -p "$tc/build"
	cp "$src"/Kbuild "$src"/*.c "$tc/build/"
	chroot "$tc" make -s -C "/usr/src/$hdr" M=/build ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- modules \
		>"$WORK/tryboot-module.log" 2>&1 || { cat "$WORK/tryboot-module.log"; die "building relaybox_tryboot failed"; }
	local ko=$tc/build/relaybox_tryboot.ko vm
	vm=$(modinfo -F vermagic "$ko")
	case $vm in "$KVER "*) ;; *) die "relaybox_tryboot has vermagic '$vm', not the image kernel $KVER" ;; esac
	aarch64-linux-gnu-strip --strip-debug -o "$TRYBOOT_KO.tmp" "$ko"
	mv "$TRYBOOT_KO.tmp" "$TRYBOOT_KO"
	rm -rf "$tc/build"
	echo "relaybox_tryboot.ko: $(stat -c %s "$TRYBOOT_KO") bytes, vermagic $vm"
}

# -------------------------------------------------------------------------------------------------
step "assemble the root: Debian base + buildroot-overlay/ + relaybox"
ROOT=$WORK/root
BOOT=$WORK/boot-a
mkdir -p "$ROOT" "$BOOT"
tar -C "$ROOT" -xpf "$BASE"
rm -rf "$ROOT"/usr/share/doc "$ROOT"/usr/share/man "$ROOT"/usr/share/locale "$ROOT"/usr/share/info \
	"$ROOT"/usr/share/lintian "$ROOT"/var/cache/apt "$ROOT"/var/lib/apt/lists
KVER=$(basename "$(ls -d "$ROOT"/usr/lib/modules/*)")
KDIR=$ROOT/usr/lib/modules/$KVER
#   the boot partition: kernel (an uncompressed arm64 Image), the device trees of both models, the
#   Pi 4 firmware; none of it stays in the root
cp "$KDIR/vmlinuz" "$BOOT/Image"
for dtb in "$KDIR"/dtb/broadcom/bcm2711-*.dtb "$KDIR"/dtb/broadcom/bcm2712-*.dtb; do
	cp "$dtb" "$BOOT/"
done
# The Pi 5 firmware loads bcm2712d0-rpi-5-b.dtb on D0-stepping boards (2 GB, later 4/8 GB);
# upstream Linux calls that tree bcm2712-d-rpi-5-b.dtb.
[ -f "$BOOT/bcm2712-d-rpi-5-b.dtb" ] && cp "$BOOT/bcm2712-d-rpi-5-b.dtb" "$BOOT/bcm2712d0-rpi-5-b.dtb"
for f in start4.elf fixup4.dat; do cp "$ROOT/usr/lib/raspi-firmware/$f" "$BOOT/"; done
rm -rf "$KDIR/vmlinuz" "$KDIR/dtb" "$KDIR/System.map" "$ROOT"/boot/* "$ROOT"/vmlinuz* "$ROOT"/initrd.img* \
	"$ROOT/usr/lib/raspi-firmware" "$ROOT"/etc/kernel/postinst.d/z50-raspi-firmware \
	"$ROOT"/etc/kernel/postrm.d/z50-raspi-firmware "$ROOT"/etc/initramfs/post-update.d/z50-raspi-firmware
#   what the maintainer scripts would have done, as far as this root needs it
cp "$ROOT/usr/share/base-passwd/passwd.master" "$ROOT/etc/passwd"
cp "$ROOT/usr/share/base-passwd/group.master" "$ROOT/etc/group"
: >"$ROOT/etc/shadow"
: >"$ROOT/etc/gshadow"
chmod 0640 "$ROOT/etc/shadow" "$ROOT/etc/gshadow"
# the users and groups of systemd, dbus, udev (sysusers.d); the host's older systemd-sysusers does
# not know trixie's "u!" (a locked user), which is what it makes of "u" anyway
mkdir -p "$WORK/sysusers.d"
for f in "$ROOT"/usr/lib/sysusers.d/*.conf; do sed 's/^u! /u /' "$f" >"$WORK/sysusers.d/${f##*/}"; done
systemd-sysusers --root="$ROOT" "$WORK"/sysusers.d/*.conf
#   kernel modules: the Debian kernel's are most of the root; keep what a Pi 4/5 or a virtio VM
#   uses (SD, USB, Ethernet: genet (Pi 4), macb over RP1 (Pi 5); Wi-Fi: brcmfmac)
(cd "$KDIR/kernel" && rm -rf sound drivers/gpu drivers/media drivers/infiniband drivers/staging \
	drivers/iio drivers/isdn drivers/nfc drivers/mtd drivers/bluetooth net/bluetooth drivers/input \
	drivers/hid drivers/video drivers/md drivers/target drivers/scsi/qla2xxx drivers/scsi/lpfc \
	drivers/scsi/mpt3sas drivers/scsi/megaraid drivers/net/can drivers/net/usb drivers/net/dsa \
	fs/btrfs fs/xfs fs/ocfs2 fs/gfs2 fs/nfs fs/nfsd fs/ceph fs/smb fs/jfs fs/f2fs fs/nilfs2 \
	fs/ubifs fs/orangefs fs/afs fs/coda fs/9p fs/dlm fs/bcachefs fs/hfs fs/hfsplus fs/ntfs3 \
	net/mac80211 net/ceph net/sunrpc)
find "$KDIR/kernel/drivers/net/ethernet" -mindepth 1 -maxdepth 1 ! -name broadcom ! -name cadence -exec rm -rf {} +
find "$KDIR/kernel/drivers/net/wireless" -mindepth 1 -maxdepth 1 ! -name broadcom -exec rm -rf {} +
#   relaybox_tryboot: the module that sets the firmware's tryboot flag for updates (see
#   image/tryboot-module/), built against this very kernel's headers
build_tryboot_module
install -D -m 0644 "$TRYBOOT_KO" "$KDIR/updates/relaybox_tryboot.ko"
depmod -b "$ROOT" "$KVER"
#   firmware: only the Wi-Fi chip of the Pi 4 and Pi 5 (CYW43455) and the regulatory database
FW=$ROOT/usr/lib/firmware
find "$FW" -mindepth 1 \( -type f -o -type l \) ! -name 'brcmfmac43455-sdio.*' ! -name 'cyfmac43455-sdio*' \
	! -name 'regulatory.db*' -delete
find "$FW" -mindepth 1 -type d -empty -delete
# the alternative wireless-regdb's postinst would set: the database signed with Debian's key
for f in regulatory.db regulatory.db.p7s; do [ -e "$FW/$f" ] || ln -s "$f-debian" "$FW/$f"; done
# The Pi 5 has the same Wi-Fi module; brcmfmac looks for the NVRAM file by the board's compatible.
nv=$FW/brcm/brcmfmac43455-sdio.raspberrypi,4-model-b.txt
[ -e "$nv" ] || die "no Pi 4 Wi-Fi NVRAM file in firmware-brcm80211"
[ -e "$FW/brcm/brcmfmac43455-sdio.raspberrypi,5-model-b.txt" ] || \
	ln -s brcmfmac43455-sdio.raspberrypi,4-model-b.txt "$FW/brcm/brcmfmac43455-sdio.raspberrypi,5-model-b.txt"
[ -e "$ROOT/bin/sh" ] || ln -s dash "$ROOT/bin/sh"
# the alternatives the postinst scripts would register (the overlay's scripts use awk)
ln -sf mawk "$ROOT/usr/bin/awk"
ln -sf which.debianutils "$ROOT/usr/bin/which"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
mkdir -p "$ROOT/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
ldconfig_bin="$ROOT/usr/sbin/ldconfig.real"
[ -x "$ldconfig_bin" ] || ldconfig_bin="$ROOT/usr/sbin/ldconfig"
qemu-aarch64-static "$ldconfig_bin" -r "$ROOT" || echo "warning: ldconfig for the arm64 root failed (ld.so finds the multiarch directories without its cache)"

#   the initramfs: busybox, the modules the root needs before udev (from modules.dep, the
#   dependencies first, decompressed for busybox insmod), and an /init that mounts
#   root=PARTUUID=<disk signature>-<partition> read-only
INITRD=$WORK/initramfs
mkdir -p "$INITRD"/bin "$INITRD"/dev "$INITRD"/proc "$INITRD"/sys "$INITRD"/newroot "$INITRD"/lib/modules
cp "$ROOT/usr/bin/busybox" "$INITRD/bin/busybox"
rm -f "$ROOT/usr/bin/busybox"
python3 - "$KDIR/modules.dep" $INITRD_MODULES >"$WORK/initrd-modules" <<'PY'
import sys
dep = {}
for line in open(sys.argv[1]):
    path, _, deps = line.partition(":")
    dep[path] = deps.split()
by_name = {p.rsplit("/", 1)[1].split(".ko")[0].replace("-", "_"): p for p in dep}
order = []
def visit(p):
    for d in dep[p]:
        visit(d)
    if p not in order:
        order.append(p)
for name in sys.argv[2:]:
    if name in by_name:  # not in modules.dep: built into the kernel
        visit(by_name[name])
print("\n".join(order))
PY
while read -r m; do
	[ -n "$m" ] || continue
	out="$INITRD/lib/modules/$(basename "${m%.xz}")"
	out=${out%.zst}
	case $m in
	*.xz) xz -dc "$KDIR/$m" >"$out" ;;
	*.zst) zstd -qdc "$KDIR/$m" >"$out" ;;
	*) cp "$KDIR/$m" "$out" ;;
	esac
	basename "$out" >>"$INITRD/modules"
done <"$WORK/initrd-modules"
touch "$INITRD/modules"
cat >"$INITRD/init" <<'INIT'
#!/bin/busybox sh
# relaybox initramfs: load the disk drivers, find root=PARTUUID=<MBR signature>-<nn> (or a
# /dev path), mount it read-only (rootfstype=, EROFS) and switch to it.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules); do insmod "/lib/modules/$m" 2>/dev/null || echo "initramfs: insmod $m failed"; done
root= fstype=erofs
for a in $(cat /proc/cmdline); do
	case $a in root=*) root=${a#root=} ;; rootfstype=*) fstype=${a#rootfstype=} ;; esac
done
# the partition whose disk has MBR signature $1 and number $2 (hex, as in PARTUUID)
by_partuuid() {
	sig=$(echo "${1%-*}" | tr A-F a-f) num=$((0x${1#*-}))
	for d in /sys/block/*; do
		n=${d##*/}
		[ -b "/dev/$n" ] || continue
		s=$(od -An -tx4 -j440 -N4 "/dev/$n" 2>/dev/null | tr -d ' ')
		[ "$s" = "$sig" ] || continue
		for p in "$d/$n"*; do
			[ "$(cat "$p/partition" 2>/dev/null)" = "$num" ] && { echo "/dev/${p##*/}"; return 0; }
		done
	done
	return 1
}
dev=
i=0
while [ $i -lt 300 ]; do   # 30 s for the SD card to appear
	case $root in
	PARTUUID=*) dev=$(by_partuuid "${root#PARTUUID=}") || dev= ;;
	*) dev=$root ;;
	esac
	[ -n "$dev" ] && [ -b "$dev" ] && break
	sleep 0.1
	i=$((i + 1))
done
if [ -z "$dev" ] || ! mount -t "$fstype" -o ro "$dev" /newroot; then
	echo "initramfs: cannot mount root $root ($dev, $fstype); rebooting in 10 s"
	sleep 10
	reboot -f
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
INIT
chmod 0755 "$INITRD/init"
(cd "$INITRD" && find . | sort | cpio --quiet -o -H newc --reproducible) | gzip -9n >"$BOOT/initrd.img"
echo "initramfs: $(stat -c %s "$BOOT/initrd.img") bytes, modules: $(tr '\n' ' ' <"$INITRD/modules")"
for m in sdhci_iproc sdhci_brcmstb erofs virtio_blk; do
	tr '-' '_' <"$INITRD/modules" | grep -qx "$m.ko" || grep -q "/${m//_/[-_]}.ko" "$KDIR/modules.builtin" \
		|| die "initramfs: $m is neither a module in it nor built into the kernel"
done
rm -rf "$INITRD"

cp -a buildroot-overlay/. "$ROOT"/
# The QEMU test's control channel (scripts/test-image/overlay/): in the image but never enabled;
# only a kernel command line naming it (systemd.wants=, which scripts/test-image.sh passes to the
# VM) starts it, and only inside a VM with the virtio port.
install -D -m 0755 scripts/test-image/overlay/usr/libexec/relaybox-test/testctl "$ROOT/usr/libexec/relaybox-test/testctl"
install -m 0644 scripts/test-image/overlay/usr/lib/systemd/system/relaybox-test*.service "$ROOT/usr/lib/systemd/system/"
install -m 0755 "$BIN" "$ROOT/usr/bin/relaybox"
#   the public key updates must be signed with
install -D -m 0644 "$UPDATE_PUB" "$ROOT/usr/share/relaybox/update-key.pub"
aarch64-linux-gnu-strip "$ROOT/usr/bin/relaybox"
mkdir -p "$ROOT/data" "$ROOT/boot"
#   the relaybox user (RELAYBOX_USERS in image/package/relaybox/relaybox.mk)
printf 'u relaybox - "relaybox chatmail relay" /data/relaybox /usr/sbin/nologin\n' >"$WORK/relaybox-sysusers.conf"
systemd-sysusers --root="$ROOT" "$WORK/relaybox-sysusers.conf"
#   the presets of buildroot-overlay/usr/lib/systemd/system-preset/70-relaybox.preset
SYSTEMCTL=(systemctl --root="$ROOT" --quiet)
"${SYSTEMCTL[@]}" enable relaybox.service relaybox-firstboot.service relaybox-console.service \
	relaybox-imager-config.service relaybox-update.path relaybox-tryboot-watchdog.service systemd-networkd.service systemd-networkd-wait-online.service \
	systemd-resolved.service systemd-timesyncd.service systemd-time-wait-sync.service
"${SYSTEMCTL[@]}" disable getty@.service 2>/dev/null || true
"${SYSTEMCTL[@]}" disable wpa_supplicant.service 2>/dev/null || true
"${SYSTEMCTL[@]}" mask serial-getty@ttyAMA0.service serial-getty@ttyAMA10.service serial-getty@ttyS1.service getty@tty1.service
#   a read-only root: empty machine-id (systemd mounts a transient one), /var and /tmp on tmpfs
: >"$ROOT/etc/machine-id"
printf '[Unit]\nDescription=volatile /var (read-only root)\nDefaultDependencies=no\nConflicts=umount.target\nBefore=local-fs.target umount.target\n[Mount]\nWhat=tmpfs\nWhere=/var\nType=tmpfs\nOptions=mode=0755,nosuid,nodev\n[Install]\nWantedBy=local-fs.target\n' \
	>"$ROOT/etc/systemd/system/var.mount"
"${SYSTEMCTL[@]}" enable var.mount
# /tmp: trixie's systemd mounts a tmpfs there by itself (tmp.mount in local-fs.target.wants)
[ -e "$ROOT/usr/lib/systemd/system/local-fs.target.wants/tmp.mount" ] || die "no tmpfs /tmp in this systemd"
#   version stamping (os-release(5)); relaybox --version shows the same build id
DEBIAN_BASE=$(. "$ROOT/usr/lib/os-release" && echo "$PRETTY_NAME")
rm -f "$ROOT/etc/os-release"
cat >"$ROOT/usr/lib/os-release" <<EOF
NAME="relaybox"
ID=relaybox
ID_LIKE=debian
PRETTY_NAME="relaybox $VERSION"
VERSION="$VERSION (build $BUILD_ID)"
VERSION_ID="$VERSION"
IMAGE_ID=relaybox
IMAGE_VERSION="$VERSION"
BUILD_ID="$BUILD_ID"
VARIANT="Raspberry Pi 4 and 5, on $DEBIAN_BASE packages, kernel $KVER"
VARIANT_ID=rpi-arm64
HOME_URL="https://github.com/relaybox/relaybox"
EOF
ln -s ../usr/lib/os-release "$ROOT/etc/os-release"
#   nothing secret: no password hash, no private key (the device makes its own on first boot)
if grep -qE '^[^:]+:\$' "$ROOT/etc/shadow"; then die "a password hash is in /etc/shadow"; fi
if grep -rlsE -- '-----BEGIN ([A-Z]+ )?PRIVATE KEY-----' "$ROOT/etc" "$ROOT/usr/lib/relaybox" "$ROOT/usr/share" "$ROOT/data"; then
	die "a private key is in the root"
fi

step "EROFS root (lz4hc)"
mkfs.erofs -zlz4hc -T "$SOURCE_DATE_EPOCH" -U 6d2a7c3e-0000-4000-8000-$(printf '%012x' "$SOURCE_DATE_EPOCH") \
	"$WORK/root.erofs" "$ROOT" >"$WORK/mkfs.erofs.log" 2>&1 || { cat "$WORK/mkfs.erofs.log"; die "mkfs.erofs failed"; }
ROOT_SIZE=$(stat -c %s "$WORK/root.erofs")
[ "$ROOT_SIZE" -le $((ROOT_SLOT_MIB * 1024 * 1024)) ] || die "root ($ROOT_SIZE bytes) is larger than its $ROOT_SLOT_MIB MiB slot"
du -s --block-size=1M "$KDIR" | awk '{ print "kernel modules: " $1 " MiB" }'
rm -rf "$ROOT"

# -------------------------------------------------------------------------------------------------
step "boot files: config.txt for [pi4] and [pi5], cmdline.txt root=PARTUUID=$DISK_ID-05"
cat >"$BOOT/config.txt" <<'EOF'
# relaybox boot slot A (p2). The firmware comes here from autoboot.txt on p1.
# One card for the Raspberry Pi 4 and Pi 5, Debian's kernel (upstream device trees).
[all]
arm_64bit=1
kernel=Image
initramfs initrd.img followkernel
upstream_kernel=1
enable_uart=1
disable_overscan=1

[pi4]
# the Pi 4 firmware (start4.elf/fixup4.dat) is on this partition
start_file=start4.elf
fixup_file=fixup4.dat
device_tree=bcm2711-rpi-4-b.dtb
gpu_mem=64

[pi400]
device_tree=bcm2711-rpi-400.dtb

[cm4]
device_tree=bcm2711-rpi-cm4-io.dtb

[pi5]
# The Pi 5 boots from its EEPROM; it picks bcm2712-rpi-5-b.dtb or, on D0 boards,
# bcm2712d0-rpi-5-b.dtb (a copy of Linux's bcm2712-d-rpi-5-b.dtb) by itself.

# A/B: autoboot.txt on p1 names the boot partition; each slot's own root (p5, p6)
[boot_partition=2]
cmdline=cmdline-a.txt
[boot_partition=3]
cmdline=cmdline-b.txt

[all]
EOF
# console=tty1 last: /dev/console is the HDMI screen (the setup code); serial: ttyS1 (Pi 4, mini
# UART with upstream device trees), ttyAMA10 (Pi 5 debug UART)
# One boot partition image for both slots (an update writes the same one to p2 or p3): the
# firmware's [boot_partition=N] filter in config.txt picks the command line naming the root of
# the slot it booted; cmdline.txt (slot A) is for firmware without that filter.
for slot in a:05 b:06; do
	printf 'root=PARTUUID=%s-%s rootfstype=erofs ro rootwait console=ttyS1,115200 console=ttyAMA10,115200 console=tty1 net.ifnames=0 cma=64M quiet\n' \
		"$DISK_ID" "${slot#*:}" >"$BOOT/cmdline-${slot%:*}.txt"
done
cp "$BOOT/cmdline-a.txt" "$BOOT/cmdline.txt"
printf 'relaybox %s (build %s), kernel %s\n' "$VERSION" "$BUILD_ID" "$KVER" >"$BOOT/relaybox-version.txt"

#   the boot image of the update bundle: the same files in a FAT sized to them plus headroom (an
#   update writes it at the start of the inactive boot partition; a 256 MiB image would make the
#   bundle that much larger for nothing but zeros)
BOOT_KIB=$(du -s --apparent-size --block-size=1K "$BOOT" | cut -f1)
BOOT_IMG_KIB=$(( (BOOT_KIB * 11 / 10 + 4096 + 1023) / 1024 * 1024 ))
[ "$BOOT_IMG_KIB" -le $((BOOT_SLOT_MIB * 1024)) ] || die "the boot files ($BOOT_KIB KiB) do not fit a $BOOT_SLOT_MIB MiB slot"
mkfs.vfat -C -n RELAYBOX -i "${DISK_ID:0:6}00" "$WORK/boot.vfat" "$BOOT_IMG_KIB" >/dev/null
(cd "$BOOT" && find . -maxdepth 1 -type f -printf '%f\n' | LC_ALL=C sort | while read -r f; do
	mcopy -i "$WORK/boot.vfat" -m "$f" "::$f" || exit 1; done) || die "the boot files do not fit the bundle's boot image"

# -------------------------------------------------------------------------------------------------
step "disk image: MBR, p1 config, p2/p3 boot A/B, p4 extended: p5/p6 root A/B, p7 data"
MiB=$((1024 * 1024))
# each logical partition is preceded by its EBR (1 MiB with alignment); 4 MiB spare
TOTAL_MIB=$((4 + CONFIG_MIB + 2 * BOOT_SLOT_MIB + 2 * (ROOT_SLOT_MIB + 1) + DATA_MIB + 1 + 4))
rm -f "$BUILD/$NAME.summary.txt" "$IMG" "$IMG.xz" "$IMG.xz.sha256"   # the summary goes first: tests take it as "complete"
truncate -s "${TOTAL_MIB}M" "$WORK/disk.img"
# explicit starts: sfdisk puts a partition without one into the first gap (the 3 MiB before p1)
P2=$((4 + CONFIG_MIB)); P3=$((P2 + BOOT_SLOT_MIB)); P4=$((P3 + BOOT_SLOT_MIB))
P5=$((P4 + 1)); P6=$((P5 + ROOT_SLOT_MIB + 1)); P7=$((P6 + ROOT_SLOT_MIB + 1))
sfdisk --quiet "$WORK/disk.img" <<EOF
label: dos
label-id: 0x$DISK_ID
start=4MiB, size=${CONFIG_MIB}MiB, type=c, bootable
start=${P2}MiB, size=${BOOT_SLOT_MIB}MiB, type=c
start=${P3}MiB, size=${BOOT_SLOT_MIB}MiB, type=c
start=${P4}MiB, type=5
start=${P5}MiB, size=${ROOT_SLOT_MIB}MiB, type=83
start=${P6}MiB, size=${ROOT_SLOT_MIB}MiB, type=83
start=${P7}MiB, type=83
EOF
sfdisk -l "$WORK/disk.img"
part_start() { sfdisk -J "$WORK/disk.img" | python3 -c "import json,sys; print([p['start'] for p in json.load(sys.stdin)['partitiontable']['partitions'] if p['node'].endswith('img$1')][0])"; }
fat() {  # $1 file, $2 MiB, $3 label, $4 source dir or empty, $5 partition number (volume id)
	mkfs.vfat -C -n "$3" -i "${DISK_ID:0:6}0$5" "$1" $(($2 * 1024)) >/dev/null
	if [ -n "$4" ]; then
		# sorted, so the directory order does not depend on the build machine
		(cd "$4" && find . -maxdepth 1 -type f -printf '%f\n' | LC_ALL=C sort | while read -r f; do
			mcopy -i "$1" -m "$f" "::$f"; done)
	fi
}
mkdir -p "$WORK/config"
printf '[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n' >"$WORK/config/autoboot.txt"
cat >"$WORK/config/README.txt" <<EOF
relaybox $VERSION (build $BUILD_ID)

This is the config partition of a relaybox SD card. After the first boot it holds
relaybox-setup-code.txt: the code for the set-up wizard at http://relaybox.local/.
Raspberry Pi Imager's settings (hostname, Wi-Fi, country) are read from here; user accounts and
SSH keys are ignored: the appliance has no login.
EOF
sed -i 's/$/\r/' "$WORK/config/README.txt"
fat "$WORK/p1.vfat" "$CONFIG_MIB" RELAYBOOT "$WORK/config" 1
fat "$WORK/p2.vfat" "$BOOT_SLOT_MIB" BOOT-A "$BOOT" 2
fat "$WORK/p3.vfat" "$BOOT_SLOT_MIB" BOOT-B "" 3
truncate -s "${DATA_MIB}M" "$WORK/data.ext4"
mkfs.ext4 -q -L relaybox-data -U 52424f58-0007-4000-8000-000000000007 -E root_owner=0:0 "$WORK/data.ext4"
put() { dd if="$1" of="$WORK/disk.img" bs=512 seek="$(part_start "$2")" conv=notrunc,sparse status=none; }
put "$WORK/p1.vfat" 1
put "$WORK/p2.vfat" 2
put "$WORK/p3.vfat" 3
put "$WORK/root.erofs" 5
put "$WORK/data.ext4" 7
mv "$WORK/disk.img" "$IMG"
RAW_SIZE=$(stat -c %s "$IMG")

step "compress (xz)"
nice -n 10 xz -T0 ${XZ_OPT:--6} -k -f "$IMG"
XZ_SIZE=$(stat -c %s "$IMG.xz")
XZ_SHA=$(sha256sum "$IMG.xz" | cut -d' ' -f1)
RAW_SHA=$(sha256sum "$IMG" | cut -d' ' -f1)
(cd "$BUILD" && printf '%s  %s\n' "$XZ_SHA" "$NAME.img.xz" >"$NAME.img.xz.sha256")
[ "$XZ_SIZE" -le $((200 * MiB)) ] || die "the compressed image is $XZ_SIZE bytes, over the 200 MB target"

#   Raspberry Pi Imager: an os_list with this one image (Imager: "Use custom" > relaybox.json,
#   or a repository URL pointing at it)
URL=${RELAYBOX_IMAGE_URL:-$NAME.img.xz}
RELEASE_DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
python3 - "$BUILD/relaybox.json" <<PY
import json, sys
entry = {
    "name": "relaybox $VERSION",
    "description": "relaybox chatmail relay for Delta Chat (Raspberry Pi 4 and 5, 64-bit). Build $BUILD_ID.",
    "icon": "https://raw.githubusercontent.com/relaybox/relaybox/main/firmware-ui/icon.png",
    "url": "$URL",
    "extract_size": $RAW_SIZE,
    "extract_sha256": "$RAW_SHA",
    "image_download_size": $XZ_SIZE,
    "image_download_sha256": "$XZ_SHA",
    "release_date": "$RELEASE_DATE",
    "devices": ["pi4-64bit", "pi5-64bit"],
    "init_format": "cloudinit",
}
json.dump({"os_list": [entry]}, open(sys.argv[1], "w"), indent=2)
open(sys.argv[1], "a").write("\n")
PY

step "update bundle: $NAME.update (boot $(stat -c %s "$WORK/boot.vfat") + root $ROOT_SIZE bytes)"
make_bundle "$WORK/boot.vfat" "$WORK/root.erofs" "$VERSION" "$BUILD_ID" "$BUILD/$NAME.update"
BUNDLE_SIZE=$(stat -c %s "$BUILD/$NAME.update")

step "done"
{
	echo "image:       $IMG.xz ($XZ_SIZE bytes compressed, $RAW_SIZE bytes raw)"
	echo "checksum:    $IMG.xz.sha256 ($XZ_SHA)"
	echo "imager json: $BUILD/relaybox.json"
	echo "version:     relaybox $VERSION (build $BUILD_ID), kernel $KVER"
	echo "root (EROFS): $ROOT_SIZE bytes in a $ROOT_SLOT_MIB MiB slot"
	echo "update:      $BUILD/$NAME.update ($BUNDLE_SIZE bytes)${TEST_SIGNED:+, TEST-SIGNED (image/test-keys)}"
	echo "build time:  $(( $(date +%s) - T0 ))s"
} | tee "$BUILD/$NAME.summary.txt"
echo "flash with Raspberry Pi Imager (Use custom) or: xzcat $IMG.xz | sudo dd of=/dev/sdX bs=4M conv=fsync status=progress"
