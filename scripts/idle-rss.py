#!/usr/bin/env python3
"""Measures relaybox's memory with many idle IMAP IDLE clients.

Starts `relaybox dev` on a spare loopback address, creates N accounts' worth of connections
(each logs in over IMAPS, selects INBOX and enters IDLE), then reads the relay's RSS from
/proc. Prints one JSON line: RSS idle, RSS with N IDLE clients, bytes per connection.

    scripts/idle-rss.py --bin target/release/relaybox --clients 1000

Traffic goes only to the loopback address it started the relay on.
"""
import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import ssl
import string
import subprocess
import sys
import tempfile
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def creds(domain):
    local = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(9))
    pw = "".join(random.choice(string.ascii_letters + string.digits) for _ in range(14))
    return f"{local}@{domain}", pw


async def idle_client(host, port, ctx, user, pw, ready, stop):
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    await reader.readline()
    writer.write(f'a LOGIN "{user}" "{pw}"\r\n'.encode())
    while True:
        line = await reader.readline()
        if not line:
            raise RuntimeError("connection closed during login")
        if line.startswith(b"a "):
            if not line.startswith(b"a OK"):
                raise RuntimeError(f"login failed: {line!r}")
            break
    writer.write(b"b SELECT INBOX\r\n")
    while not (await reader.readline()).startswith(b"b "):
        pass
    writer.write(b"c IDLE\r\n")
    line = await reader.readline()
    if not line.startswith(b"+"):
        raise RuntimeError(f"IDLE refused: {line!r}")
    ready.release()
    await stop.wait()
    writer.write(b"DONE\r\n")
    writer.close()


async def run(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.clients * 2 + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    data = tempfile.mkdtemp(prefix="relaybox-rss-")
    ip = args.ip
    cmd = [args.bin, "dev", "--ip", ip, "--data", data, "--port-offset", str(args.port_offset)]
    env = dict(os.environ, RUST_LOG="warn,relaybox::server=info")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (want, want)),
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            line = proc.stderr.readline().decode(errors="replace")
            if "all listeners up" in line:
                break
            if not line and proc.poll() is not None:
                raise RuntimeError("relaybox exited before listening")
        else:
            raise RuntimeError("relaybox did not start")
        # Keep draining stderr so the relay never blocks on a full pipe.
        asyncio.get_running_loop().run_in_executor(None, lambda: proc.stderr.read())
        await asyncio.sleep(1)
        idle = rss_kib(proc.pid)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ready = asyncio.Semaphore(0)
        stop = asyncio.Event()
        domain = f"[{ip}]"
        port = 993 + args.port_offset
        tasks = []
        for i in range(args.clients):
            user, pw = creds(domain)
            tasks.append(asyncio.create_task(idle_client(ip, port, ctx, user, pw, ready, stop)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)
        started = time.time()
        for _ in range(args.clients):
            await asyncio.wait_for(ready.acquire(), timeout=max(5, 300 - (time.time() - started)))
        await asyncio.sleep(2)
        loaded = rss_kib(proc.pid)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        result = {
            "clients": args.clients,
            "rss_idle_kib": idle,
            "rss_with_idle_clients_kib": loaded,
            "bytes_per_idle_connection": round((loaded - idle) * 1024 / args.clients),
        }
        print(json.dumps(result))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/relaybox")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--ip", default="127.0.0.9")
    ap.add_argument("--port-offset", type=int, default=20000)
    args = ap.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
