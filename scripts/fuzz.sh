#!/usr/bin/env bash
# Fuzzes relaybox with cargo-fuzz (libFuzzer) on stable Rust.
#
#   scripts/fuzz.sh [--runs N] [SECONDS_PER_TARGET] [TARGET...]
#
# Targets (fuzz/fuzz_targets/): smtp_command, imap_command, gate, mxdeliv, imap_seqsearch,
# http_admin;
# default all, 600 s each. With --runs N each target stops after N executions instead (and after
# SECONDS_PER_TARGET too, if one is given).
#
# The long run (release procedure, issue 14): at least 10 million executions per target,
# detached so that it outlives the shell, fastest targets first (fuzz/README.md):
#   setsid nohup nice -n 5 scripts/fuzz.sh --runs 10000000 imap_seqsearch gate smtp_command \
#       mxdeliv imap_command http_admin >fuzz-long.log 2>&1 &
# The session and HTTP targets do a few hundred to a few thousand executions per second, so
# that takes hours per target; read the "executions per target" table at the end of the log
# (each target's progress is in the file its "== fuzzing" line names). A time bound instead:
#   scripts/fuzz.sh 14400          # 4 h per target
# Report the table (and any crash) in the release note.
# Installs cargo-fuzz if it is missing, builds every target, seeds fuzz/corpus/<target> from
# the committed seeds (fuzz/seeds/) and the gate fixtures (tests/fixtures/gate/), runs each
# target for the given time, prints the executions per target and exits non-zero if any
# target found a crash (the input is left in fuzz/artifacts/<target>/).
#
# Stable Rust: cargo-fuzz's default AddressSanitizer needs the nightly-only -Zsanitizer flag,
# so we build with `--sanitizer none` (coverage instrumentation, -Cpasses=sancov-module, is
# stable). Rust code is memory-safe without ASan; panics, overflows (debug assertions are on),
# hangs and out-of-memory are still caught. A crash reproduces with
#   cargo fuzz run --sanitizer none <target> fuzz/artifacts/<target>/crash-…
set -euo pipefail

runs=
if [ "${1:-}" = "--runs" ]; then
    runs=${2:?--runs needs a number}
    shift 2
fi
# The seconds are optional: a first argument that is not a number is already a target.
if [[ ${1:-} =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
elif [ -n "$runs" ]; then
    secs=0
else
    secs=600
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(smtp_command imap_command gate mxdeliv imap_seqsearch http_admin)
fi
limits=(-max_total_time="$secs")
if [ -n "$runs" ]; then limits+=(-runs="$runs"); fi

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== building fuzz targets (release, libFuzzer, no sanitizer)"
start=$(date +%s)
cargo fuzz build --sanitizer none
echo "== built in $(($(date +%s) - start)) s"

# The SMTP and IMAP targets keep a relay (store, accounts) in a temporary directory for the
# whole run; give them one that is removed afterwards.
# tmpfs when there is one: the store fsyncs every write, which would dominate the IMAP target.
base=${TMPDIR:-/tmp}
if [ -d /dev/shm ] && [ -w /dev/shm ]; then base=/dev/shm; fi
work=$(mktemp -d "$base/relaybox-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Run copies of the binaries just built (what `cargo fuzz run` would run, without its rebuild):
# a run of several hours then fuzzes the code as it was when it started, even if the tree is
# edited and rebuilt meanwhile.
triple=$(rustc -vV | sed -n 's/^host: //p')
built=${CARGO_TARGET_DIR:-$root/fuzz/target}/$triple/release
mkdir -p "$work/bin"
for t in "${targets[@]}"; do
    cp "$built/$t" "$work/bin/$t"
done

seed() {
    local t=$1 dir=fuzz/corpus/$1
    mkdir -p "$dir"
    [ -d "fuzz/seeds/$t" ] && cp -n fuzz/seeds/"$t"/* "$dir"/ 2>/dev/null || true
    local f name
    for f in tests/fixtures/gate/*.eml; do
        name=$(basename "$f" .eml)
        case $t in
        gate)
            cp -n "$f" "$dir/fixture-$name" || true
            ;;
        smtp_command)
            # Mode '*': port 465, logged in; the fixture sent as this user to the other one.
            {
                printf '*MAIL FROM:<abcdefghi@[127.0.0.1]>\r\nRCPT TO:<rcptuser1@[127.0.0.1]>\r\nDATA\r\n'
                sed -e 's/alice@example\.org/abcdefghi@[127.0.0.1]/g' \
                    -e 's/bob@example\.net/rcptuser1@[127.0.0.1]/g' \
                    -e 's/^\./../' "$f"
                printf '.\r\nQUIT\r\n'
            } >"$dir/fixture-$name"
            ;;
        imap_command)
            # Mode "'": logged in, INBOX selected; APPEND the fixture, then fetch it apart.
            {
                printf "'A1 APPEND INBOX {%d+}\r\n" "$(wc -c <"$f")"
                cat "$f"
                printf '\r\nF1 FETCH 1:* (BODYSTRUCTURE ENVELOPE BODY.PEEK[1] BODY.PEEK[2.MIME])\r\n'
                printf 'F2 UID SEARCH TEXT "PGP"\r\n'
            } >"$dir/fixture-$name"
            ;;
        mxdeliv)
            # POST from another relay: the envelope headers, a blank line, the fixture as body.
            {
                printf '\0X-MAIL-FROM: abcdefghi@[127.0.0.1]\nX-MAIL-TO: rcptuser1@[127.0.0.1]\n\n'
                sed -e 's/alice@example\.org/abcdefghi@[127.0.0.1]/g' \
                    -e 's/bob@example\.net/rcptuser1@[127.0.0.1]/g' "$f"
            } >"$dir/fixture-$name"
            ;;
        esac
    done
}

declare -A execs took
failed=()
for t in "${targets[@]}"; do
    seed "$t"
    mkdir -p "fuzz/artifacts/$t"
    log="$work/$t.log"
    echo "== fuzzing $t for ${runs:+$runs runs, }${secs} s (0: no time limit); progress in $log"
    t0=$(date +%s)
    set +e
    TMPDIR="$work" "$work/bin/$t" -artifact_prefix="fuzz/artifacts/$t/" \
        "${limits[@]}" -timeout=30 -print_final_stats=1 \
        -dict="fuzz/dict/$t.dict" "fuzz/corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    took[$t]=$(($(date +%s) - t0))
    grep -E '^(#[0-9]+.*(DONE|NEW|pulse))|Done [0-9]+ runs|ERROR|panicked|SUMMARY|Test unit written' "$log" |
        tail -n 8 || true
    n=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    if [ -z "$n" ]; then
        n=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p' "$log" | tail -n 1)
    fi
    execs[$t]=${n:-0}
    if [ $rc -ne 0 ]; then
        failed+=("$t")
        echo "!! $t failed (exit $rc); last lines of its log:"
        tail -n 40 "$log"
        ls -1 "fuzz/artifacts/$t" 2>/dev/null | sed 's/^/   artifact: /' || true
    fi
done

echo "== executions per target (${runs:+$runs runs or }${secs} s each)"
printf '  %-14s %12s %8s %8s\n' target executions seconds exec/s
for t in "${targets[@]}"; do
    printf '  %-14s %12s %8s %8s\n' "$t" "${execs[$t]}" "${took[$t]}" \
        "$((execs[$t] / (took[$t] > 0 ? took[$t] : 1)))"
done
if [ ${#failed[@]} -ne 0 ]; then
    echo "== CRASH in: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "== no crashes"
