#!/bin/sh
# Makes the release key pair that signs relaybox update bundles (README "Updating and rollback"):
#   DIR/release-key.pk8   the Ed25519 private key (PKCS#8 DER, mode 0600): keep it offline,
#                         outside the repository; whoever holds it can update every relay
#                         built with the public key below
#   DIR/update-key.pub    the public key, one line of 64 hex digits: build-image.sh puts it in
#                         the image (RELAYBOX_UPDATE_KEY_DIR=DIR)
# Usage: scripts/release-key.sh DIR     (refuses to overwrite an existing key)
set -eu
die() { echo "release-key: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 DIR"
DIR=$1
command -v openssl >/dev/null || die "openssl is needed"
mkdir -p "$DIR"
[ ! -e "$DIR/release-key.pk8" ] || die "$DIR/release-key.pk8 exists; not overwriting a release key"
umask 077
openssl genpkey -algorithm ed25519 -outform DER -out "$DIR/release-key.pk8.tmp"
# The raw public key is the last 32 bytes of its DER SubjectPublicKeyInfo.
PUB=$(openssl pkey -inform DER -in "$DIR/release-key.pk8.tmp" -pubout -outform DER | tail -c 32 | od -An -tx1 | tr -d ' \n')
[ ${#PUB} -eq 64 ] || die "could not extract the public key"
chmod 0600 "$DIR/release-key.pk8.tmp"
mv "$DIR/release-key.pk8.tmp" "$DIR/release-key.pk8"
printf '%s\n' "$PUB" >"$DIR/update-key.pub"
chmod 0644 "$DIR/update-key.pub"
echo "release-key: $DIR/release-key.pk8 (private, keep it safe) and $DIR/update-key.pub"
