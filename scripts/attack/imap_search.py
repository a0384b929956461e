#!/usr/bin/env python3
"""Issue 14 item 4: SEARCH stalling the runtime. Fills one account with --messages messages of
--body-kib KiB ('a' repeated), starts --parallel connections that each send
`SEARCH BODY {needle}` with an almost-matching needle of --needle bytes ('a'… 'b', the naive
scan's worst case), waits 0.5 s, then opens a new IMAPS connection and measures how long its
greeting takes (TLS handshake + greeting). Reports that, the searches' wall times and replies.
Bounded: socket timeouts of --timeout s, the relay is stopped at the end. Loopback only.

    tests/.venv/bin/python scripts/attack/imap_search.py --bin /work/baseline/relaybox
    tests/.venv/bin/python scripts/attack/imap_search.py --bin target/release/relaybox
"""
import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from imap_common import Imap, Relay, login_and_fill  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/relaybox")
    ap.add_argument("--messages", type=int, default=8)
    ap.add_argument("--body-kib", type=int, default=256)
    ap.add_argument("--needle", type=int, default=30000, help="needle length in bytes")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--ip", default="127.0.0.174")
    ap.add_argument("--port-offset", type=int, default=23100)
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    relay = Relay(args.bin, args.ip, args.port_offset)
    try:
        user, pw = login_and_fill(relay, args.messages, b"a" * (args.body_kib * 1024))
        needle = b"a" * (args.needle - 1) + b"b"
        results = [None] * args.parallel
        clients = []
        for i in range(args.parallel):
            c = Imap(relay.ip, relay.port, timeout=args.timeout)
            c.cmd("l", f'LOGIN "{user}" "{pw}"')
            c.cmd("s", "SELECT INBOX")
            clients.append(c)

        def search(i):
            c = clients[i]
            start = time.time()
            try:
                c.send(f"q SEARCH BODY {{{len(needle)}+}}\r\n".encode() + needle + b"\r\n")
                _, r = c.until("q")
            except Exception as e:
                r = f"error: {e!r}"
            results[i] = (round(time.time() - start, 3), r[:100])

        threads = [threading.Thread(target=search, args=(i,)) for i in range(args.parallel)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        start = time.time()
        try:
            probe = Imap(relay.ip, relay.port, timeout=args.timeout)
            greeting_s = round(time.time() - start, 3)
            ok = probe.greeting.startswith(b"* OK")
            probe.close()
        except Exception as e:
            greeting_s, ok = round(time.time() - start, 3), f"error: {e!r}"
        for t in threads:
            t.join(args.timeout + 5)
        for c in clients:
            c.close()
        print(json.dumps({
            "binary": args.bin,
            "messages": args.messages,
            "body_kib": args.body_kib,
            "needle_bytes": args.needle,
            "parallel_searches": args.parallel,
            "greeting_wait_s": greeting_s,
            "greeting_ok": ok,
            "searches": results,
        }))
    finally:
        relay.stop()


if __name__ == "__main__":
    sys.exit(main())
