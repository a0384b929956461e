#!/usr/bin/env bash
# Memory per IMAP IDLE connection over TLS, relaybox alone (issue 18 item 2), with the method of
# scripts/bench/run.sh's memory rows: RSS and PSS of the relay idle, then with N clients logged in
# over IMAPS (993), INBOX selected, in IDLE, read 3 s after the last one is idle;
# per connection = (with clients − idle) ÷ established.
#
#   scripts/bench/idle-mem.sh [--bin BIN] [--clients N[,N...]] [--ip IP] [--json FILE]
#
# 100 000 clients need several source addresses (about 28 000 ephemeral ports each towards one
# server port): the load generator connects from 127.0.1.1, 127.0.1.2, … (one per 25 000
# clients), and the descriptor limits are raised (needs root beyond the hard limit). Every process
# started is stopped at the end; the data dir is removed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

RBX_BIN=$CARGO_TARGET_DIR/release/relaybox CLIENTS=10000 IP=127.0.0.29 JSON=""
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) RBX_BIN=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --ip) IP=$2; shift ;;
    --json) JSON=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
cargo build --release -q -p loadgen
LOADGEN=$CARGO_TARGET_DIR/release/loadgen
WORK=${IDLE_MEM_WORK:-/var/tmp/relaybox-idle-mem}
rm -rf "$WORK"
mkdir -p "$WORK"

max=0
for n in ${CLIENTS//,/ }; do [ "$n" -gt "$max" ] && max=$n; done
# relaybox gives IMAP 3/4 of its descriptors after a reserve of at most 1024
want=$((max * 3 / 2 + 4096))
if [ "$(ulimit -Hn)" -lt "$want" ] && ! ulimit -Hn "$want" 2>/dev/null; then
    echo "$max clients need $want descriptors; the hard limit is $(ulimit -Hn) and cannot be raised" \
        "here (needs CAP_SYS_RESOURCE)" >&2
    exit 1
fi
ulimit -Sn "$(ulimit -Hn)"

RBX_PID="" lgpid=""
cleanup() {
    [ -n "$lgpid" ] && kill "$lgpid" 2>/dev/null && wait "$lgpid" 2>/dev/null
    [ -n "$RBX_PID" ] && kill "$RBX_PID" 2>/dev/null && wait "$RBX_PID" 2>/dev/null
    rm -rf "$WORK/rbx"
}
trap cleanup EXIT

cat >"$WORK/relaybox.toml" <<CONF
mail_domain = "[$IP]"
data_dir = "$WORK/rbx"
max_imap_connections = $((max + 1000))
max_load_1m = 1000.0
max_new_accounts_per_ip_per_hour = 0
min_available_memory = "1M"
min_free_disk_space = "1M"
[listen]
smtp = []
submissions = []
submission = []
imap = []
imaps = ["$IP:993"]
http = []
https = []
metrics = []
CONF

mem() { # "rss pss" in KiB
    echo "$(awk '/^VmRSS:/ { print $2 }' "/proc/$RBX_PID/status") $(awk '/^Pss:/ { print $2 }' "/proc/$RBX_PID/smaps_rollup")"
}

results=()
acct=0
for n in ${CLIENTS//,/ }; do
    RUST_LOG=warn "$RBX_BIN" serve --config "$WORK/relaybox.toml" >>"$WORK/relaybox.log" 2>&1 </dev/null &
    RBX_PID=$!
    deadline=$((SECONDS + 30))
    until (exec 3<>"/dev/tcp/$IP/993") 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "relaybox does not listen (see $WORK/relaybox.log)" >&2; exit 1; }
        sleep 0.05
    done
    sleep 2
    read -r rss0 pss0 <<<"$(mem)"
    sources=""
    for ((k = 1; k <= (n + 24999) / 25000; k++)); do sources+="${sources:+,}127.0.1.$k"; done
    rm -f "$WORK/ready" "$WORK/until"
    "$LOADGEN" --host "$IP" --domain "[$IP]" --label relaybox --first-account "$acct" \
        --source "$sources" --json "$WORK/idle-$n.json" \
        idle --clients "$n" --hold 900 --ready-file "$WORK/ready" --until-file "$WORK/until" >/dev/null &
    lgpid=$!
    while [ ! -e "$WORK/ready" ] && kill -0 $lgpid 2>/dev/null; do sleep 0.2; done
    sleep 3
    read -r rss1 pss1 <<<"$(mem)"
    touch "$WORK/until"
    wait $lgpid
    lgpid=""
    # the data dir is new for each count, so the same accounts can be used again
    est=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["established"])' "$WORK/idle-$n.json")
    line=$(python3 - "$WORK/idle-$n.json" "$n" "$rss0" "$pss0" "$rss1" "$pss1" "$RBX_BIN" <<'PY'
import json, sys
lg = json.load(open(sys.argv[1]))
n, rss0, pss0, rss1, pss1 = map(int, sys.argv[2:7])
e = max(lg["established"], 1)
print(json.dumps({
    "clients": n, "established": lg["established"], "alive_at_end": lg["alive_at_end"],
    "failed": lg["failed"], "first_error": lg["first_error"], "ramp_s": round(lg["ramp_s"], 1),
    "idle_rss_kib": rss0, "idle_pss_kib": pss0, "rss_kib": rss1, "pss_kib": pss1,
    "rss_per_conn_kib": round((rss1 - rss0) / e, 2), "pss_per_conn_kib": round((pss1 - pss0) / e, 2),
    "bin": sys.argv[7],
}))
PY
)
    echo "$line"
    results+=("$line")
    [ "$est" -gt 0 ] || { echo "no client got to IDLE" >&2; exit 1; }
    kill "$RBX_PID"; wait "$RBX_PID" 2>/dev/null || true; RBX_PID=""
    rm -rf "$WORK/rbx"
done
if [ -n "$JSON" ]; then
    (IFS=,; echo "[${results[*]}]") >"$JSON"
fi
