#!/usr/bin/env python3
"""Items 2/5/8 of issue 14: connection floods.

Opens plain IMAP (143) connections from one address until the relay turns them away (or
--max is reached), then checks that SMTP (25) still greets and HTTP (80) still answers while
the flood holds. With --nofile the relay runs under `prlimit --nofile=N:N`, so the flood can
reach the descriptor limit. With --per-ip (new build only: the baseline refuses unknown keys)
loopback is not exempt from the per-address caps, and the IMAP count shows that cap.
Bounded: at most --max connections, each step with a short timeout, loopback only.

  tests/.venv/bin/python scripts/attack/conn_flood.py --bin /work/baseline/relaybox --nofile 256
  tests/.venv/bin/python scripts/attack/conn_flood.py --bin target/release/relaybox --nofile 256
  tests/.venv/bin/python scripts/attack/conn_flood.py --bin target/release/relaybox --per-ip
"""

from __future__ import annotations

import argparse
import socket
import time

from _relay import Relay


def greeting(ip: str, port: int, timeout: float = 3.0) -> str:
    """The first line the server sends, '' if none in time, 'closed' if it hung up."""
    s = socket.create_connection((ip, port), timeout=timeout)
    try:
        data = b""
        while b"\n" not in data:
            got = s.recv(512)
            if not got:
                return data.decode(errors="replace").strip() or "closed"
            data += got
        return data.split(b"\n")[0].decode(errors="replace").strip()
    except OSError:
        return ""
    finally:
        s.close()


def http_ok(ip: str, port: int) -> bool:
    try:
        s = socket.create_connection((ip, port), timeout=3)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return s.recv(64).startswith(b"HTTP/1.1")
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--nofile", type=int, default=0)
    ap.add_argument("--max", type=int, default=1500)
    ap.add_argument("--per-ip", action="store_true")
    args = ap.parse_args()
    settings = "conn_limits_exempt_loopback = false\n" if args.per_ip else ""
    relay = Relay(args.bin, nofile=args.nofile or None, settings=settings)
    held: list[socket.socket] = []
    try:
        fds_before = relay.fds()
        opened = refused = silent = 0
        t0 = time.monotonic()
        for _ in range(args.max):
            try:
                s = socket.create_connection((relay.ip, relay.port("imap")), timeout=2)
            except OSError:
                refused += 1
                break
            try:
                line = s.recv(256)
            except OSError:
                line = b""
            if line.startswith(b"* OK"):
                held.append(s)
                opened += 1
                continue
            s.close()
            if line.startswith(b"* BYE") or line == b"":
                if line == b"":
                    silent += 1
                refused += 1
                break
        flood_s = time.monotonic() - t0
        smtp = greeting(relay.ip, relay.port("smtp"))
        http = http_ok(relay.ip, relay.port("http"))
        imap_extra = greeting(relay.ip, relay.port("imap"))
        print(f"conn_flood: nofile={args.nofile or 'default'} per_ip={args.per_ip} "
              f"imap_open={opened} stopped_by={'bye' if refused and not silent else 'silence' if silent else 'max'} "
              f"relay_fds={fds_before}->{relay.fds()} flood_time={flood_s:.1f}s "
              f"smtp25_greets={smtp.startswith('220')} http80_answers={http} "
              f"next_imap={imap_extra[:40]!r} alive={relay.proc.poll() is None}")
    finally:
        for s in held:
            s.close()
        relay.stop()


if __name__ == "__main__":
    main()
