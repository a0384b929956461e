#!/usr/bin/env python3
"""One relaybox (`relaybox dev` on a spare loopback address) under `loadgen throughput`, with its
/proc/PID/io write_bytes per accepted message and the fsync/fdatasync calls per message (strace
-c, optional): the C=8 and C=1 rows of issue 18 for one binary, without the reference stack.
Bounded by loadgen's --count/--duration; loopback only.

  python3 scripts/bench/relay_io.py --bin target/release/relaybox --loadgen target/release/loadgen \
      --clients 8 --size 4096 --count 400
  python3 scripts/bench/relay_io.py --bin BIN --loadgen LG --clients 1 --size 4096 --duration 10
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "attack"))
from _relay import LOADGEN_SETTINGS, Relay  # noqa: E402


def io(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return -1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--strace", metavar="FILE", help="strace -c -f the relay during the run into FILE")
    args = ap.parse_args()
    relay = Relay(args.bin, settings=LOADGEN_SETTINGS)
    try:
        smtp, imap = relay.port("submissions"), relay.port("imaps")
        base = [args.loadgen, "--host", relay.ip, "--smtp-port", str(smtp), "--imap-port", str(imap),
                "--domain", f"[{relay.ip}]"]
        subprocess.run(base + ["accounts", "--count", str(2 * args.clients)], check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
        time.sleep(1)
        tracer = None
        if args.strace:
            tracer = subprocess.Popen(["strace", "-f", "-c", "-o", args.strace, "-p", str(relay.proc.pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        before = io(relay.proc.pid)
        out = subprocess.run(base + ["throughput", "--clients", str(args.clients), "--size", str(args.size),
                                     "--duration", str(args.duration), "--count", str(args.count),
                                     "--drain-timeout", "60"],
                             check=True, capture_output=True, text=True, timeout=600).stdout
        time.sleep(1)
        after = io(relay.proc.pid)
        if tracer:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
        res = json.loads(out[out.index("{"):])
        n = res.get("accepted") or res.get("accepted_messages") or 0
        print(json.dumps(res))
        if n:
            print(f"write_bytes per accepted message: {(after - before) / n:.0f} ({n} messages)")
    finally:
        relay.stop()


if __name__ == "__main__":
    main()
