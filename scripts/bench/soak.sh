#!/usr/bin/env bash
# Soak (issue 18 item 5): relaybox with 5 000 IMAP clients in IDLE while 100 messages per second
# are submitted for 10 minutes, round robin to those clients. Records the relay's RSS/PSS every
# 5 s (start, middle and end are reported), end of DATA → EXISTS per minute (p50/p99), and the
# messages accepted (250) but never announced to their IDLE client: lost, which must be 0.
#
#   scripts/bench/soak.sh [--bin BIN] [--clients 5000] [--rate 100] [--duration 600] [--ip IP]
#
# Bounded: the load generator stops after DURATION plus at most 60 s of draining, and the whole
# load generator is killed after DURATION + 15 min whatever happens. Work files live under
# /var/tmp/relaybox-soak (the relay's data dir is removed at the end; its log and the raw samples
# stay until the next run); the result goes to bench/results/soak-<date>.json, a table to stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

RBX_BIN=$CARGO_TARGET_DIR/release/relaybox CLIENTS=5000 RATE=100 DURATION=600 IP=127.0.0.39 SENDERS=8
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) RBX_BIN=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --ip) IP=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
cargo build --release -q -p loadgen
LOADGEN=$CARGO_TARGET_DIR/release/loadgen
WORK=${SOAK_WORK:-/var/tmp/relaybox-soak}
rm -rf "$WORK"
mkdir -p "$WORK" bench/results
want=$((CLIENTS * 2 + 4096))
[ "$(ulimit -Hn)" -ge "$want" ] || ulimit -Hn "$want"
ulimit -Sn "$(ulimit -Hn)"

RBX_PID="" LG_PID=""
cleanup() {
    [ -n "$LG_PID" ] && kill "$LG_PID" 2>/dev/null && wait "$LG_PID" 2>/dev/null
    [ -n "$RBX_PID" ] && kill "$RBX_PID" 2>/dev/null && wait "$RBX_PID" 2>/dev/null
    rm -rf "$WORK/rbx"
}
trap cleanup EXIT

cat >"$WORK/relaybox.toml" <<CONF
mail_domain = "[$IP]"
data_dir = "$WORK/rbx"
# one sender account sends $RATE / $SENDERS messages per second
max_user_send_per_minute = 10000000
max_user_send_burst_size = 10000000
max_mailbox_size = "100G"
max_imap_connections = $((CLIENTS + 1000))
max_load_1m = 1000.0
max_new_accounts_per_ip_per_hour = 0
min_available_memory = "1M"
min_free_disk_space = "1M"
[listen]
smtp = []
submissions = ["$IP:465"]
submission = []
imap = []
imaps = ["$IP:993"]
http = []
https = []
metrics = []
CONF

RUST_LOG=warn "$RBX_BIN" serve --config "$WORK/relaybox.toml" >"$WORK/relaybox.log" 2>&1 </dev/null &
RBX_PID=$!
deadline=$((SECONDS + 30))
until (exec 3<>"/dev/tcp/$IP/993") 2>/dev/null && (exec 3<>"/dev/tcp/$IP/465") 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "relaybox does not listen (see $WORK/relaybox.log)" >&2; exit 1; }
    sleep 0.1
done
sleep 2
idle_mem="$(awk '/^VmRSS:/ { print $2 }' /proc/$RBX_PID/status) $(awk '/^Pss:/ { print $2 }' /proc/$RBX_PID/smaps_rollup)"

# Hard bound: ramp (generous), the run, the drain, and some slack.
timeout -s TERM $((DURATION + 900)) "$LOADGEN" --host "$IP" --smtp-port 465 --imap-port 993 \
    --domain "[$IP]" --label relaybox --json "$WORK/soak.json" \
    soak --clients "$CLIENTS" --senders "$SENDERS" --rate "$RATE" --duration "$DURATION" \
    --ready-file "$WORK/ready" >/dev/null 2>"$WORK/loadgen.err" &
LG_PID=$!
echo "== $CLIENTS clients going to IDLE"
while [ ! -e "$WORK/ready" ] && kill -0 $LG_PID 2>/dev/null; do sleep 0.5; done
[ -e "$WORK/ready" ] || { echo "load generator failed:" >&2; cat "$WORK/loadgen.err" >&2; exit 1; }
echo "== $(cat "$WORK/ready" | tr -d '\n') in IDLE; sending $RATE/s for $DURATION s"
t0=$(date +%s.%N)
: >"$WORK/mem.tsv"
while kill -0 $LG_PID 2>/dev/null; do
    r=$(awk '/^VmRSS:/ { print $2 }' /proc/$RBX_PID/status 2>/dev/null || echo 0)
    p=$(awk '/^Pss:/ { print $2 }' /proc/$RBX_PID/smaps_rollup 2>/dev/null || echo 0)
    echo "$(echo "$(date +%s.%N) - $t0" | bc -l) $r $p" >>"$WORK/mem.tsv"
    sleep 5
done
wait $LG_PID || { echo "load generator failed:" >&2; cat "$WORK/loadgen.err" >&2; LG_PID=""; exit 1; }
LG_PID=""
kill -0 "$RBX_PID" || { echo "relaybox died:" >&2; tail "$WORK/relaybox.log" >&2; exit 1; }

out="bench/results/soak-$(date -u +%Y-%m-%dT%H%M%SZ).json"
python3 - "$WORK/soak.json" "$WORK/mem.tsv" "$DURATION" "$idle_mem" "$out" "$(cut -d' ' -f1-3 /proc/loadavg)" "$RBX_BIN" <<'PY'
import json, sys
lg = json.load(open(sys.argv[1]))
mem = [tuple(float(x) for x in l.split()) for l in open(sys.argv[2]) if l.strip()]
duration = float(sys.argv[3])
idle_rss, idle_pss = map(int, sys.argv[4].split())
def at(t):  # the sample nearest to t seconds after the first message
    s = min(mem, key=lambda m: abs(m[0] - t))
    return {"t_s": round(s[0], 1), "rss_kib": int(s[1]), "pss_kib": int(s[2])}
res = {
    "load_average_at_end": sys.argv[6], "bin": sys.argv[7],
    "relay_idle": {"rss_kib": idle_rss, "pss_kib": idle_pss},
    "rss_start": at(0), "rss_middle": at(duration / 2), "rss_end": at(duration),
    "rss_max_kib": int(max(m[1] for m in mem)),
    "mem_samples": [[round(m[0], 1), int(m[1]), int(m[2])] for m in mem],
    "loadgen": lg,
}
json.dump(res, open(sys.argv[5], "w"), indent=1)
print(f"| {lg['clients']} IDLE clients, {lg['rate']:g} msg/s × {lg['duration_s']:g} s | |")
print("|---|---|")
for k in ("rss_start", "rss_middle", "rss_end"):
    print(f"| RSS at {k[4:]} (t = {res[k]['t_s']} s) | {res[k]['rss_kib'] / 1024:.1f} MiB |")
print(f"| messages planned / accepted / announced by EXISTS / lost | {lg['planned']} / {lg['accepted']} / {lg['announced']} / **{lg['lost']}** |")
print(f"| IDLE connections dropped | {lg['idle_dropped']} |")
e = lg["data_to_exists"]
print(f"| end of DATA → EXISTS, all | p50 {e.get('p50_ms')} ms, p99 {e.get('p99_ms')} ms, max {e.get('max_ms')} ms |")
print()
print("| minute | messages | p50 ms | p99 ms | max ms |")
print("|---|---|---|---|---|")
for m in lg["data_to_exists_per_minute"]:
    print(f"| {m['minute'] + 1} | {m['n']} | {m.get('p50_ms')} | {m.get('p99_ms')} | {m.get('max_ms')} |")
PY
echo "wrote $out"
