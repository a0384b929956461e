#!/usr/bin/env python3
"""Issue 14 item 3: IMAP sequence-set amplification. Fills one account with --messages small
messages, then sends one `UID FETCH 1:*,1:*,… (FLAGS)` whose set repeats `1:*` --ranges times
(default: as many as fit a 64 KiB line), and reports the relay's peak RSS (sampled every 5 ms)
while the command runs, its wall time and its reply. Bounded: one command, socket timeout
--timeout s, the relay is stopped at the end. Loopback only.

    tests/.venv/bin/python scripts/attack/imap_seqset.py --bin /work/baseline/relaybox
    tests/.venv/bin/python scripts/attack/imap_seqset.py --bin target/release/relaybox
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from imap_common import Imap, Relay, RssSampler, login_and_fill  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/relaybox")
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--ranges", type=int, default=16000, help="copies of 1:* in the set")
    ap.add_argument("--ip", default="127.0.0.173")
    ap.add_argument("--port-offset", type=int, default=23000)
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    relay = Relay(args.bin, args.ip, args.port_offset)
    try:
        t0 = time.time()
        user, pw = login_and_fill(relay, args.messages, b"hello")
        fill_s = time.time() - t0
        c = Imap(relay.ip, relay.port, timeout=args.timeout)
        c.cmd("l", f'LOGIN "{user}" "{pw}"')
        n, r = c.cmd("s", "SELECT INBOX")
        time.sleep(0.5)
        before = relay.rss()
        sampler = RssSampler(relay.proc.pid)
        line = "f UID FETCH " + ",".join(["1:*"] * args.ranges) + " (FLAGS)"
        start = time.time()
        try:
            n, r = c.cmd("f", line[2:])
        except Exception as e:  # a timeout or a dropped connection is a result too
            n, r = -1, f"error: {e!r}"
        took = time.time() - start
        peak = sampler.stop()
        c.close()
        print(json.dumps({
            "binary": args.bin,
            "messages": args.messages,
            "ranges": args.ranges,
            "line_bytes": len(line) + 2,
            "fill_s": round(fill_s, 1),
            "rss_before_kib": before,
            "peak_rss_during_kib": peak,
            "wall_s": round(took, 3),
            "fetch_lines": n,
            "reply": r[:120],
        }))
    finally:
        relay.stop()


if __name__ == "__main__":
    sys.exit(main())
