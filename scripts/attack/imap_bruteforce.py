#!/usr/bin/env python3
"""Wrong-password attempts per second on IMAPS from one client address (issue 14 item 6).

Starts `relaybox dev` on a loopback address, creates one account, then for --seconds runs
--conns parallel connections from 127.0.0.1, each sending `LOGIN <account> <wrong password>`
as fast as the answers come (reconnecting when the server says BYE), and prints one line:

  imap-bruteforce: <answers>/s answers, <checked>/s passwords checked, owner login from a clean
  address <ms> ms

"passwords checked" are the AUTHENTICATIONFAILED answers; answers that refused the attempt
without checking it (NO [UNAVAILABLE]) are counted in answers only. At the end the account's
real password is tried from another loopback address (127.0.0.2 as the client address).

Loopback only, bounded by --seconds and --max-attempts; stops the relay it started.

  tests/.venv/bin/python scripts/attack/imap_bruteforce.py --bin target/release/relaybox
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time


def ctx() -> ssl.SSLContext:
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


class Imap:
    def __init__(self, ip: str, port: int, src: str = "127.0.0.1"):
        raw = socket.create_connection((ip, port), timeout=60, source_address=(src, 0))
        self.s = ctx().wrap_socket(raw)
        self.f = self.s.makefile("rb")
        self.n = 0
        self.f.readline()  # greeting

    def login(self, user: str, pw: str) -> bytes:
        self.n += 1
        tag = f"a{self.n}".encode()
        self.s.sendall(tag + b" LOGIN " + user.encode() + b' "' + pw.encode() + b'"\r\n')
        while True:
            line = self.f.readline()
            if not line:
                raise ConnectionError("closed")
            if line.startswith(tag + b" "):
                return line

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def wait_port(ip: str, port: int, deadline: float):
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"relay did not listen on {ip}:{port}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--ip", default="127.0.0.61")
    ap.add_argument("--offset", type=int, default=23000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--max-attempts", type=int, default=50000)
    a = ap.parse_args()

    data = tempfile.mkdtemp(prefix="imap-bf-")
    port = 993 + a.offset
    log = open(f"{data}.log", "wb")
    relay = subprocess.Popen([a.bin, "dev", "--ip", a.ip, "--data", f"{data}/d", "--port-offset", str(a.offset)],
                             stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(a.ip, port, time.monotonic() + 30)
        user, pw = f"bruteacct@[{a.ip}]", "rightpassword1"
        c = Imap(a.ip, port)
        assert b"OK" in c.login(user, pw), "account creation failed"
        c.close()

        counts = {"answers": 0, "checked": 0}
        lock = threading.Lock()
        stop = time.monotonic() + a.seconds

        def worker():
            conn = None
            while time.monotonic() < stop:
                with lock:
                    if counts["answers"] >= a.max_attempts:
                        return
                try:
                    if conn is None:
                        conn = Imap(a.ip, port)
                    r = conn.login(user, "wrongpassword")
                except (OSError, ConnectionError):
                    if conn:
                        conn.close()
                    conn = None
                    continue
                if time.monotonic() > stop:
                    break
                with lock:
                    counts["answers"] += 1
                    if b"AUTHENTICATIONFAILED" in r:
                        counts["checked"] += 1
            if conn:
                conn.close()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=a.seconds + 90)
        elapsed = a.seconds
        t1 = time.monotonic()
        c = Imap(a.ip, port, src="127.0.0.2")
        owner = c.login(user, pw)
        owner_ms = (time.monotonic() - t1) * 1000
        c.close()
        print(f"imap-bruteforce: {counts['answers'] / elapsed:.1f}/s answers, "
              f"{counts['checked'] / elapsed:.1f}/s passwords checked "
              f"({counts['checked']} in {elapsed:.0f} s, {a.conns} connections), "
              f"owner login from a clean address {'OK' if b' OK' in owner else 'FAILED'} in {owner_ms:.0f} ms")
    finally:
        relay.terminate()
        try:
            relay.wait(timeout=20)
        except subprocess.TimeoutExpired:
            relay.kill()
        log.close()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
