"""Starts one `relaybox dev` on a spare loopback address for the attack scripts (stdlib only).

Loopback only, and always stopped (SIGTERM, then SIGKILL) when the script ends.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

PORTS = {"smtp": 25, "http": 80, "imap": 143, "https": 443, "submissions": 465,
         "submission": 587, "imaps": 993, "metrics": 9464}


def _free(ip: str, offset: int) -> bool:
    for p in PORTS.values():
        s = socket.socket()
        try:
            s.bind((ip, p + offset))
        except OSError:
            return False
        finally:
            s.close()
    return True


# For the benchmark scripts that drive the relay with loadgen: no rate, load or space limit may
# refuse the load (as scripts/bench/run.sh configures it).
LOADGEN_SETTINGS = """max_user_send_per_minute = 10000000
max_user_send_burst_size = 10000000
max_load_1m = 1000.0
max_new_accounts_per_ip_per_hour = 0
min_available_memory = "1M"
min_free_disk_space = "1M"
"""


def pick_address() -> tuple[str, int]:
    """A loopback address and port offset where every relay port is free."""
    rng = random.Random()
    for _ in range(200):
        ip, offset = f"127.0.0.{rng.randint(2, 250)}", rng.randrange(20000, 56000, 10)
        if _free(ip, offset):
            break
    return ip, offset


class Relay:
    def __init__(self, binary: str, nofile: int | None = None, settings: str = ""):
        self.ip, self.offset = pick_address()
        self.dir = Path(tempfile.mkdtemp(prefix="relaybox-attack-"))
        (self.dir / "data").mkdir()
        if settings:
            (self.dir / "data" / "settings.toml").write_text(settings)
        cmd = [binary, "dev", "--ip", self.ip, "--data", str(self.dir / "data"),
               "--port-offset", str(self.offset)]
        if nofile:
            cmd = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] + cmd
        env = dict(os.environ, RUST_LOG="warn,relaybox=info", NO_COLOR="1")
        self.err = open(self.dir / "stderr.log", "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.err, env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while b"all listeners up" not in (self.dir / "stderr.log").read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("relay did not start:\n" + (self.dir / "stderr.log").read_text()[-3000:])
            time.sleep(0.05)

    def port(self, service: str) -> int:
        return PORTS[service] + self.offset

    def status(self, field: str) -> int:
        """A /proc/PID/status field in kB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return -1

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def padded(msg: bytes, size: int) -> bytes:
    """`msg` with filler lines put in front of its body until it is about `size` bytes."""
    filler = (b"y" * 78 + b"\r\n") * max(0, (size - len(msg)) // 80)
    head, body = msg.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n" + filler + body


def mx_connection(relay: Relay) -> smtplib.SMTP:
    """An SMTP connection to the relay's port 25 after STARTTLS, as another relay would open it."""
    s = smtplib.SMTP(relay.ip, relay.port("smtp"), timeout=60, source_address=("127.0.0.1", 0))
    s.ehlo("mx.example.org")
    s.starttls(context=insecure())
    s.ehlo("mx.example.org")
    return s
