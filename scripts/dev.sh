#!/usr/bin/env bash
# scripts/dev.sh [relaybox dev options]: build relaybox and run a local relay for Delta Chat.
#
# On a fresh Debian machine it installs what building needs (apt: build-essential pkg-config
# ca-certificates curl; Rust via rustup only if there is no cargo), builds the release binary and
# runs `relaybox dev` with its data in ./relaybox-data. It prints a dclogin: account and a QR code
# to scan with Delta Chat. Ctrl-C stops it.
#
# Examples:
#   scripts/dev.sh                          # 127.0.0.1, standard ports (as root) or +10000
#   scripts/dev.sh --ip 192.168.1.20        # reachable from a phone on the same network
#   scripts/dev.sh --port-offset 20000      # IMAPS on 20993, submissions on 20465, ...
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

ensure_build_packages
ensure_cargo

echo "building relaybox (release)..."
cargo build --release -p relaybox

args=("$@")
has_opt() {
    local a
    for a in "${args[@]}"; do
        case "$a" in "$1" | "$1"=*) return 0 ;; esac
    done
    return 1
}

extra=()
if ! has_opt --data; then
    extra+=(--data "$ROOT/relaybox-data")
fi
if [ "$(id -u)" -ne 0 ] && ! has_opt --port-offset; then
    echo "note: not root, so ports below 1024 cannot be bound: using --port-offset 10000"
    echo "      (IMAPS on 10993, submissions on 10465, SMTP on 10025, HTTPS on 10443, ...)."
    echo "      Run as root, or pass --port-offset N yourself, to change this."
    extra+=(--port-offset 10000)
fi

echo "starting: target/release/relaybox dev ${extra[*]} ${args[*]}"
exec "$ROOT/target/release/relaybox" dev "${extra[@]}" "${args[@]}"
