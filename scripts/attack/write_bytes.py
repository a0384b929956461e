#!/usr/bin/env python3
"""Bytes written per message (issue 14 item 5: streaming bodies to disk must not add writes).

Sends COUNT encrypted messages of SIZE bytes over port 25 (STARTTLS, from 127.0.0.1 with an
address-literal From of that address) to one local account, one after the other, and prints
the relay's /proc/PID/io write_bytes per message (body files, index commits, log lines).
Bounded: COUNT messages, loopback only.

  tests/.venv/bin/python scripts/attack/write_bytes.py --bin /work/baseline/relaybox --size 4096
  tests/.venv/bin/python scripts/attack/write_bytes.py --bin target/release/relaybox --size 4096
"""

from __future__ import annotations

import argparse
import os
import imaplib
import secrets
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

from _relay import Relay, insecure, mx_connection, padded

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from mailhelpers import build_message  # noqa: E402


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return -1


def dev_written(dev: str | None) -> int:
    """Bytes the block device `dev` wrote (journal included), after flushing dirty pages."""
    if not dev:
        return 0
    os.sync()
    return int(Path(f"/sys/block/{dev}/stat").read_text().split()[6]) * 512


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--pace", type=float, default=0.0,
                    help="seconds between messages (1 = the paced C=1 row of issue 18)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds to wait after the last message before reading the counter (65 takes in "
                         "the store's first index checkpoint, which runs 60 s after the first message)")
    ap.add_argument("--blockdev", metavar="NAME",
                    help="also print what block device NAME (e.g. loop0, holding TMPDIR) wrote per message, "
                         "journal and metadata included; os.sync() before each reading, so keep the machine quiet")
    ap.add_argument("--fetch-delete", action="store_true",
                    help="after each message the recipient fetches it and deletes it (IMAP, as Delta Chat does "
                         "when it deletes from the server after download); its writes are counted too")
    ap.add_argument("--strace", metavar="FILE",
                    help="attach strace to the relay while sending; write its summary to FILE")
    args = ap.parse_args()
    relay = Relay(args.bin)
    try:
        user = f"{secrets.token_hex(5)[:9]}@[{relay.ip}]"
        im = imaplib.IMAP4_SSL(relay.ip, relay.port("imaps"), ssl_context=insecure(), timeout=30)
        pw = secrets.token_hex(10)
        im.login(user, pw)
        if args.fetch_delete:
            im.select("INBOX")
        else:
            im.logout()
        sender = "sender@[127.0.0.1]"
        msg = padded(build_message(sender, user, body="x" * 78 + "\r\n", encrypted=True), args.size)
        s = mx_connection(relay)
        time.sleep(1.0)
        tracer = None
        if args.strace:
            tracer = subprocess.Popen(
                ["strace", "-f", "-c", "-o", args.strace, "-p", str(relay.proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        dev_before = dev_written(args.blockdev)
        before = write_bytes(relay.proc.pid)
        codes: dict = {}
        t0 = time.monotonic()
        for i in range(args.count):
            if args.pace:
                time.sleep(max(0.0, t0 + i * args.pace - time.monotonic()))
            try:
                s.sendmail(sender, [user], msg)
                codes[250] = codes.get(250, 0) + 1
                if args.fetch_delete:
                    im.noop()
                    im.uid("FETCH", "1:*", "(BODY.PEEK[])")
                    im.uid("STORE", "1:*", "+FLAGS.SILENT", "(\\Deleted)")
                    im.expunge()
            except smtplib.SMTPException as e:
                k = str(e)[:80]
                codes[k] = codes.get(k, 0) + 1
        s.quit()
        if args.fetch_delete:
            im.logout()
        time.sleep(args.settle)
        after = write_bytes(relay.proc.pid)
        dev_after = dev_written(args.blockdev)
        if tracer:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
        print(f"write_bytes: size={len(msg)} count={args.count} "
              f"per_message={(after - before) / args.count:.0f} replies={codes}")
        if args.blockdev:
            print(f"{args.blockdev}: device bytes per message={(dev_after - dev_before) / args.count:.0f}")
    finally:
        relay.stop()


if __name__ == "__main__":
    main()
