"""Starts one `relaybox dev` on a spare loopback address for the attack scripts (stdlib only).

Loopback only, and always stopped (SIGTERM, then SIGKILL) when the script ends.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
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


class Relay:
    def __init__(self, binary: str, nofile: int | None = None, settings: str = ""):
        rng = random.Random()
        for _ in range(200):
            self.ip = f"127.0.0.{rng.randint(2, 250)}"
            self.offset = rng.randrange(20000, 56000, 10)
            if _free(self.ip, self.offset):
                break
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
