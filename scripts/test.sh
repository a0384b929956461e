#!/usr/bin/env bash
# scripts/test.sh [STAGE...]: every check relaybox has; CI runs exactly this (.ci/run).
#
# Stages, in order (all by default; name some to run only those):
#   setup     Debian packages (only if missing), cargo/rustfmt/clippy, tests/.venv with the
#             pinned packages of tests/requirements.txt (Delta Chat core + client, pytest)
#   fmt       cargo fmt --all -- --check
#   clippy    cargo clippy --all-targets -- -D warnings
#   build     cargo build --release -p relaybox  (the one binary every later stage uses)
#   unit      cargo nextest run (+ doctests), or cargo test when nextest is not installed
#   e2e       pytest tests/ against target/release/relaybox (IMAP/SMTP + real Delta Chat core)
#   federation  pytest tests/test_federation*.py: two relays (a.test, b.test) with dnsmasq and a
#             private CA, IP-literal relays, Postfix + OpenDKIM interop, queue durability
#   fuzz      a short smoke run of every cargo-fuzz target (scripts/fuzz.sh, FUZZ_SECONDS each)
#   image     scripts/test-image.sh: builds the Raspberry Pi 4/5 image (scripts/build-image.sh) and
#             boots that file in qemu-system-aarch64 (TCG); installs its Debian tools if missing;
#             then the built-image checks of tests/test_image_tree.py
#
# The fuzz and image stages run in the background beside e2e and federation when they are in the
# same run (RELAYBOX_SERIAL=1 runs them on their own).
# Environment: PYTEST_ADDOPTS (extra pytest options, e.g. "-k securejoin -x"),
# RELAYBOX_TEST_MAIL=encrypted (build test mails in the encrypted shape, see tests/mailhelpers.py).
# Logs and measurements (relay logs of failed modules, idle_latency.txt, junit xml) go to
# test-artifacts/. Exit status is non-zero if any stage failed.
#
# To add a stage (federation, fuzz smoke, image test...): write a stage_NAME function below, and
# add NAME to ALL_STAGES.
# shellcheck disable=SC2317  # stage functions are called indirectly through run_stage
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

ALL_STAGES=(setup fmt clippy build unit e2e federation fuzz image)

VENV="$ROOT/tests/.venv"
ARTIFACTS="$ROOT/test-artifacts"
RELAYBOX_BIN="$ROOT/target/release/relaybox"
export RELAYBOX_BIN RELAYBOX_ARTIFACTS="$ARTIFACTS"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
if [ "${CI:-}" = "true" ]; then
    # a clean clone gains nothing from incremental compilation
    export CARGO_INCREMENTAL=0
    # The background stages' own builds (the aarch64 cross build of the image, the fuzz
    # targets) keep their target dirs between CI runs on one machine: cold they cost ~15 min of
    # CPU beside the end-to-end stages, warm a minute or two. The main build stays clean.
    export RELAYBOX_CARGO_CACHE=${RELAYBOX_CARGO_CACHE:-$HOME/.cache/relaybox-ci}
fi

# ------------------------------------------------------------------------------------------------
# stage runner
# ------------------------------------------------------------------------------------------------

RESULTS=()
FAILED=0
T_ALL=$SECONDS

fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

banner() {
    printf '\n'
    printf '=%.0s' {1..100}
    printf '\n== %s\n' "$*"
    printf '=%.0s' {1..100}
    printf '\n'
}

# run_stage NAME CMD...: run CMD (a command or a shell function) with `set -e` in a subshell,
# and leave its exit status in LAST_RC. It always returns 0: a caller must never write
# `run_stage … || …`, because bash ignores `set -e` inside anything run on the left of `||`,
# so a failing command in the middle of a stage would go unnoticed.
# time it, record PASS/FAIL. A failing stage does not stop the run; the final exit status does.
run_stage() {
    local name=$1 start rc
    shift
    banner "stage $name: $*  [$(date -u +%H:%M:%S) UTC]"
    start=$SECONDS
    set +e
    (
        set -euo pipefail
        "$@"
    )
    rc=$?
    set -e
    record_stage "$name" "$rc" $((SECONDS - start))
    LAST_RC=$rc
    return 0
}

# record_stage NAME RC SECONDS: note a stage's result for the summary.
record_stage() {
    local name=$1 rc=$2 took=$3
    if [ "$rc" -eq 0 ]; then
        RESULTS+=("PASS  $(fmt_secs "$took")  $name")
        printf '\n== stage %s: PASS in %s\n' "$name" "$(fmt_secs "$took")"
    else
        RESULTS+=("FAIL  $(fmt_secs "$took")  $name (exit $rc)")
        printf '\n== stage %s: FAIL (exit %d) after %s\n' "$name" "$rc" "$(fmt_secs "$took")"
        FAILED=1
    fi
}

# The fuzz and image stages are CPU-bound and the end-to-end stages mostly wait on sockets, so
# on a 2-core CI machine they run in the background beside them (RELAYBOX_SERIAL=1: one after
# the other). Their output goes to a log each that is printed when it is waited for.
BACKGROUND=(fuzz image)
declare -A BG_PID=() BG_START=() BG_LOG=() BG_DONE=()
start_background() {
    local name=$1
    mkdir -p "$ARTIFACTS"
    BG_LOG[$name]="$ARTIFACTS/$name-stage.log"
    banner "stage $name: started in the background beside the end-to-end stages (log: ${BG_LOG[$name]})  [$(date -u +%H:%M:%S) UTC]"
    BG_START[$name]=$SECONDS
    (
        set -euo pipefail
        "stage_$name"
    ) >"${BG_LOG[$name]}" 2>&1 &
    BG_PID[$name]=$!
}

wait_background() {
    local name=$1 rc=0
    [ -n "${BG_PID[$name]:-}" ] || return 0
    wait "${BG_PID[$name]}" || rc=$?
    banner "stage $name (ran in the background): its output"
    cat "${BG_LOG[$name]}"
    record_stage "$name" "$rc" $((SECONDS - BG_START[$name]))
    unset "BG_PID[$name]"
}

skip_stage() {
    RESULTS+=("SKIP  -      $1 ($2)")
    printf '\n== stage %s: SKIPPED (%s)\n' "$1" "$2"
    FAILED=1
}

summary() {
    banner "summary (total $(fmt_secs $((SECONDS - T_ALL))))"
    local r
    for r in "${RESULTS[@]}"; do
        printf '  %s\n' "$r"
    done
    local f
    for f in idle_latency.txt federation_rtt.txt wizard-time.txt wizard-domain-time.txt; do
        if [ -f "$ARTIFACTS/$f" ]; then
            printf '\n'
            sed 's/^/  /' "$ARTIFACTS/$f"
        fi
    done
    if [ "$FAILED" -ne 0 ]; then
        printf '\nRESULT: FAILED (artifacts, if any, in %s)\n' "$ARTIFACTS"
    else
        printf '\nRESULT: all stages passed\n'
    fi
}

# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------

stage_setup() {
    # A full run needs about 6 GiB (debug and release trees, fuzz build, test data); running
    # short makes builds fail and the relays refuse new accounts, which is hard to read later.
    df -h "$ROOT" | sed 's/^/disk: /'
    ensure_build_packages
    ensure_cargo
    ensure_cargo_components
    cargo --version
    # dnsmasq answers the loopback DNS zones of the resolver and DKIM tests
    [ -x /usr/sbin/dnsmasq ] || have dnsmasq || apt_install dnsmasq-base
    # pebble is the ACME server of the certificate test (relay/tests/acme_pebble.rs)
    have pebble || apt_install pebble
    # gpg reads relaybox backups in a Rust test (they are plain OpenPGP)
    have gpg || apt_install gnupg
    ensure_mta_packages
    ensure_knot
    # coturn's turnutils_uclient is the TURN client of tests/test_turn.py
    ensure_coturn
    ensure_router_packages
    # headless Chromium renders the public pages in tests/test_web.py
    have chromium || apt_install chromium
    # Python 3 with venv (Debian splits venv/ensurepip into python3-venv)
    if ! have python3; then
        apt_install python3 python3-venv
    elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    if [ -d "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        echo "tests/.venv is broken: recreating it"
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    local want have_stamp=""
    want="$(sha256sum tests/requirements.txt | cut -d' ' -f1)"
    [ -f "$VENV/.requirements.sha256" ] && have_stamp="$(cat "$VENV/.requirements.sha256")"
    if [ "$want" != "$have_stamp" ]; then
        "$VENV/bin/python" -m pip install -q -r tests/requirements.txt
        echo "$want" >"$VENV/.requirements.sha256"
    else
        echo "tests/.venv is up to date with tests/requirements.txt"
    fi
    "$VENV/bin/python" --version
    echo "deltachat-rpc-server $("$VENV/bin/deltachat-rpc-server" --version 2>&1)"
    "$VENV/bin/python" -c 'import deltachat_rpc_client, pytest, pytest_timeout; print("pytest", pytest.__version__)'
    # playwright-core for the wizard's browser test (tests/test_wizard.py); it drives the
    # Chromium installed above and downloads no browser of its own
    have node && have npm || apt_install nodejs npm
    local lock_sum stamp=tests/web/node_modules/.lock.sha256
    lock_sum="$(sha256sum tests/web/package-lock.json | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_sum" ]; then
        (cd tests/web && npm ci --no-audit --no-fund)
        echo "$lock_sum" >"$stamp"
    else
        echo "tests/web/node_modules is up to date with package-lock.json"
    fi
}

# Postfix + OpenDKIM for the federation interop test. The tests run their own instance
# (`postfix -c DIR`); the package must not set up or start a system one: debconf "No
# configuration" (no /etc/postfix/main.cf), and services are not started during the install.
# Knot DNS takes the relay's RFC 2136 updates in relay/tests/ddns_knot.rs, which starts its own
# knotd on a loopback port. Its system service is masked before the install so the package does
# not start a server on port 53 (the link works with or without a running systemd).
ensure_knot() {
    [ -x /usr/sbin/knotd ] && return 0
    as_root mkdir -p /etc/systemd/system
    as_root ln -sf /dev/null /etc/systemd/system/knot.service
    apt_install_quiet knot
}

ensure_mta_packages() {
    local need=()
    [ -x /usr/sbin/postfix ] || need+=(postfix)
    [ -x /usr/sbin/opendkim ] || need+=(opendkim)
    [ -x /usr/sbin/opendkim-genkey ] || need+=(opendkim-tools)
    [ "${#need[@]}" -gt 0 ] || return 0
    echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
    apt_install_quiet "${need[@]}"
}

# miniupnpd (UPnP-IGD and NAT-PMP) and nftables play the home router of the port-mapping test
# (tests/test_portmap.py), which starts its own instance inside a network namespace. The
# package's system service must never run: it is masked and not started during the install, and
# debconf is told not to start it.
ensure_router_packages() {
    local need=()
    [ -x /usr/sbin/miniupnpd ] || need+=(miniupnpd-nftables)
    have nft || [ -x /usr/sbin/nft ] || need+=(nftables)
    have ip || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)
    [ "${#need[@]}" -gt 0 ] || return 0
    echo "miniupnpd miniupnpd/start_daemon boolean false" | as_root debconf-set-selections
    if have systemctl; then
        as_root systemctl mask miniupnpd.service >/dev/null 2>&1 || true
    fi
    apt_install_quiet "${need[@]}"
}

# coturn brings turnutils_uclient/turnutils_peer for the TURN test. Its own server must not run:
# the unit is masked before the install (a /dev/null link works before the unit exists, with or
# without a running systemd), and policy-rc.d stops the maintainer scripts from starting it.
ensure_coturn() {
    have turnutils_uclient && return 0
    as_root mkdir -p /etc/systemd/system
    as_root ln -sf /dev/null /etc/systemd/system/coturn.service
    apt_install_quiet coturn
}

stage_fmt() {
    cargo fmt --all -- --check
}

stage_clippy() {
    cargo clippy --all-targets -- -D warnings
}

stage_build() {
    cargo build --release -p relaybox
    test -x "$RELAYBOX_BIN"
    ls -l "$RELAYBOX_BIN"
}

stage_unit() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --no-fail-fast
        # nextest does not run doctests
        cargo test --workspace --doc
    else
        echo "(cargo-nextest not installed: using cargo test)"
        cargo test --workspace --no-fail-fast
    fi
    if [ "${CI:-}" = "true" ]; then
        # later stages use only the release binary; the debug tree (GBs of test binaries) would
        # squeeze the fuzz build and the relays' data on a small CI disk
        rm -rf "$ROOT/target/debug"
        df -h "$ROOT" | sed 's/^/disk: /'
    fi
}

stage_e2e() {
    if [ ! -x "$RELAYBOX_BIN" ]; then
        echo "error: $RELAYBOX_BIN missing (stage build failed or was not run)" >&2
        return 1
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "error: tests/.venv missing: run the setup stage first (scripts/test.sh setup e2e)" >&2
        return 1
    fi
    mkdir -p "$ARTIFACTS"
    rm -f "$ARTIFACTS/idle_latency.txt"
    local rc=0
    "$VENV/bin/python" -m pytest tests -v --durations=15 \
        --ignore-glob='*test_federation*' \
        --junitxml="$ARTIFACTS/pytest-junit.xml" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "error: pytest collected no tests (exit 5): counted as a failure" >&2
    fi
    return "$rc"
}

stage_federation() {
    if [ ! -x "$RELAYBOX_BIN" ]; then
        echo "error: $RELAYBOX_BIN missing (stage build failed or was not run)" >&2
        return 1
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "error: tests/.venv missing: run the setup stage first (scripts/test.sh setup federation)" >&2
        return 1
    fi
    mkdir -p "$ARTIFACTS"
    rm -f "$ARTIFACTS/federation_rtt.txt"
    local rc=0
    "$VENV/bin/python" -m pytest tests/test_federation.py tests/test_federation_iplit.py \
        tests/test_federation_durability.py tests/test_federation_postfix.py -v --durations=15 \
        --junitxml="$ARTIFACTS/pytest-federation-junit.xml" || rc=$?
    if [ -f "$ARTIFACTS/federation_rtt.txt" ]; then
        cat "$ARTIFACTS/federation_rtt.txt"
    fi
    if [ "$rc" -eq 5 ]; then
        echo "error: pytest collected no tests (exit 5): counted as a failure" >&2
    fi
    return "$rc"
}

stage_image() {
    bash scripts/test-image.sh || return $?
    # The checks of the built image (partition table, boot files, no secrets); in the e2e stage
    # they skip while the image is still being built.
    RELAYBOX_IMAGE_REQUIRED=1 "$VENV/bin/python" -m pytest tests/test_image_tree.py -v -k built_image \
        --junitxml="$ARTIFACTS/pytest-image-junit.xml"
}

stage_fuzz() {
    # Long runs: scripts/fuzz.sh 600. Here only long enough that a regression in a parser shows.
    if [ -n "${RELAYBOX_CARGO_CACHE:-}" ]; then
        export CARGO_TARGET_DIR=$RELAYBOX_CARGO_CACHE/fuzz
    fi
    bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
}

# Not in ALL_STAGES (it installs Postfix + Dovecot if missing and takes about a minute):
# `scripts/test.sh bench-smoke` runs the benchmark in its smallest form, both stacks, to keep
# scripts/bench/ and loadgen working. The full benchmark is scripts/bench/run.sh (BENCHMARKS.md).
stage_bench-smoke() {
    bash scripts/bench/run.sh --smoke
}

# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

if [ "$#" -gt 0 ]; then
    STAGES=("$@")
else
    STAGES=("${ALL_STAGES[@]}")
fi
for s in "${STAGES[@]}"; do
    if ! declare -F "stage_$s" >/dev/null; then
        echo "unknown stage '$s'; stages: ${ALL_STAGES[*]}" >&2
        exit 2
    fi
done

# cargo/venv must be usable by later stages even when `setup` is not among the named ones
if ! have cargo && [ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]; then
    # shellcheck disable=SC1091
    . "${CARGO_HOME:-$HOME/.cargo}/env"
fi

echo "relaybox test run: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), stages: ${STAGES[*]}"

for s in "${STAGES[@]}"; do
    case "$s" in
    setup)
        # nothing else can run without the toolchain and the venv
        run_stage setup stage_setup
        if [ "$LAST_RC" -ne 0 ]; then
            summary
            exit 1
        fi
        ;;
    e2e | federation)
        if [ "${RELAYBOX_SERIAL:-}" != 1 ]; then
            for b in "${BACKGROUND[@]}"; do
                if [ -z "${BG_PID[$b]:-}" ] && [ -z "${BG_DONE[$b]:-}" ] && printf '%s\n' "${STAGES[@]}" | grep -qx "$b"; then
                    BG_DONE[$b]=1
                    start_background "$b"
                fi
            done
        fi
        if [ -x "$RELAYBOX_BIN" ] && ! printf '%s\n' "${RESULTS[@]}" | grep -q '^FAIL .* build'; then
            run_stage "$s" "stage_$s"
        else
            skip_stage "$s" "no relaybox binary: build failed"
        fi
        ;;
    fuzz | image)
        if [ -n "${BG_DONE[$s]:-}" ]; then
            wait_background "$s"
        else
            run_stage "$s" "stage_$s"
        fi
        ;;
    *)
        run_stage "$s" "stage_$s"
        ;;
    esac
done
for b in "${BACKGROUND[@]}"; do
    wait_background "$b"
done

summary
exit "$FAILED"
