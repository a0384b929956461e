#!/usr/bin/env python3
"""The relay's memory after a client downloads a mailbox (issue 18: small bodies live in the
index since store format 3, so reading them goes through redb's page cache, which is heap, not
the kernel's page cache).

Sends COUNT encrypted messages of SIZE bytes over port 25 to one account, waits for the log
checkpoint that moves the bodies into the index, restarts the relay (cold cache), then fetches
every body over IMAP (UID FETCH 1:* BODY.PEEK[] in pages of 200) and prints VmRSS before and
after and VmHWM. Bounded: COUNT messages, loopback only.

  tests/.venv/bin/python scripts/bench/fetch_rss.py --bin target/release/relaybox --count 4000 --size 16000
"""

from __future__ import annotations

import argparse
import imaplib
import secrets
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "attack"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from _relay import Relay, insecure, mx_connection, padded  # noqa: E402
from mailhelpers import build_message  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--size", type=int, default=16000)
    ap.add_argument("--count", type=int, default=4000)
    args = ap.parse_args()
    relay = Relay(args.bin)
    try:
        user = f"{secrets.token_hex(5)[:9]}@[{relay.ip}]"
        pw = secrets.token_hex(10)
        im = imaplib.IMAP4_SSL(relay.ip, relay.port("imaps"), ssl_context=insecure(), timeout=60)
        im.login(user, pw)
        im.logout()
        sender = "sender@[127.0.0.1]"
        msg = padded(build_message(sender, user, body="x" * 78 + "\r\n", encrypted=True), args.size)
        s = mx_connection(relay)
        t0 = time.monotonic()
        for _ in range(args.count):
            s.sendmail(sender, [user], msg)
        s.quit()
        sent_s = time.monotonic() - t0
        # A clean stop checkpoints the log into the index; the start after it has a cold cache.
        relay.proc.send_signal(2)
        relay.proc.wait(60)
        relay.err = open(relay.dir / "stderr2.log", "wb")
        cmd = [args.bin, "dev", "--ip", relay.ip, "--data", str(relay.dir / "data"),
               "--port-offset", str(relay.offset)]
        relay.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=relay.err, start_new_session=True)
        deadline = time.monotonic() + 60
        while b"all listeners up" not in (relay.dir / "stderr2.log").read_bytes():
            assert relay.proc.poll() is None and time.monotonic() < deadline, "relay did not restart"
            time.sleep(0.05)
        time.sleep(1.0)
        rss0 = relay.status("VmRSS")
        im = imaplib.IMAP4_SSL(relay.ip, relay.port("imaps"), ssl_context=insecure(), timeout=60)
        im.login(user, pw)
        im.select("INBOX", readonly=True)
        t1 = time.monotonic()
        got = 0
        for lo in range(1, args.count + 1, 200):
            typ, data = im.fetch(f"{lo}:{min(lo + 199, args.count)}", "(BODY.PEEK[])")
            assert typ == "OK", data
            got += sum(len(d[1]) for d in data if isinstance(d, tuple))
        fetch_s = time.monotonic() - t1
        im.logout()
        time.sleep(1.0)
        rss1 = relay.status("VmRSS")
        hwm = relay.status("VmHWM")
        index = next((relay.dir / "data").rglob("index.redb")).stat().st_size
        print(f"fetch_rss: size={len(msg)} count={args.count} sent_s={sent_s:.1f} fetched_mb={got / 1e6:.1f} "
              f"fetch_s={fetch_s:.1f} rss_before_kb={rss0} rss_after_kb={rss1} hwm_kb={hwm} "
              f"index_mb={index / 1e6:.1f}")
    finally:
        relay.stop()


if __name__ == "__main__":
    main()
