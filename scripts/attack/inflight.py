#!/usr/bin/env python3
"""Item 5 of issue 14: memory held by message bodies in flight.

N senders on port 25 (STARTTLS) each send SIZE MB of DATA to one local account without ending
it, hold it, then end it. Prints the relay's RSS before, while the bodies are held, and its peak
(VmHWM), the peak of its anonymous memory (RssAnon, sampled every 20 ms: heap and stacks, without
the page cache a mapped spool file shows in VmHWM), plus the final replies. Bounded: N connections, at most --timeout seconds, loopback only.

  tests/.venv/bin/python scripts/attack/inflight.py --bin /work/baseline/relaybox
  tests/.venv/bin/python scripts/attack/inflight.py --bin target/release/relaybox
"""

from __future__ import annotations

import argparse
import imaplib
import secrets
import smtplib
import threading
import time

from _relay import Relay, insecure


def sender(relay: Relay, rcpt: str, size: int, held: threading.Barrier, finish: threading.Event,
           out: list, i: int) -> None:
    try:
        s = smtplib.SMTP(relay.ip, relay.port("smtp"), timeout=120)
        s.ehlo("mx.example.org")
        s.starttls(context=insecure())
        s.ehlo("mx.example.org")
        s.mail(f"sender{i}@example.org")
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
        sock.sendall(f"From: <sender{i}@example.org>\r\nTo: <{rcpt}>\r\nSubject: [...]\r\n\r\n".encode())
        while sent < size:
            sock.sendall(chunk)
            sent += len(chunk)
        held.wait(timeout=300)
        finish.wait(timeout=300)
        sock.sendall(b"\r\n.\r\n")
        code, _msg = s.getreply()
        out[i] = f"{code} {_msg.decode(errors='replace')[:60]}"
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
    args = ap.parse_args()
    relay = Relay(args.bin)
    try:
        user = f"{secrets.token_hex(5)[:9]}@[{relay.ip}]"  # usernames are 9 characters
        im = imaplib.IMAP4_SSL(relay.ip, relay.port("imaps"), ssl_context=insecure(), timeout=30)
        im.login(user, secrets.token_hex(10))  # creates the account
        im.logout()
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
                                    args=(relay, user, args.size_mb << 20, held, finish, out, i))
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
        print(f"inflight: senders={args.senders} size={args.size_mb}MB "
              f"rss_before={before // 1024}MB rss_held={during // 1024}MB "
              f"rss_peak={peak // 1024}MB anon_peak={anon_peak[0] // 1024}MB growth={(during - before) // 1024}MB "
              f"send_time={sent_s:.1f}s replies={codes}")
    finally:
        relay.stop()


if __name__ == "__main__":
    main()
