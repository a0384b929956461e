"""Shared by imap_seqset.py and imap_search.py: start `relaybox dev` on a loopback address with
its data in a temporary directory (on /dev/shm when there is one, so filling is not fsync-bound),
log in over IMAPS, fill INBOX by pipelined APPENDs, sample the relay's RSS. Loopback only."""
import os
import random
import resource
import shutil
import signal
import ssl
import string
import subprocess
import tempfile
import threading
import time


def rss_kib(pid, key="VmRSS:"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


class Relay:
    def __init__(self, binary, ip, port_offset):
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.data = tempfile.mkdtemp(prefix="relaybox-attack-", dir=base)
        self.ip = ip
        self.port = 993 + port_offset
        cmd = [binary, "dev", "--ip", ip, "--data", self.data, "--port-offset", str(port_offset)]
        env = dict(os.environ, RUST_LOG="warn,relaybox::server=info")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stderr.readline().decode(errors="replace")
            if "all listeners up" in line:
                break
            if not line and self.proc.poll() is not None:
                raise RuntimeError("relaybox exited before listening")
        else:
            raise RuntimeError("relaybox did not start")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.data, ignore_errors=True)

    def rss(self):
        return rss_kib(self.proc.pid)


class RssSampler:
    """Peak VmRSS of a process, sampled every 5 ms while active."""

    def __init__(self, pid):
        self.pid, self.peak, self.run = pid, 0, True
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def _loop(self):
        while self.run:
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.005)

    def stop(self):
        self.run = False
        self.t.join()
        return self.peak


def creds(domain):
    local = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(9))
    pw = "".join(random.choice(string.ascii_letters + string.digits) for _ in range(14))
    return f"{local}@{domain}", pw


def tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Imap:
    """A minimal blocking IMAPS client with a socket timeout (every wait is bounded)."""

    def __init__(self, ip, port, timeout=120):
        import socket

        raw = socket.create_connection((ip, port), timeout=timeout)
        self.s = tls_ctx().wrap_socket(raw)
        self.f = self.s.makefile("rb")
        self.greeting = self.f.readline()

    def send(self, data):
        self.s.sendall(data)

    def until(self, tag):
        """Reads responses up to the tagged one; returns (number of untagged lines, tagged line)."""
        n = 0
        t = tag.encode() + b" "
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("connection closed")
            if line.startswith(t):
                return n, line.decode(errors="replace").strip()
            n += 1

    def cmd(self, tag, text):
        self.send(f"{tag} {text}\r\n".encode())
        return self.until(tag)

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def login_and_fill(relay, count, body, batch=200):
    """A new account (created by its first LOGIN) with `count` copies of a message whose body
    is `body`, APPENDed with LITERAL+ in pipelined batches. Returns (user, password)."""
    user, pw = creds(f"[{relay.ip}]")
    c = Imap(relay.ip, relay.port)
    _, r = c.cmd("l", f'LOGIN "{user}" "{pw}"')
    if " OK" not in r:
        raise RuntimeError(f"login failed: {r}")
    done = 0
    while done < count:
        n = min(batch, count - done)
        out = bytearray()
        for i in range(n):
            msg = (f"From: {user}\r\nTo: {user}\r\nSubject: m{done + i}\r\n"
                   f"Message-ID: <m{done + i}@x>\r\n\r\n").encode() + body + b"\r\n"
            out += f"a{i} APPEND INBOX {{{len(msg)}+}}\r\n".encode() + msg + b"\r\n"
        c.send(bytes(out))
        for i in range(n):
            _, r = c.until(f"a{i}")
            if " OK" not in r:
                raise RuntimeError(f"APPEND failed: {r}")
        done += n
    c.close()
    return user, pw
