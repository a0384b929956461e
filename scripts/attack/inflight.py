#!/usr/bin/env python3
"""Item 5 of issue 14: memory held by message bodies in flight.

N senders on port 25 (STARTTLS) each send SIZE MB of DATA to one local account without ending
it, hold it, then end it. With --outgoing they are one logged-in user on 465 instead, each
sending an encrypted-shaped message (the filler in its MIME preamble) to a local account and a
remote address, so the message is cleaned, DKIM-signed (named domains) and queued; the remote
address is a loopback literal whose ports refuse, so nothing leaves the machine. Prints the relay's RSS before, while the bodies are held, and its peak
(VmHWM), the peak of its anonymous memory (RssAnon, sampled every 20 ms: heap and stacks, without
the page cache a mapped spool file shows in VmHWM), plus the final replies. Bounded: N connections, at most --timeout seconds, loopback only.

  tests/.venv/bin/python scripts/attack/inflight.py --bin /work/baseline/relaybox
  tests/.venv/bin/python scripts/attack/inflight.py --bin target/release/relaybox
  tests/.venv/bin/python scripts/attack/inflight.py --bin target/release/relaybox --outgoing
"""

from __future__ import annotations

import argparse
import base64
import imaplib
import re
import secrets
import smtplib
import threading
import time

from _relay import Relay, insecure


BOUNDARY = "relaybox-7f3a9c1e5b"
# Settings for --outgoing: one user sends all messages; the remote recipient's ports refuse.
OUTGOING_SETTINGS = """max_user_send_per_minute = 10000
max_user_send_burst_size = 10000
allowed_destination_networks = ["127.0.0.0/8"]
outbound_smtp_port = 1
outbound_https_port = 1
"""


def armored() -> str:
    """An armored PKESK + SEIPD payload: the shape the encryption gate accepts."""
    def packet(tag: int, body: bytes) -> bytes:
        return bytes([0xC0 | tag, 255]) + len(body).to_bytes(4, "big") + body
    b64 = base64.b64encode(packet(1, bytes([3] * 40)) + packet(18, bytes([1] * 200))).decode()
    lines = "\r\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    return f"-----BEGIN PGP MESSAGE-----\r\n\r\n{lines}\r\n=AAAA\r\n-----END PGP MESSAGE-----\r\n"


def encrypted_tail() -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
            f"--{BOUNDARY}\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\r\n"
            f"{armored()}\r\n--{BOUNDARY}--\r\n").encode()


def sender(relay: Relay, rcpts: list, size: int, held: threading.Barrier, finish: threading.Event,
           out: list, i: int, login: tuple | None) -> None:
    try:
        if login:
            s = smtplib.SMTP_SSL(relay.ip, relay.port("submissions"), timeout=120,
                                 context=insecure())
            s.ehlo("client.example.org")
            s.login(*login)
            frm = login[0]
            head = (f"From: <{frm}>\r\nTo: <{rcpts[0]}>\r\nSubject: [...]\r\nX-Mailer: m\r\n"
                    f"MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; "
                    f"protocol=\"application/pgp-encrypted\"; boundary=\"{BOUNDARY}\"\r\n\r\n")
            tail = b"\r\n" + encrypted_tail()
        else:
            s = smtplib.SMTP(relay.ip, relay.port("smtp"), timeout=120)
            s.ehlo("mx.example.org")
            s.starttls(context=insecure())
            s.ehlo("mx.example.org")
            frm = f"sender{i}@example.org"
            head = f"From: <{frm}>\r\nTo: <{rcpts[0]}>\r\nSubject: [...]\r\n\r\n"
            tail = b"\r\n"
        s.mail(frm)
        for rcpt in rcpts:
            code, _ = s.rcpt(rcpt)
            if code != 250:
                out[i] = f"rcpt {code}"
                return
        code, _ = s.docmd("DATA")
        if code != 354:
            out[i] = f"data {code}"
            return
        line = b"x" * 998 + b"\r\n"
        chunk = line * 64
        sent = 0
        sock = s.sock
        sock.sendall(head.encode())
        while sent < size:
            sock.sendall(chunk)
            sent += len(chunk)
        held.wait(timeout=300)
        finish.wait(timeout=300)
        sock.sendall(tail + b".\r\n")
        code, _msg = s.getreply()
        # Without the queue id, so that equal replies count together.
        out[i] = re.sub(r"queued as \d+", "queued", f"{code} {_msg.decode(errors='replace')[:60]}")
        s.close()
    except Exception as e:  # noqa: BLE001 - the summary counts failures
        out[i] = type(e).__name__
        try:
            held.abort()
        except Exception:  # noqa: BLE001
            pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--senders", type=int, default=20)
    ap.add_argument("--size-mb", type=int, default=25)
    ap.add_argument("--hold", type=float, default=3.0, help="seconds to hold the bodies")
    ap.add_argument("--outgoing", action="store_true",
                    help="submit on 465 as a logged-in user, to a local and a remote recipient")
    ap.add_argument("--local-only", action="store_true",
                    help="with --outgoing: no remote recipient (no signed copy, no queue attempt)")
    args = ap.parse_args()
    relay = Relay(args.bin, settings=OUTGOING_SETTINGS if args.outgoing else "")
    try:
        def account() -> tuple:
            user = f"{secrets.token_hex(5)[:9]}@[{relay.ip}]"  # usernames are 9 characters
            password = secrets.token_hex(10)
            im = imaplib.IMAP4_SSL(relay.ip, relay.port("imaps"), ssl_context=insecure(), timeout=30)
            im.login(user, password)  # creates the account
            im.logout()
            return user, password
        user, _ = account()
        rcpts = [user]
        login = None
        if args.outgoing:
            login = account()
            rcpts = [user] if args.local_only else [user, "remote@[127.0.0.254]"]
        time.sleep(0.5)
        before = relay.status("VmRSS")
        anon_peak = [relay.status("RssAnon")]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                anon_peak[0] = max(anon_peak[0], relay.status("RssAnon"))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        held = threading.Barrier(args.senders + 1)
        finish = threading.Event()
        out: list = [None] * args.senders
        threads = [threading.Thread(target=sender, daemon=True,
                                    args=(relay, rcpts, args.size_mb << 20, held, finish, out, i, login))
                   for i in range(args.senders)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        try:
            held.wait(timeout=300)
        except threading.BrokenBarrierError:
            pass
        sent_s = time.monotonic() - t0
        time.sleep(args.hold)
        during = relay.status("VmRSS")
        finish.set()
        for t in threads:
            t.join(timeout=120)
        peak = relay.status("VmHWM")
        sampling.set()
        sampler.join(timeout=5)
        codes: dict = {}
        for c in out:
            codes[c] = codes.get(c, 0) + 1
        mode = ("outgoing-local" if args.local_only else "outgoing") if args.outgoing else "incoming"
        print(f"inflight: {mode} senders={args.senders} size={args.size_mb}MB "
              f"rss_before={before // 1024}MB rss_held={during // 1024}MB "
              f"rss_peak={peak // 1024}MB anon_peak={anon_peak[0] // 1024}MB growth={(during - before) // 1024}MB "
              f"send_time={sent_s:.1f}s replies={codes}")
    finally:
        relay.stop()


if __name__ == "__main__":
    main()
