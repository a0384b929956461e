# shellcheck shell=bash
# Helpers shared by scripts/dev.sh and scripts/test.sh. Source it; it changes nothing by itself.
#
# Everything here installs only what is missing: on a machine that already has cargo (our
# developer and CI machines have the Rust toolchain from rustup) it leaves the toolchain alone.

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: need root to run: $*  (no sudo here)" >&2
        return 1
    fi
}

_RELAYBOX_APT_UPDATED=0

# apt_install PKG...: install Debian packages (apt-get update once per run). No-op without args.
apt_install() {
    [ "$#" -gt 0 ] || return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: these packages are missing and there is no apt-get: $*" >&2
        return 1
    fi
    echo "installing Debian packages: $*"
    if [ "$_RELAYBOX_APT_UPDATED" = 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        _RELAYBOX_APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null
}

have() { command -v "$1" >/dev/null 2>&1; }

# apt_install_quiet PKG...: installs daemons the tests start themselves (postfix, miniupnpd, knot,
# coturn) without letting the package start its own system instance: a policy-rc.d that refuses
# every start is in place during the install (and removed after, unless one was there already).
# Callers mask the package's unit first where a later boot must not start it either.
apt_install_quiet() {
    [ "$#" -gt 0 ] || return 0
    local added_policy=0 rc=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    apt_install "$@" || rc=$?
    if [ "$added_policy" = 1 ]; then
        as_root rm -f /usr/sbin/policy-rc.d
    fi
    return "$rc"
}

# What building relaybox needs: a C compiler and make (ring builds C/asm), pkg-config,
# CA certificates and curl (for rustup, only if cargo is missing).
ensure_build_packages() {
    local need=()
    { have cc && have make; } || need+=(build-essential)
    have pkg-config || need+=(pkg-config)
    [ -s /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
    have curl || need+=(curl)
    apt_install "${need[@]}"
}

_RELAYBOX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The workspace's `rust-version` (Cargo.toml), e.g. 1.95.
required_rust_version() {
    sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$_RELAYBOX_ROOT/Cargo.toml" | head -n 1
}

# version_at_least HAVE WANT: dotted version numbers, compared field by field.
version_at_least() {
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

# The version of the rustc that cargo uses, e.g. 1.95.0.
rustc_version() {
    rustc --version 2>/dev/null | sed -n 's/^rustc \([0-9][0-9.]*\).*/\1/p'
}

# Make `cargo` available: use the one on PATH or in ~/.cargo; install Rust via rustup only if
# there is none at all. A toolchain older than `rust-version` is updated through rustup when
# rustup manages it; otherwise we stop and say so (cargo's own message comes later and names
# only one crate).
ensure_cargo() {
    if ! have cargo && [ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]; then
        # shellcheck disable=SC1091
        . "${CARGO_HOME:-$HOME/.cargo}/env"
    fi
    if have cargo; then
        local want got
        want="$(required_rust_version)"
        got="$(rustc_version)"
        if [ -z "$want" ] || { [ -n "$got" ] && version_at_least "$got" "$want"; }; then
            return 0
        fi
        if have rustup; then
            echo "Rust ${got:-?} is older than rust-version $want (Cargo.toml): rustup update stable"
            rustup update stable
            got="$(rustc_version)"
            if [ -n "$got" ] && version_at_least "$got" "$want"; then
                return 0
            fi
        fi
        echo "error: relaybox needs Rust $want or newer (rust-version in Cargo.toml), this is" \
            "${got:-unknown} ($(command -v rustc || echo 'no rustc')); update it, e.g. with rustup" >&2
        return 1
    fi
    echo "cargo not found: installing the Rust toolchain with rustup (profile minimal + rustfmt, clippy)"
    ensure_build_packages
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --no-modify-path --profile minimal -c rustfmt -c clippy
    # shellcheck disable=SC1091
    . "${CARGO_HOME:-$HOME/.cargo}/env"
    have cargo
}

# rustfmt and clippy for the checks; added through rustup only when missing.
ensure_cargo_components() {
    local missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    [ "${#missing[@]}" -eq 0 ] && return 0
    if have rustup; then
        rustup component add "${missing[@]}"
    else
        echo "error: cargo lacks ${missing[*]} and there is no rustup to add them" >&2
        return 1
    fi
}
