#!/bin/sh
# relaybox post-build: runs after the overlay (buildroot-overlay/) is copied.
set -eu

# Mount points on the read-only root.
mkdir -p "${TARGET_DIR}/data" "${TARGET_DIR}/boot"

# Version stamping (os-release(5)), as scripts/build-image.sh does for the Debian image; the
# admin status page shows these.
version=$(sed -n 's/^RELAYBOX_VERSION = //p' "${BR2_EXTERNAL_RELAYBOX_PATH}/package/relaybox/relaybox.mk")
sed -i '/^\(IMAGE_ID\|IMAGE_VERSION\|BUILD_ID\)=/d' "${TARGET_DIR}/usr/lib/os-release"
{
	echo "IMAGE_ID=relaybox"
	echo "IMAGE_VERSION=\"${version}\""
	echo "BUILD_ID=\"buildroot-$(date -u +%Y%m%d)\""
} >> "${TARGET_DIR}/usr/lib/os-release"

# Nothing secret and no login in the image: root stays locked ("*"), and no
# password hash may appear in shadow (BR2_TARGET_ENABLE_ROOT_LOGIN is off).
if grep -qE '^[^:]+:\$' "${TARGET_DIR}/etc/shadow"; then
	echo "post-build: a password hash is in /etc/shadow, refusing" >&2
	exit 1
fi
# No private keys either (the device makes its own on first boot).
if grep -rlsE -- '-----BEGIN ([A-Z]+ )?PRIVATE KEY-----' \
	"${TARGET_DIR}/etc" "${TARGET_DIR}/usr/lib/relaybox" 2>/dev/null; then
	echo "post-build: a private key is in the image, refusing" >&2
	exit 1
fi
