#!/usr/bin/env bash
# Scale rows (issue 18 item 4): what start-up, crash recovery, expiry and login cost as the number
# of accounts and stored messages grows. relaybox alone, one data directory grown row by row.
#
#   scripts/bench/scale.sh [--rows ACCOUNTS:MESSAGES,...] [--bin LABEL=PATH]... [--logins N] [--keep]
#                          [--min-free-mb N] [--ram-disk GB]
#
# Default rows 10000:100000,10000:1000000,100000:1000000 (each row adds to the previous one, so
# rows must grow). Every --bin is measured on every row (default: after=target/release/relaybox);
# give the baseline too for a before/after table. Per row and binary: start-up to all listeners
# accepting and crash recovery (start after kill -9), both with the page cache dropped first as
# after a power cut; RSS when idle; a dry expiry run through the control socket (time, and peak
# memory above the idle RSS); LOGIN latency of existing accounts, first login after the start
# (SHA-512 crypt verified) and repeated (login cache); index size. The data (about 4.3 GB per
# million messages) is deleted at the end unless --keep; with --keep a later run adds to it
# instead of starting over. Filling stops while the disk has less than --min-free-mb (3000) free.
# The fill (examples/scale_populate.rs) writes through the store's own API; it runs under
# eatmydata when that is installed, which skips the fsyncs of the fill only (the files and the
# index are the same; the measured relaybox runs without it). --ram-disk GB puts the data on an
# ext4 file system in a file in /dev/shm (loop-mounted; removed at the end): for a machine whose
# disk cannot spare ~5 GB per million messages. Dropping the page cache still empties the
# dentry/inode caches, but the reads behind them are memory copies, so cold starts on it are
# faster than on a real disk. Needs root (drop_caches, the loop mount).
# Results: bench/results/scale-<date>.json, and a table on stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

ROWS=10000:100000,10000:1000000,100000:1000000 BINS=() LOGINS=200 KEEP=0 MIN_FREE=3000 RAM_GB=0
while [ $# -gt 0 ]; do
    case "$1" in
    --rows) ROWS=$2; shift ;;
    --bin) BINS+=("$2"); shift ;;
    --logins) LOGINS=$2; shift ;;
    --keep) KEEP=1 ;;
    --min-free-mb) MIN_FREE=$2; shift ;;
    --ram-disk) RAM_GB=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ ${#BINS[@]} -gt 0 ] || BINS=("after=$CARGO_TARGET_DIR/release/relaybox")

IP=127.0.0.21
WORK=${SCALE_WORK:-/var/tmp/relaybox-scale}   # not tmpfs: start-up must read a real disk
IMG=/dev/shm/relaybox-scale.ext4
mountpoint -q "$WORK" || { [ "$KEEP" = 1 ] || rm -rf "$WORK"; }
mkdir -p "$WORK" bench/results
if [ "$RAM_GB" != 0 ] && ! mountpoint -q "$WORK"; then
    truncate -s "${RAM_GB}G" "$IMG"
    mkfs.ext4 -q -F -i 4096 "$IMG"   # one inode per 4 KB: one file per message
    mount -o loop "$IMG" "$WORK"
fi
[ -n "${SCALE_NO_BUILD:-}" ] || cargo build --release -q -p relaybox -p loadgen --example scale_populate
POP=$CARGO_TARGET_DIR/release/examples/scale_populate
LOADGEN=$CARGO_TARGET_DIR/release/loadgen
FAST=$(command -v eatmydata || true)
PID=""
cleanup() {
    [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
    [ "$KEEP" = 1 ] && return
    if mountpoint -q "$WORK"; then umount "$WORK" && rm -f "$IMG"; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/relaybox.toml" <<CONF
mail_domain = "[$IP]"
data_dir = "$WORK/data"
max_mailbox_size = "100G"
max_imap_connections = 30000
max_load_1m = 1000.0
min_available_memory = "1M"
min_free_disk_space = "1M"
# no daily expiry in the middle of a run: the dry run below is the one measured
expiry_time = "$(date -u -d "+12 hours" +%H:%M)"
[listen]
smtp = ["$IP:25"]
submissions = ["$IP:465"]
submission = ["$IP:587"]
imap = ["$IP:143"]
imaps = ["$IP:993"]
http = []
https = []
metrics = []
CONF

wait_listeners() {
    local deadline=$((SECONDS + 600)) a
    for a in "$IP:25" "$IP:465" "$IP:587" "$IP:143" "$IP:993"; do
        until (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null; do
            [ "$SECONDS" -lt "$deadline" ] || { echo "$a does not accept" >&2; return 1; }
            sleep 0.005
        done
    done
}
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# start BIN FILE: starts relaybox (not in a subshell: PID must survive), writes the seconds
# until every listener accepts to FILE
start() {
    local t0 t1
    t0=$(date +%s.%N)
    SWEEPS=$(grep -c "store swept" "$WORK/relaybox.log" 2>/dev/null || true)
    RUST_LOG=warn,relaybox::server=info "$1" serve --config "$WORK/relaybox.toml" >>"$WORK/relaybox.log" 2>&1 </dev/null &
    PID=$!
    wait_listeners
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l | awk '{ printf "%.3f\n", $1 }' >"$2"
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }
# BIN: waits until the store sweep `serve` runs in the background after start-up has finished
# (its log line), so that it does not run into what is measured next. Binaries without the
# sweep (before it existed) list the files before they listen: nothing to wait for.
settle() {
    local n=0
    grep -q "store swept" "$1" || return 0
    until [ "$(grep -c "store swept" "$WORK/relaybox.log")" -gt "${SWEEPS:-0}" ] || [ $n -ge 6000 ]; do
        n=$((n + 1))
        sleep 0.1
    done
}
kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$PID/status"; }

results=()
prev_msgs=0
for row in ${ROWS//,/ }; do
    accts=${row%:*} msgs=${row#*:}
    [ "$msgs" -ge "$prev_msgs" ] || { echo "rows must grow" >&2; exit 2; }
    prev_msgs=$msgs
    echo "== populate $accts accounts, $msgs messages (df: $(df -h --output=avail "$WORK" | tail -1))"
    pop=$(nice -n 5 $FAST "$POP" --data "$WORK/data" --domain "[$IP]" --accounts "$accts" \
        --messages "$msgs" --min-free-mb "$MIN_FREE")
    sync
    echo "   $pop"
    added=$(echo "$pop" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["messages_before"] + d["messages_added"])')
    [ "$added" -ge "$msgs" ] || echo "   only $added messages fit on the disk" >&2
    index_b=$(stat -c %s "$WORK/data/store/index.redb")
    for b in "${BINS[@]}"; do
        label=${b%%=*} bin=${b#*=}
        # untimed first start: makes the TLS certificate and the DKIM key
        [ -e "$WORK/data/tls" ] || { start "$bin" "$WORK/t"; stop; }
        cold
        start "$bin" "$WORK/t"
        start_s=$(cat "$WORK/t")
        t0=$(date +%s.%N)
        settle "$bin"
        settle_s=$(echo "$(date +%s.%N) - $t0" | bc -l | awk '{ printf "%.1f\n", $1 }')
        rss_idle=$(kib VmRSS)
        echo 5 >"/proc/$PID/clear_refs"   # VmHWM := VmRSS
        t0=$(date +%s.%N)
        "$bin" expire --config "$WORK/relaybox.toml" --dry-run >"$WORK/expire.out"
        expire_s=$(echo "$(date +%s.%N) - $t0" | bc -l | awk '{ printf "%.3f\n", $1 }')
        expire_peak=$(( $(kib VmHWM) - rss_idle ))
        logins=$("$LOADGEN" --host "$IP" --domain "[$IP]" logins --count "$LOGINS" --accounts "$accts")
        rss_after=$(kib VmRSS)
        kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=""
        cold
        start "$bin" "$WORK/t"
        crash_s=$(cat "$WORK/t")
        rss_crash=$(kib VmRSS)
        stop
        r=$(python3 - "$label" "$accts" "$added" "$start_s" "$crash_s" "$rss_idle" "$rss_after" "$rss_crash" \
            "$expire_s" "$expire_peak" "$index_b" "$logins" "$pop" "$(cat "$WORK/expire.out")" "$settle_s" <<'PY'
import json, sys
a = sys.argv[1:]
lg, pop = json.loads(a[11]), json.loads(a[12])
print(json.dumps({"bin": a[0], "accounts": int(a[1]), "messages": int(a[2]), "start_s": float(a[3]),
    "crash_recovery_s": float(a[4]), "rss_idle_kib": int(a[5]), "rss_after_logins_kib": int(a[6]),
    "rss_after_crash_start_kib": int(a[7]), "expiry_dry_run_s": float(a[8]),
    "expiry_peak_above_idle_kib": int(a[9]), "index_bytes": int(a[10]),
    "login_first": lg["first_login"], "login_repeat": lg["repeat_login"],
    "hash_verify_ms": pop["hash_verify_ms"], "expire_report": a[13],
    "sweep_done_s": float(a[14])}))
PY
)
        echo "   $r"
        results+=("$r")
    done
done

out=bench/results/scale-$(date -u +%Y-%m-%dT%H%M%SZ).json
printf '%s\n' "${results[@]}" | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
import platform, os
machine = {"cpus": os.cpu_count(), "kernel": platform.release(),
           "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
json.dump({"machine": machine, "rows": rows}, open(sys.argv[1], "w"), indent=1)
h = ["bin", "accounts", "messages", "start s", "crash-start s", "sweep done after s", "RSS idle MB", "expiry s",
     "expiry peak MB", "login p50/p99 ms (1st)", "login p50/p99 ms (repeat)", "index MB"]
print("| " + " | ".join(h) + " |")
print("|" + "---|" * len(h))
for r in rows:
    lf, lr = r["login_first"], r["login_repeat"]
    print("| " + " | ".join(str(x) for x in [r["bin"], r["accounts"], r["messages"], r["start_s"],
        r["crash_recovery_s"], r["sweep_done_s"], round(r["rss_idle_kib"] / 1024, 1), r["expiry_dry_run_s"],
        round(r["expiry_peak_above_idle_kib"] / 1024, 1), "%s / %s" % (lf["p50_ms"], lf["p99_ms"]),
        "%s / %s" % (lr["p50_ms"], lr["p99_ms"]), round(r["index_bytes"] / 2**20, 1)]) + " |")
print("password hash verify alone: %.2f ms" % rows[-1]["hash_verify_ms"] if rows else "")
' "$out"
echo "results: $out"
