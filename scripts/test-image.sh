#!/usr/bin/env bash
# QEMU test of the appliance image (issue 7): the production overlay (buildroot-overlay/) and an
# aarch64 relaybox on a read-only EROFS root, booted with qemu-system-aarch64 -M virt (TCG).
#
#   1. cross-build relaybox for aarch64-unknown-linux-musl (static)
#   2. an arm64 Debian root (packages only extracted by mmdebstrap --variant=extract, cached in
#      ~/.cache/relaybox-image keyed by its recipe; what their maintainer scripts would do is done
#      from the host) + buildroot-overlay/ + scripts/test-image/overlay/ (test-only units) + the
#      binary -> EROFS; a small initramfs (busybox + the virtio/EROFS modules) to mount it; a disk
#      laid out like the SD card (p1 FAT RELAYBOOT, p2 EROFS root, p3 32 MiB ext4 relaybox-data),
#      4 GiB (sparse) so first boot grows p3
#   3. boot it; scripts/test-image/vmcheck.py does the checks from the host (see there)
#
# Logs, the serial console and results: test-artifacts/image/. Bounded: every wait has a deadline
# (the package download 10 min, the VM checks RELAYBOX_IMAGE_TIMEOUT s, default 900).
#
# Env: RELAYBOX_IMAGE_CACHE (default ~/.cache/relaybox-image), RELAYBOX_IMAGE_PORT_OFFSET (20000),
#      RELAYBOX_IMAGE_UNIT=1 also runs the unit tests under qemu-user (slow; off by default),
#      RELAYBOX_IMAGE_KEEP=1 keeps the work dir (disk image) for debugging.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ART=$REPO/test-artifacts/image
CACHE=${RELAYBOX_IMAGE_CACHE:-$HOME/.cache/relaybox-image}
OFFSET=${RELAYBOX_IMAGE_PORT_OFFSET:-20000}
TIMEOUT=${RELAYBOX_IMAGE_TIMEOUT:-900}
TARGET=aarch64-unknown-linux-musl
T0=$(date +%s)
SUITE=bookworm
MIRROR=${RELAYBOX_IMAGE_MIRROR:-http://deb.debian.org/debian}
# No maintainer script runs, so the Essential set is named too (apt adds only declared
# dependencies); busybox-static is for the initramfs and leaves the root again.
PACKAGES=base-files,base-passwd,bash,bsdutils,coreutils,dash,debianutils,diffutils,findutils,grep,gzip,hostname,init-system-helpers,libc-bin,login,mawk,mount,ncurses-base,sed,sysvinit-utils,tar,util-linux,systemd,systemd-sysv,udev,systemd-resolved,systemd-timesyncd,dbus,iproute2,fdisk,e2fsprogs,ca-certificates,kmod,linux-image-arm64,busybox-static
# crc32c_generic: a soft dependency of libcrc32c (erofs), which modules.dep does not list
INITRD_MODULES="virtio_pci virtio_blk crc32c_generic erofs"

step() { echo "== [image +$(( $(date +%s) - T0 ))s] $*"; }
die() { echo "error: $*" >&2; exit 1; }

rm -rf "$ART"
mkdir -p "$ART" "$CACHE"
WORK=$(mktemp -d /tmp/relaybox-image.XXXXXX)
QEMU_PID=
cleanup() {
    local rc=$?
    if [ -n "${MMDEB_PID:-}" ] && kill -0 "$MMDEB_PID" 2>/dev/null; then
        kill "$MMDEB_PID" 2>/dev/null || true
        wait "$MMDEB_PID" 2>/dev/null || true
        rm -f "$BASE.tmp"
    fi
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    if [ "${RELAYBOX_IMAGE_KEEP:-0}" = 1 ]; then
        echo "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
step "tools"
need=()
have mmdebstrap || need+=(mmdebstrap)
have depmod || need+=(kmod)
have cpio || need+=(cpio)
have qemu-system-aarch64 || need+=(qemu-system-arm)
have qemu-aarch64-static || need+=(qemu-user-static)
have mkfs.erofs || need+=(erofs-utils)
have aarch64-linux-gnu-gcc || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
have mkfs.vfat || need+=(dosfstools)
have sfdisk || need+=(fdisk)
have mkfs.ext4 || need+=(e2fsprogs)
apt_install "${need[@]}"
ensure_cargo

# ---------------------------------------------------------------------------------------------
# The root filesystem recipe; its hash names the cached tarball.
# Extracting instead of installing: the arm64 maintainer scripts would run under qemu-user
# (binfmt_misc, root) and take ~25 min on a cold cache, most of it update-initramfs; extracted,
# a cold cache costs the download.
MMDEB_ARGS=(--variant=extract --arch=arm64 --mode=root --format=tar "--include=$PACKAGES")
KEY=$(printf '%s\n' "$SUITE" "${MMDEB_ARGS[@]}" | sha256sum | cut -c1-16)
BASE=$CACHE/rootfs-$SUITE-arm64-$KEY.tar
MMDEB_PID=
if [ -s "$BASE" ]; then
    step "arm64 root filesystem: cached $BASE"
else
    # mostly downloading: it runs beside the cross build
    step "arm64 root filesystem: mmdebstrap --variant=extract $SUITE in the background (once per recipe; log in $ART/mmdebstrap.log)"
    timeout 900 mmdebstrap "${MMDEB_ARGS[@]}" "$SUITE" "$BASE.tmp" "$MIRROR" >"$ART/mmdebstrap.log" 2>&1 &
    MMDEB_PID=$!
fi

# ---------------------------------------------------------------------------------------------
step "cross-build relaybox for $TARGET"
rustup target list --installed 2>/dev/null | grep -qx "$TARGET" || rustup target add "$TARGET" \
    || die "rustup target add $TARGET failed (no download?)"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64-static
cargo build --release --locked --target "$TARGET" -p relaybox 2>&1 | tail -n 3
BIN=$REPO/target/$TARGET/release/relaybox
file "$BIN" | tee "$ART/binary.txt"
file "$BIN" | grep -q 'ARM aarch64.*statically linked' || die "$BIN is not a static aarch64 binary"
BIN_SIZE=$(stat -c %s "$BIN")
qemu-aarch64-static "$BIN" --version 2>&1 | tee -a "$ART/binary.txt" || die "the aarch64 binary does not run under qemu-user"
if [ "${RELAYBOX_IMAGE_UNIT:-0}" = 1 ]; then
    step "unit tests under qemu-user"
    cargo test --release --locked --target "$TARGET" -p relaybox 2>&1 | tee "$ART/unit-qemu-user.log" | tail -n 5
    UNIT=ran
else
    UNIT="skipped (RELAYBOX_IMAGE_UNIT=1 runs them)"
fi

if [ -n "$MMDEB_PID" ]; then
    step "waiting for mmdebstrap"
    wait "$MMDEB_PID" || { tail -n 30 "$ART/mmdebstrap.log"; die "mmdebstrap failed"; }
    MMDEB_PID=
    mv "$BASE.tmp" "$BASE"
    step "arm64 root filesystem: $(stat -c %s "$BASE") bytes in $BASE"
fi

step "assemble the root: Debian base + buildroot-overlay/ + test overlay + relaybox"
ROOT=$WORK/root
mkdir -p "$ROOT"
tar -C "$ROOT" -xpf "$BASE"
rm -rf "$ROOT"/usr/share/doc "$ROOT"/usr/share/man "$ROOT"/usr/share/locale "$ROOT"/usr/share/info
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/*)")
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
rm -f "$ROOT"/boot/vmlinuz-* "$ROOT"/boot/System.map-* "$ROOT"/boot/config-* "$ROOT"/vmlinuz* "$ROOT"/initrd.img*
#   what the maintainer scripts would have done, as far as this root needs it
cp "$ROOT/usr/share/base-passwd/passwd.master" "$ROOT/etc/passwd"
cp "$ROOT/usr/share/base-passwd/group.master" "$ROOT/etc/group"
: >"$ROOT/etc/shadow"
: >"$ROOT/etc/gshadow"
chmod 0640 "$ROOT/etc/shadow" "$ROOT/etc/gshadow"
systemd-sysusers --root="$ROOT"   # the users and groups of systemd, dbus, udev (sysusers.d)
#   the Debian kernel's modules are most of the root: keep the trees a virtio VM can use
(cd "$ROOT/lib/modules/$KVER/kernel" && rm -rf sound drivers/gpu drivers/media drivers/net/wireless \
    drivers/net/ethernet drivers/infiniband drivers/staging drivers/iio drivers/input drivers/hid \
    drivers/usb drivers/bluetooth drivers/isdn drivers/scsi drivers/mmc drivers/mtd drivers/nfc \
    drivers/leds drivers/hwmon drivers/video net/wireless net/mac80211 net/bluetooth)
depmod -b "$ROOT" "$KVER"
[ -e "$ROOT/bin/sh" ] || ln -s dash "$ROOT/bin/sh"
# the alternatives the postinst scripts would register (the overlay's scripts use awk)
ln -sf mawk "$ROOT/usr/bin/awk"
ln -sf which.debianutils "$ROOT/usr/bin/which"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
mkdir -p "$ROOT/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
ldconfig_bin="$ROOT/sbin/ldconfig.real"
[ -x "$ldconfig_bin" ] || ldconfig_bin="$ROOT/sbin/ldconfig"
qemu-aarch64-static "$ldconfig_bin" -r "$ROOT" || echo "warning: ldconfig for the arm64 root failed (ld.so finds the multiarch directories without its cache)"
#   the initramfs: busybox, the modules the root needs before udev (from modules.dep, the
#   dependencies first, decompressed for busybox insmod), and an /init that mounts root= read-only
INITRD=$WORK/initramfs
mkdir -p "$INITRD"/bin "$INITRD"/dev "$INITRD"/proc "$INITRD"/sys "$INITRD"/newroot "$INITRD"/lib/modules
cp "$ROOT/bin/busybox" "$INITRD/bin/busybox"
rm -f "$ROOT/bin/busybox"
python3 - "$ROOT/lib/modules/$KVER/modules.dep" $INITRD_MODULES >"$WORK/initrd-modules" <<'PY'
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
    *.xz) xz -dc "$ROOT/lib/modules/$KVER/$m" >"$out" ;;
    *.zst) zstd -qdc "$ROOT/lib/modules/$KVER/$m" >"$out" ;;
    *) cp "$ROOT/lib/modules/$KVER/$m" "$out" ;;
    esac
    basename "$out" >>"$INITRD/modules"
done <"$WORK/initrd-modules"
touch "$INITRD/modules"
cat >"$INITRD/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules); do insmod "/lib/modules/$m" || echo "initramfs: insmod $m failed"; done
root= fstype=
for a in $(cat /proc/cmdline); do
    case $a in root=*) root=${a#root=} ;; rootfstype=*) fstype=${a#rootfstype=} ;; esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t "$fstype" -o ro "$root" /newroot; then
    echo "initramfs: cannot mount $root ($fstype); powering off"
    sleep 2
    poweroff -f
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
INIT
chmod 0755 "$INITRD/init"
(cd "$INITRD" && find . | cpio --quiet -o -H newc) | gzip -1 >"$WORK/initrd.img"
echo "initramfs: $(stat -c %s "$WORK/initrd.img") bytes, modules: $(tr '\n' ' ' <"$INITRD/modules")"
rm -rf "$INITRD"
cp -a buildroot-overlay/. "$ROOT"/
cp -a scripts/test-image/overlay/. "$ROOT"/
install -m 0755 "$BIN" "$ROOT/usr/bin/relaybox"
aarch64-linux-gnu-strip "$ROOT/usr/bin/relaybox"   # as Buildroot does
BIN_STRIPPED=$(stat -c %s "$ROOT/usr/bin/relaybox")
mkdir -p "$ROOT/data" "$ROOT/boot"
# What Buildroot does for the production image, done here for the Debian base:
#   the relaybox user (RELAYBOX_USERS in image/package/relaybox/relaybox.mk)
printf 'u relaybox - "relaybox chatmail relay" /data/relaybox /usr/sbin/nologin\n' >"$WORK/relaybox-sysusers.conf"
systemd-sysusers --root="$ROOT" "$WORK/relaybox-sysusers.conf"
#   the presets of buildroot-overlay/usr/lib/systemd/system-preset/70-relaybox.preset
SYSTEMCTL=(systemctl --root="$ROOT" --quiet)
"${SYSTEMCTL[@]}" enable relaybox.service relaybox-firstboot.service relaybox-console.service \
    systemd-networkd.service systemd-networkd-wait-online.service systemd-resolved.service \
    systemd-timesyncd.service systemd-time-wait-sync.service
"${SYSTEMCTL[@]}" disable getty@.service 2>/dev/null || true
"${SYSTEMCTL[@]}" mask serial-getty@ttyAMA0.service getty@tty1.service
#   test only: the control channel and the boot report (scripts/test-image/overlay/)
"${SYSTEMCTL[@]}" enable relaybox-testctl.service relaybox-testboot.service
#   a read-only root: empty machine-id (systemd mounts a transient one), /var on tmpfs (Buildroot:
#   volatile /var; the Debian base needs it for the units' StateDirectory=)
: >"$ROOT/etc/machine-id"
printf '[Unit]\nDescription=volatile /var (test image)\nDefaultDependencies=no\nConflicts=umount.target\nBefore=local-fs.target umount.target\n[Mount]\nWhat=tmpfs\nWhere=/var\nType=tmpfs\nOptions=mode=0755,nosuid,nodev\n[Install]\nWantedBy=local-fs.target\n' \
    >"$ROOT/etc/systemd/system/var.mount"
"${SYSTEMCTL[@]}" enable var.mount
#   /tmp on tmpfs as in the Buildroot image (Debian ships tmp.mount but does not enable it;
#   PrivateDevices=/PrivateTmp= of the units need a writable /tmp)
cp "$ROOT/usr/share/systemd/tmp.mount" "$ROOT/etc/systemd/system/tmp.mount"
"${SYSTEMCTL[@]}" enable tmp.mount
# the production post-build checks: no password hash, no private key
if grep -qE '^[^:]+:\$' "$ROOT/etc/shadow"; then die "a password hash is in /etc/shadow"; fi

step "EROFS root (lz4hc)"
mkfs.erofs -zlz4hc "$WORK/root.erofs" "$ROOT" >"$ART/mkfs.erofs.log" 2>&1 || { cat "$ART/mkfs.erofs.log"; die "mkfs.erofs failed"; }
ROOT_SIZE=$(stat -c %s "$WORK/root.erofs")
rm -rf "$ROOT"

step "disk: p1 FAT RELAYBOOT, p2 EROFS, p3 32 MiB ext4 relaybox-data, 4 GiB sparse (like genimage.cfg.in)"
MiB=$((1024 * 1024))
ROOT_MIB=$(( (ROOT_SIZE + MiB - 1) / MiB ))
DISK=$WORK/disk.img
truncate -s 4G "$DISK"
sfdisk --quiet "$DISK" <<EOF
label: dos
label-id: 0x52424f58
start=1MiB, size=64MiB, type=c, bootable
start=65MiB, size=${ROOT_MIB}MiB, type=83
start=$((65 + ROOT_MIB))MiB, size=32MiB, type=83
EOF
mkfs.vfat -C -n RELAYBOOT "$WORK/boot.vfat" $((64 * 1024)) >/dev/null
truncate -s 32M "$WORK/data.ext4"
mkfs.ext4 -q -L relaybox-data "$WORK/data.ext4"
dd if="$WORK/boot.vfat" of="$DISK" bs=1M seek=1 conv=notrunc status=none
dd if="$WORK/root.erofs" of="$DISK" bs=1M seek=65 conv=notrunc status=none
dd if="$WORK/data.ext4" of="$DISK" bs=1M seek=$((65 + ROOT_MIB)) conv=notrunc status=none
rm -f "$WORK/boot.vfat" "$WORK/root.erofs" "$WORK/data.ext4"
sfdisk -l "$DISK" >"$ART/partitions.txt"

# ---------------------------------------------------------------------------------------------
step "boot: qemu-system-aarch64 -M virt (TCG); serial console in $ART/serial.log"
FWD=""
for p in 25 80 143 443 465 587 993; do FWD+=",hostfwd=tcp:127.0.0.1:$((OFFSET + p))-:$p"; done
qemu-system-aarch64 -M virt -cpu max,pauth-impdef=on -m 1024 -smp 2 -display none -no-user-config \
    -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img" \
    -append "root=/dev/vda2 rootfstype=erofs ro console=ttyAMA0 net.ifnames=0 panic=-1" \
    -drive "if=none,id=disk0,file=$DISK,format=raw,cache=writeback" -device virtio-blk-pci,drive=disk0 \
    -netdev "user,id=n0$FWD" -device virtio-net-pci,netdev=n0,romfile= \
    -device virtio-rng-pci \
    -device virtio-serial-pci \
    -chardev "socket,id=ctl,path=$WORK/testctl.sock,server=on,wait=off" \
    -device virtserialport,chardev=ctl,name=org.relaybox.testctl \
    -monitor "unix:$WORK/monitor.sock,server=on,wait=off" \
    -serial "file:$ART/serial.log" \
    >"$ART/qemu.log" 2>&1 &
QEMU_PID=$!
echo "qemu pid $QEMU_PID"
QEMU_START=$(date +%s.%N)

PY=python3
[ -x tests/.venv/bin/python ] && PY=tests/.venv/bin/python
rc=0
timeout -k 10 "$TIMEOUT" "$PY" scripts/test-image/vmcheck.py --offset "$OFFSET" --monitor "$WORK/monitor.sock" \
    --ctl "$WORK/testctl.sock" --serial "$ART/serial.log" --artifacts "$ART" \
    --qemu-start "$QEMU_START" --qemu-pid "$QEMU_PID" || rc=$?

kill "$QEMU_PID" 2>/dev/null || true
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=

TOTAL=$(( $(date +%s) - T0 ))
{
    echo "binary (static aarch64, release): $BIN_SIZE bytes, stripped in the image $BIN_STRIPPED bytes ($(( BIN_STRIPPED / 1024 )) KiB)"
    echo "root image (EROFS lz4hc, Debian arm64: Essential set + systemd + kernel modules): $ROOT_SIZE bytes ($(( ROOT_SIZE / MiB )) MiB)"
    echo "unit tests under qemu-user: $UNIT"
    [ -f "$ART/results.txt" ] && cat "$ART/results.txt"
    echo "total script time: ${TOTAL}s"
} | tee "$ART/summary.txt"
if [ "$rc" -ne 0 ]; then
    echo "image test FAILED (vmcheck exit $rc); see $ART/" >&2
    exit "$rc"
fi
step "image test passed"
