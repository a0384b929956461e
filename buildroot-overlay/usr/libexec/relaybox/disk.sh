# Sourced by data-prepare and firstboot. Everything is relative to the disk that holds the
# root filesystem, so no other disk (USB stick, NVMe, ...) is ever looked at or written.

# The card (MBR, A/B from the first release; scripts/build-image.sh and image/board/common/genimage.cfg.in):
#   p1 FAT RELAYBOOT (config: autoboot.txt, Raspberry Pi Imager's files, the setup-code copy)
#   p2/p3 FAT boot A/B, p4 extended: p5/p6 EROFS root A/B, p7 ext4 relaybox-data
DATA_LABEL=relaybox-data
DATA_PARTNO=7
EXT_PARTNO=4
BOOT_LABEL=RELAYBOOT
BOOT_PARTNO=1

die() { echo "relaybox: $*" >&2; exit 1; }

# Kernel name of the disk holding /, e.g. mmcblk0.
root_disk() {
	src=$(findmnt -nvo SOURCE /) || die "cannot find the root device"
	name=$(basename "$(readlink -f "$src")")
	[ -e "/sys/class/block/$name/partition" ] || die "root $src is not a partition"
	basename "$(readlink -f "/sys/class/block/$name/..")"
}

# /dev node of partition number $2 of disk $1, or nothing.
disk_part() {
	for p in /sys/class/block/"$1"/"$1"*; do
		[ -f "$p/partition" ] || continue
		[ "$(cat "$p/partition")" = "$2" ] && { echo "/dev/$(basename "$p")"; return 0; }
	done
	return 0
}
