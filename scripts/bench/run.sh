#!/usr/bin/env bash
# relaybox against the Postfix + Dovecot reference stack, side by side (issue 8).
#
#   scripts/bench/run.sh [--quick | --smoke] [--idle-clients N[,N...]] [--latency-count N] [--dc-count N]
#
# Starts relaybox (`relaybox serve`, IP-literal domain on 127.0.0.19) and the reference stack
# (scripts/bench/reference-stack.sh, bench.test on 127.0.0.20), measures both with the same load
# generator (loadgen/) and messages, prints a table relaybox | reference | ratio and writes
# bench/results/<date>.json. Stops every process it started. Full run ≤ 15 min, --quick ≤ 1 min.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

QUICK=0 SMOKE=0 IDLE_CLIENTS=1000,10000 LAT_COUNT=1000 TP_SECS=5 DISK_MSGS=400 DC_COUNT=20 PACED_MSGS=40
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 IDLE_CLIENTS=100 LAT_COUNT=30 TP_SECS=1 DISK_MSGS=100 DC_COUNT=5 PACED_MSGS=10 ;;
    --smoke) QUICK=1 SMOKE=1 IDLE_CLIENTS=20 LAT_COUNT=4 TP_SECS=0.3 DISK_MSGS=20 DC_COUNT=2 PACED_MSGS=3 ;;
    --idle-clients) IDLE_CLIENTS=$2; shift ;;
    --latency-count) LAT_COUNT=$2; shift ;;
    --dc-count) DC_COUNT=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
# Dovecot hands an IDLE session to imap-hibernate after imap_hibernate_timeout (30 s, as chatmail
# sets it); the memory with idle clients is read after that.
IDLE_SETTLE=$([ "$QUICK" = 1 ] && echo 3 || echo 35)
[ "$SMOKE" = 1 ] && IDLE_SETTLE=1

RBX_IP=127.0.0.19 REF_IP=127.0.0.20
BIN=$CARGO_TARGET_DIR/release
WORK=${BENCH_WORK:-/var/tmp/relaybox-bench}   # not tmpfs: disk writes must reach the block layer
RES=$WORK/results
rm -rf "$WORK"
mkdir -p "$RES" bench/results

cargo build --release -q -p relaybox -p loadgen
RBX_PID=""

cleanup() {
    [ -n "$RBX_PID" ] && kill "$RBX_PID" 2>/dev/null && wait "$RBX_PID" 2>/dev/null
    bash scripts/bench/reference-stack.sh stop "$WORK/ref" || true
}
trap cleanup EXIT

wait_listeners() {
    local deadline=$((SECONDS + 30)) a
    for a in "$@"; do
        until (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null; do
            [ "$SECONDS" -lt "$deadline" ] || { echo "$a does not accept" >&2; return 1; }
            sleep 0.005
        done
    done
}

write_rbx_config() {
    cat >"$WORK/relaybox.toml" <<CONF
mail_domain = "[$RBX_IP]"
data_dir = "$WORK/rbx"
# the reference stack has no filtermail, hence no rate limit; the load generator must not hit one
max_user_send_per_minute = 10000000
max_user_send_burst_size = 10000000
max_mailbox_size = "100G"
max_imap_connections = 30000
max_smtp_connections = 1000
max_load_1m = 1000.0
# the load generator creates thousands of accounts from one address
max_new_accounts_per_ip_per_hour = 0
min_available_memory = "1M"
min_free_disk_space = "1M"
[listen]
smtp = ["$RBX_IP:25"]
submissions = ["$RBX_IP:465"]
submission = ["$RBX_IP:587"]
imap = ["$RBX_IP:143"]
imaps = ["$RBX_IP:993"]
http = []
https = []
metrics = []
CONF
}

# Starts relaybox (not in a subshell: RBX_PID must survive); the cold-start seconds go to $1.
start_rbx() {
    local t0 t1
    t0=$(date +%s.%N)
    RUST_LOG=warn "$BIN/relaybox" serve --config "$WORK/relaybox.toml" >>"$WORK/relaybox.log" 2>&1 </dev/null &
    RBX_PID=$!
    wait_listeners "$RBX_IP:25" "$RBX_IP:465" "$RBX_IP:587" "$RBX_IP:143" "$RBX_IP:993"
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l | awk '{ printf "%.3f\n", $1 }' >"$1"
}
stop_rbx() { kill "$RBX_PID"; wait "$RBX_PID" 2>/dev/null || true; RBX_PID=""; }

pids_of() {
    if [ "$1" = relaybox ]; then echo "$RBX_PID"; else bash scripts/bench/reference-stack.sh pids "$WORK/ref"; fi
}

# KiB: "rss pss nprocs" summed over the stack's processes.
mem_of() {
    local rss=0 pss=0 n=0 p r s
    for p in $(pids_of "$1"); do
        r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true)
        s=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null || true)
        [ -n "$r" ] || continue
        rss=$((rss + r)) pss=$((pss + ${s:-0})) n=$((n + 1))
    done
    echo "$rss $pss $n"
}

# "pid write_bytes cancelled_write_bytes" per process.
io_of() {
    local p
    for p in $(pids_of "$1"); do
        awk -v p="$p" '/^write_bytes:/ { w = $2 } /^cancelled_write_bytes:/ { c = $2 }
                       END { if (w != "") print p, w, c }' "/proc/$p/io" 2>/dev/null || true
    done
}
# Bytes written since the snapshot in $2 (processes that exited meanwhile are not counted).
io_delta() {
    sync
    io_of "$1" | awk 'NR == FNR { w[$1] = $2; c[$1] = $3; next }
                      { dw += $2 - w[$1]; dc += $3 - c[$1] } END { print dw + 0, dc + 0 }' "$2" -
}

# The Delta Chat round trip (two real cores, tests/.venv from scripts/test.sh setup).
VENV_PY=$ROOT/tests/.venv/bin/python
PASSWORD=benchpass12345  # loadgen's default, and the reference stack's pre-created accounts' password
dc() { # dc STACK FIRST-ACCOUNT
    local host=$REF_IP domain=bench.test
    [ "$1" = relaybox ] && host=$RBX_IP domain="[$RBX_IP]"
    "$VENV_PY" scripts/bench/dc_pingpong.py --label "$1" --host "$host" --domain "$domain" \
        --first-account "$2" --password "$PASSWORD" --count "$DC_COUNT" --json "$RES/$1-dc.json" \
        >>"$WORK/dc-$1.log" 2>&1 || { echo "Delta Chat round trip on $1 failed (see $WORK/dc-$1.log)" >&2; tail -20 "$WORK/dc-$1.log" >&2; }
}

lg() { # lg STACK NAME loadgen-args...
    local stack=$1 name=$2
    shift 2
    if [ "$stack" = relaybox ]; then
        "$BIN/loadgen" --host $RBX_IP --domain "[$RBX_IP]" --label relaybox --json "$RES/$stack-$name.json" "$@" >/dev/null
    else
        "$BIN/loadgen" --host $REF_IP --domain bench.test --label reference --json "$RES/$stack-$name.json" "$@" >/dev/null
    fi
}

started=$SECONDS
echo "== starting both stacks (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
write_rbx_config
start_rbx "$WORK/first-start"  # the first start makes the self-signed certificate
stop_rbx
bash scripts/bench/reference-stack.sh start "$WORK/ref" $REF_IP "$WORK/rbx/tls/cert.pem" "$WORK/rbx/tls/key.pem" >/dev/null
bash scripts/bench/reference-stack.sh stop "$WORK/ref"
sync
start_rbx "$WORK/rbx-start"
bash scripts/bench/reference-stack.sh start "$WORK/ref" $REF_IP "$WORK/rbx/tls/cert.pem" "$WORK/rbx/tls/key.pem" >"$WORK/ref-start" </dev/null
echo "{\"relaybox\": $(cat "$WORK/rbx-start"), \"reference\": $(cat "$WORK/ref-start")}" >"$RES/coldstart.json"
sleep 2

for s in relaybox reference; do
    read -r rss pss n <<<"$(mem_of $s)"
    echo "{\"rss_kib\": $rss, \"pss_kib\": $pss, \"procs\": $n}" >"$RES/$s-mem-idle.json"
done

acct=0
next_range() { acct=$((acct + ${1})); echo $((acct - ${1})); }

for s in relaybox reference; do
    echo "== $s: latency 4 KB x$LAT_COUNT ($((SECONDS - started)) s)"
    # 4 sender/recipient pairs at once: stock Dovecot's 0.5 s IDLE delay alone would make 1 000
    # messages one after another take 8.5 minutes
    lg $s latency --first-account "$(next_range 8)" latency --count "$LAT_COUNT" --size 4096 --pairs 4
    if [ -x "$VENV_PY" ]; then
        echo "== $s: Delta Chat ping-pong x$DC_COUNT"
        dc $s "$(next_range 2)"
    else
        echo "== $s: no tests/.venv (run scripts/test.sh setup): Delta Chat row skipped" >&2
    fi
    for size in 4096 102400; do
        for c in 1 8 64; do
            echo "== $s: throughput C=$c size=$size"
            lg $s "tp-$size-$c" --first-account "$(next_range $((2 * c)))" \
                throughput --clients $c --size $size --duration "$TP_SECS" --drain-timeout 60
        done
    done
    for size in 4096 102400; do
        echo "== $s: disk writes, $DISK_MSGS x $size"
        first=$(next_range 16)
        # log the accounts in first so that account creation is not counted
        lg $s "acct-$size" --first-account "$first" accounts --count 16
        sync
        sleep 1
        io_of $s >"$WORK/io-before"
        lg $s "disk-$size" --first-account "$first" throughput --clients 8 --size $size \
            --duration 600 --count "$DISK_MSGS" --drain-timeout 60
        sleep 1
        read -r w c <<<"$(io_delta $s "$WORK/io-before")"
        echo "{\"write_bytes\": $w, \"cancelled_write_bytes\": $c}" >"$RES/$s-diskio-$size.json"
    done
    # Issue 18: one 4.7 KB PGP/MIME message per second from one client, the load a Pi sees most
    # of the day (no group commit to share an fsync with).
    echo "== $s: disk writes, paced: $PACED_MSGS x 4.7 KB at 1/s, C=1"
    first=$(next_range 2)
    lg $s "acct-paced" --first-account "$first" accounts --count 2
    sync
    sleep 1
    io_of $s >"$WORK/io-before"
    lg $s "disk-paced" --first-account "$first" throughput --clients 1 --size 4700 --interval 1 \
        --duration 600 --count "$PACED_MSGS" --drain-timeout 60
    sleep 1
    read -r w c <<<"$(io_delta $s "$WORK/io-before")"
    echo "{\"write_bytes\": $w, \"cancelled_write_bytes\": $c}" >"$RES/$s-diskio-paced.json"
    for n in ${IDLE_CLIENTS//,/ }; do
        echo "== $s: $n IDLE clients"
        rm -f "$WORK/ready" "$WORK/until"
        first=$(next_range "$n")
        # The stack's memory just before the clients come, the base of "per connection": the rows
        # before this one leave caches filled (relaybox: the index's page cache, up to 32 MiB, now
        # that small bodies live in the index), which the clients did not cost.
        read -r rss0 pss0 np0 <<<"$(mem_of $s)"
        lg $s "idle-$n" --first-account "$first" idle --clients "$n" --hold 900 \
            --ready-file "$WORK/ready" --until-file "$WORK/until" &
        lgpid=$!
        while [ ! -e "$WORK/ready" ] && kill -0 $lgpid 2>/dev/null; do sleep 0.2; done
        sleep 2
        read -r rss pss np <<<"$(mem_of $s)"
        # Dovecot hibernates idle sessions after 30 s, so the reference is read again after
        # that; relaybox has nothing that changes with time here (one process, no hibernation)
        settle=$IDLE_SETTLE
        [ "$s" = relaybox ] && settle=$((IDLE_SETTLE < 3 ? IDLE_SETTLE : 3))
        sleep "$settle"
        read -r rss2 pss2 n2 <<<"$(mem_of $s)"
        touch "$WORK/until"
        wait $lgpid
        echo "{\"before_rss_kib\": $rss0, \"before_pss_kib\": $pss0, \"before_procs\": $np0, \"rss_kib\": $rss, \"pss_kib\": $pss, \"procs\": $np, \"settled_rss_kib\": $rss2, \"settled_pss_kib\": $pss2, \"settled_procs\": $n2, \"settle_s\": $settle}" >"$RES/$s-mem-clients-$n.json"
        # the next count starts from an idle stack again (Dovecot's processes exit lazily)
        sleep 3
    done
done

suffix=""
[ "$QUICK" = 1 ] && suffix=-quick
[ "$SMOKE" = 1 ] && suffix=-smoke
# smoke results (CI) are not kept in bench/results/
out_dir=bench/results
[ "$SMOKE" = 1 ] && out_dir=$WORK
out="$out_dir/$(date -u +%Y-%m-%dT%H%M%SZ)$suffix.json"
python3 scripts/bench/report.py "$RES" "$out" "$(cut -d' ' -f1-3 /proc/loadavg)" "$QUICK" "$IDLE_CLIENTS" "$DISK_MSGS"
echo "wrote $out ($((SECONDS - started)) s)"
