"""Federation test harness: a private CA, a real dnsmasq on loopback, relaybox instances run with
`relaybox serve --config`, a tiny DNS client, a DKIM signer (for forged and control signatures),
and a private Postfix + OpenDKIM instance.

Everything here is started by the tests and stopped by them; every wait has a deadline.

Layout of a named federation (see `Federation`):
  a.test  relaybox on 127.0.0.2, MX a.test (the records `relaybox dns` prints), cert from the CA
  b.test  relaybox on 127.0.0.3, the same
  c.test  Postfix + OpenDKIM on 127.0.0.4 (MX mx.c.test), only in the interop module
All relays use the same port offset N (every service on its standard port + N) and
`outbound_smtp_port = 25 + N`, `outbound_https_port = 443 + N`, so they reach each other without
root ports and without colliding with anything else on the machine.
"""

from __future__ import annotations

import base64
import email
import hashlib
import imaplib
import os
import pwd
import random
import re
import shutil
import signal
import smtplib
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conftest  # noqa: E402
import mailhelpers  # noqa: E402
from conftest import PORTS, RELAYBOX_BIN, Relay  # noqa: E402

IN_CI = os.environ.get("CI") == "true"


def tail(text: str, n: int = 4000) -> str:
    return text[-n:] if len(text) > n else text


def fh_tail(text: str) -> str:
    return tail(text, 3000)


def need_binary(path: str, package: str) -> str:
    """The absolute path of a system binary; missing: fail under CI=true, else skip."""
    p = shutil.which(path) or next(
        (str(Path(d) / path) for d in ("/usr/sbin", "/sbin", "/usr/bin") if (Path(d) / path).exists()), None
    )
    if p:
        return p
    msg = f"{path} not found (Debian package {package}; `scripts/test.sh setup` installs it)"
    if IN_CI:
        pytest.fail(msg + " -- under CI=true a missing tool is a failure", pytrace=False)
    pytest.skip(msg)


def run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)
    if p.returncode != 0:
        raise AssertionError(
            f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{p.stdout.decode(errors='replace')[-3000:]}\n"
            f"--- stderr ---\n{p.stderr.decode(errors='replace')[-3000:]}"
        )
    return p


# ------------------------------------------------------------------------------------------------
# Ports
# ------------------------------------------------------------------------------------------------


def _tcp_free(ip: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_offset(ips: list[str]) -> int:
    """A port offset N such that every relay port + N is free on all of `ips`."""
    rng = random.Random()
    # the highest service port (metrics, 9464) + N must stay a valid port
    top = 65535 - max(PORTS.values())
    for _ in range(300):
        offset = rng.randrange(20000, top, 10)
        if all(_tcp_free(ip, p + offset) for ip in ips for p in PORTS.values()):
            return offset
    raise RuntimeError(f"no port offset free on all of {ips}")


def free_udp_tcp_port(ip: str) -> int:
    while True:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((ip, 0))
        port = u.getsockname()[1]
        ok = _tcp_free(ip, port)
        u.close()
        if ok:
            return port


def wait_tcp(ip: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} does not accept connections on {ip}:{port} after {timeout}s: {e}")
            time.sleep(0.05)


# ------------------------------------------------------------------------------------------------
# Private CA (openssl CLI)
# ------------------------------------------------------------------------------------------------


class CA:
    """A private certificate authority made in the test; issues server certificates."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = self.dir / "ca.key"
        self.cert = self.dir / "ca.pem"
        ext = self.dir / "ca.ext"
        ext.write_text(
            "[req]\ndistinguished_name=dn\n[dn]\n[v3_ca]\n"
            "basicConstraints=critical,CA:TRUE\n"
            "keyUsage=critical,keyCertSign,cRLSign\n"
            "subjectKeyIdentifier=hash\n"
        )
        run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(self.key)])
        run([
            "openssl", "req", "-x509", "-new", "-key", str(self.key), "-sha256", "-days", "30",
            "-subj", "/CN=relaybox federation test CA", "-config", str(ext), "-extensions", "v3_ca",
            "-out", str(self.cert),
        ])

    def issue(self, name: str, dns_names: list[str], ips: list[str] = ()) -> tuple[Path, Path]:
        """(fullchain PEM, key PEM) for a server certificate with these SANs."""
        key = self.dir / f"{name}.key"
        csr = self.dir / f"{name}.csr"
        crt = self.dir / f"{name}.crt"
        chain = self.dir / f"{name}.fullchain.pem"
        ext = self.dir / f"{name}.ext"
        sans = ",".join([f"DNS:{d}" for d in dns_names] + [f"IP:{i}" for i in ips])
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            f"subjectAltName={sans}\n"
            "authorityKeyIdentifier=keyid\n"
        )
        run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)])
        # PKCS#8 is what every consumer (rustls, Postfix) reads
        run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", str(key), "-out", str(key) + ".p8"])
        os.replace(str(key) + ".p8", key)
        run(["openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={dns_names[0] if dns_names else ips[0]}",
             "-out", str(csr)])
        run([
            "openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-days", "30", "-sha256", "-extfile", str(ext), "-out", str(crt),
        ])
        chain.write_bytes(crt.read_bytes() + self.cert.read_bytes())
        key.chmod(0o644)  # Postfix/OpenDKIM run as their own users in the interop test
        return chain, key

    def client_context(self) -> ssl.SSLContext:
        """A verifying TLS client context that trusts only this CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.cert))
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


# ------------------------------------------------------------------------------------------------
# dnsmasq
# ------------------------------------------------------------------------------------------------


def zone_to_dnsmasq(zone_text: str) -> list[str]:
    """dnsmasq options for the MX, TXT, CNAME and SRV lines of `relaybox dns` output.
    (A/AAAA come from the harness, which knows the loopback addresses; CAA is not needed.)"""
    out = []
    for line in zone_text.splitlines():
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        m = re.match(r"^(\S+)\s+(\d+)\s+IN\s+(\S+)\s+(.*)$", line)
        if not m:
            continue
        name, _ttl, typ, data = m.groups()
        name = name.rstrip(".")
        if typ == "MX":
            pref, host = data.split()
            out.append(f"--mx-host={name},{host.rstrip('.')},{pref}")
        elif typ == "TXT":
            strings = re.findall(r'"((?:[^"\\]|\\.)*)"', data)
            # one TXT record whose strings are joined (dnsmasq splits >255 again on the wire)
            value = "".join(strings)
            assert "," not in value, f"TXT value with a comma cannot be given to dnsmasq: {value}"
            out.append(f"--txt-record={name},{value}")
        elif typ == "CNAME":
            out.append(f"--cname={name},{data.rstrip('.')}")
        elif typ == "SRV":
            prio, weight, port, target = data.split()
            out.append(f"--srv-host={name},{target.rstrip('.')},{port},{prio},{weight}")
    return out


class Dnsmasq:
    """A real dnsmasq on loopback answering `.test` from its command line only."""

    def __init__(self, workdir: Path, ip: str = "127.0.0.1"):
        self.bin = need_binary("dnsmasq", "dnsmasq-base")
        self.ip = ip
        self.port = free_udp_tcp_port(ip)
        self.workdir = workdir
        self.log_path = workdir / "dnsmasq.log"
        self.proc: subprocess.Popen | None = None
        self.records: list[str] = []

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    def start(self, records: list[str]) -> None:
        self.records = list(records)
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.bin, "--no-daemon", "--conf-file=/dev/null", "--pid-file=", "--no-resolv", "--no-hosts",
            "--bind-interfaces", "--local=/test/", "--log-queries", f"--log-facility={self.log_path}",
            "--user=root", f"--listen-address={self.ip}", f"--port={self.port}", *self.records,
        ]
        (self.workdir / "dnsmasq.command.txt").write_text(" ".join(cmd) + "\n")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "dnsmasq.stderr.log", "wb"), start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"dnsmasq exited with {self.proc.returncode}: "
                                     f"{(self.workdir / 'dnsmasq.stderr.log').read_text(errors='replace')}")
            try:
                socket.create_connection((self.ip, self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"dnsmasq did not listen on {self.addr} within 10 s")
                time.sleep(0.05)

    def restart(self, records: list[str]) -> None:
        self.stop()
        self.start(records)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


# --- a tiny DNS client (stdlib), to check what dnsmasq serves -----------------------------------

QTYPES = {"A": 1, "MX": 15, "TXT": 16, "CNAME": 5, "AAAA": 28}


def _qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"


def _read_name(msg: bytes, off: int) -> tuple[str, int]:
    labels, jumped, end = [], False, off
    while True:
        ln = msg[off]
        if ln & 0xC0 == 0xC0:
            ptr = struct.unpack(">H", msg[off:off + 2])[0] & 0x3FFF
            if not jumped:
                end = off + 2
            jumped, off = True, ptr
            continue
        if ln == 0:
            if not jumped:
                end = off + 1
            return ".".join(labels), end
        labels.append(msg[off + 1:off + 1 + ln].decode())
        off += 1 + ln


def dns_query(server: tuple[str, int], name: str, qtype: str, timeout: float = 3) -> tuple[int, list]:
    """(rcode, answers) for one UDP query; answers are parsed for A, MX, TXT, CNAME."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _qname(name) + struct.pack(">HH", QTYPES[qtype], 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, server)
        msg, _ = s.recvfrom(65535)
    finally:
        s.close()
    _id, flags, qd, an, _ns, _ar = struct.unpack(">HHHHHH", msg[:12])
    if flags & 0x0200:
        # truncated: ask over TCP
        t = socket.create_connection(server, timeout=timeout)
        try:
            t.sendall(struct.pack(">H", len(q)) + q)
            ln = struct.unpack(">H", t.recv(2))[0]
            msg = b""
            while len(msg) < ln:
                msg += t.recv(ln - len(msg))
        finally:
            t.close()
        _id, flags, qd, an, _ns, _ar = struct.unpack(">HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        _, off = _read_name(msg, off)
        off += 4
    answers = []
    for _ in range(an):
        _, off = _read_name(msg, off)
        typ, _cls, _ttl, rdlen = struct.unpack(">HHIH", msg[off:off + 10])
        off += 10
        rdata = msg[off:off + rdlen]
        if typ == 1:
            answers.append(("A", socket.inet_ntoa(rdata)))
        elif typ == 15:
            pref = struct.unpack(">H", rdata[:2])[0]
            host, _ = _read_name(msg, off + 2)
            answers.append(("MX", pref, host))
        elif typ == 16:
            parts, i = [], 0
            while i < len(rdata):
                ln = rdata[i]
                parts.append(rdata[i + 1:i + 1 + ln].decode())
                i += 1 + ln
            answers.append(("TXT", "".join(parts)))
        elif typ == 5:
            answers.append(("CNAME", _read_name(msg, off)[0]))
        off += rdlen
    return flags & 0xF, answers


# ------------------------------------------------------------------------------------------------
# DKIM signing (relaxed/simple, rsa-sha256) with the openssl CLI, for forged and control mail
# ------------------------------------------------------------------------------------------------


def _relaxed_header(name: str, value: str) -> str:
    value = re.sub(r"\r\n(?=[ \t])", "", value)
    value = re.sub(r"[ \t]+", " ", value).strip()
    return f"{name.lower().strip()}:{value}"


def _split_headers(raw: bytes) -> tuple[list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    fields: list[tuple[str, str]] = []
    for line in head.decode("utf-8").split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            n, v = fields[-1]
            fields[-1] = (n, v + "\r\n" + line)
        else:
            n, _, v = line.partition(":")
            fields.append((n, v))
    return fields, body


def dkim_sign(raw: bytes, domain: str, selector: str, key_pem: Path,
              sign_headers=("from", "to", "subject", "date", "message-id", "mime-version", "content-type")) -> bytes:
    """`raw` with a DKIM-Signature (c=relaxed/simple, a=rsa-sha256, d=domain, s=selector) made
    with the RSA key `key_pem` prepended."""
    fields, body = _split_headers(raw)
    # simple body canonicalization: drop trailing empty lines, keep one CRLF
    while body.endswith(b"\r\n\r\n"):
        body = body[:-2]
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    bh = base64.b64encode(hashlib.sha256(body).digest()).decode()
    present = {n.strip().lower(): v for n, v in fields}
    signed = [h for h in sign_headers if h in present]
    sig_value = (f" v=1; a=rsa-sha256; c=relaxed/simple; d={domain}; s={selector};"
                 f" t={int(time.time())}; h={':'.join(signed)}; bh={bh}; b=")
    data = "".join(_relaxed_header(h, present[h]) + "\r\n" for h in signed)
    data += _relaxed_header("DKIM-Signature", sig_value)
    p = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key_pem)], input=data.encode(),
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    b = base64.b64encode(p.stdout).decode()
    return f"DKIM-Signature:{sig_value}{b}\r\n".encode() + raw


def rsa_key(path: Path) -> Path:
    run(["openssl", "genrsa", "-out", str(path), "2048"])
    return path


def dkim_txt_for(key_pem: Path) -> str:
    """The DKIM TXT record value (v=DKIM1; k=rsa; p=...) for an RSA key."""
    p = run(["openssl", "rsa", "-in", str(key_pem), "-pubout", "-outform", "DER"])
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(p.stdout).decode()


# ------------------------------------------------------------------------------------------------
# relaybox with a config file
# ------------------------------------------------------------------------------------------------


def _toml_list(addrs: list[str]) -> str:
    return "[" + ", ".join(f'"{a}"' for a in addrs) + "]"


class FedRelay(Relay):
    """`relaybox serve --config` on one loopback address, for federation tests.

    `domain` is a DNS name (a.test) or None for the IP literal `[ip]`. `off` names services
    whose listen list is empty (e.g. {"https"} forces senders onto SMTP). `extra` are more
    top-level config lines. stop()/kill9()/start() keep the data directory."""

    def __init__(self, name: str, workdir: Path, ip: str, offset: int, domain: str | None,
                 dns_addr: str | None, ca: CA | None, tls: tuple[Path, Path] | None = None,
                 extra: dict | None = None):
        super().__init__(name, workdir, ip=ip, offset=offset)
        self.domain = domain or f"[{ip}]"
        self.dns_addr = dns_addr
        self.ca = ca
        self.tls = tls
        self.off: set[str] = set()
        self.extra = dict(extra or {})
        self.config_path = workdir / "relaybox.toml"
        self.starts = 0

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f'mail_domain = "{self.domain}"',
            f'data_dir = "{self.data_dir}"',
            "max_load_1m = 1000.0",
            # CI disks are shared with build trees: the production 1G would refuse test accounts
            'min_free_disk_space = "64M"',
            f"outbound_smtp_port = {25 + self.offset}",
            f"outbound_https_port = {443 + self.offset}",
            # the relays of a federation test all live on 127.0.0.x, which a relay refuses as a
            # destination unless told (issue 14 item 8)
            'allowed_destination_networks = ["127.0.0.0/8"]',
            # many test accounts come from 127.0.0.1 within minutes
            "max_new_accounts_per_ip_per_hour = 0",
        ]
        if self.tls:
            lines += [f'tls_cert = "{self.tls[0]}"', f'tls_key = "{self.tls[1]}"']
        if self.ca:
            lines.append(f'outbound_ca_file = "{self.ca.cert}"')
        if self.dns_addr:
            lines.append(f'dns_servers = ["{self.dns_addr}"]')
        for k, v in self.extra.items():
            lines.append(f"{k} = {v if not isinstance(v, str) else chr(34) + v + chr(34)}")
        lines.append("")
        lines.append("[listen]")
        for svc in PORTS:
            addrs = [] if svc in self.off else [f"{self.ip}:{self.port(svc)}"]
            lines.append(f"{svc} = {_toml_list(addrs)}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [str(RELAYBOX_BIN), "serve", "--config", str(self.config_path)]

    def start(self) -> None:
        self.write_config()
        # a restart appends to the same logs, with a marker
        self.starts += 1
        if self.starts > 1:
            for p in (self.stderr_path, self.stdout_path):
                if p.exists():
                    prev = p.with_suffix(f".run{self.starts - 1}.log")
                    shutil.copy(p, prev)
        self.died = None
        super().start()

    def all_stderr(self) -> str:
        """stderr of every run of this relay (restarts included), oldest first."""
        prev = ""
        for i in range(1, self.starts):
            p = self.stderr_path.with_suffix(f".run{i}.log")
            if p.exists():
                prev += f"\n===== run {i} =====\n" + p.read_text(errors="replace")
        return prev + (f"\n===== run {self.starts} =====\n" if self.starts > 1 else "") + self.stderr()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        with open(self.stderr_path, "a") as f:
            f.write("\n[test harness] relay killed with SIGKILL\n")

    def restart(self, off: set[str] | None = None) -> None:
        self.stop()
        if off is not None:
            self.off = set(off)
        self.start()

    def ensure_dkim_key(self) -> None:
        """The relay makes its DKIM key at start once outbound signing is in; a relay that has
        not made one (today's main) gets one from openssl (PKCS#1, what opendkim-genkey writes,
        which relaybox loads), so `relaybox dns` can print the record."""
        if self.domain.startswith("["):
            return
        key = self.dkim_key()
        deadline = time.monotonic() + 0.5
        while not key.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if key.exists():
            return
        key.parent.mkdir(parents=True, exist_ok=True)
        tmp = key.with_suffix(".tmp-harness")
        run(["openssl", "genrsa", "-traditional", "-out", str(tmp), "2048"])
        try:
            os.link(tmp, key)  # never replaces a key the relay made meanwhile
        except FileExistsError:
            pass
        tmp.unlink()
        with open(self.stderr_path, "a") as f:
            f.write(f"\n[test harness] the relay made no DKIM key at start; the harness made {key}\n")

    def dns_zone(self) -> str:
        """What `relaybox dns --config` prints (the DKIM key exists once the relay has started)."""
        self.ensure_dkim_key()
        self.write_config()
        p = run([str(RELAYBOX_BIN), "dns", "--config", str(self.config_path)])
        return p.stdout.decode()

    def dkim_key(self) -> Path:
        sel = self.extra.get("dkim_selector", "opendkim")
        return self.data_dir / "dkim" / f"{sel}.key"

    def keep_logs(self, tag: str) -> Path:
        dest = super().keep_logs(tag)
        for i in range(1, self.starts):
            p = self.stderr_path.with_suffix(f".run{i}.log")
            if p.exists():
                shutil.copy(p, dest / p.name)
        if self.config_path.exists():
            shutil.copy(self.config_path, dest / "relaybox.toml")
        return dest

    def dclogin_url(self, addr: str, password: str) -> str:
        # the CA is private, so Delta Chat accepts the certificate as "invalid" (ic=3), like
        # for the dev relays; it still connects to the IP directly
        return super().dclogin_url(addr, password)

    def log_tail(self, n: int = 3000) -> str:
        return tail(self.all_stderr(), n)


class Federation:
    """dnsmasq + CA + relays. `relays` maps domain -> FedRelay."""

    def __init__(self, workdir: Path, name: str):
        self.workdir = workdir
        self.name = name
        self.ca = CA(workdir / "ca")
        self.dns = Dnsmasq(workdir / "dns")
        self.relays: dict[str, FedRelay] = {}
        self.extra_records: list[str] = []
        self.offset: int | None = None

    def add_named(self, domain: str, ip: str, extra: dict | None = None) -> FedRelay:
        tls = self.ca.issue(domain, [domain, f"mx.{domain}", f"www.{domain}", f"mta-sts.{domain}"])
        r = FedRelay(f"{self.name}-{domain}", self.workdir / domain, ip, self.offset, domain,
                     self.dns.addr, self.ca, tls, extra)
        self.relays[domain] = r
        return r

    def records(self) -> list[str]:
        recs = []
        for d, r in self.relays.items():
            if d.startswith("["):
                continue
            recs += [f"--host-record={d},{r.ip}", f"--host-record=mx.{d},{r.ip}"]
            recs += zone_to_dnsmasq(r.dns_zone())
        return recs + self.extra_records

    def start(self) -> None:
        """Start every relay (each makes its DKIM key at start), then serve their `relaybox dns`
        records (and the harness's A records) from dnsmasq."""
        for r in self.relays.values():
            r.start()
        self.dns.start(self.records())

    def reload_dns(self) -> None:
        self.dns.restart(self.records())

    def stop(self) -> None:
        for r in self.relays.values():
            try:
                r.stop()
            except Exception:
                pass
        self.dns.stop()

    def keep_logs(self, tag: str) -> None:
        for d, r in self.relays.items():
            r.keep_logs(f"{tag}-{conftest._safe(d)}")
        dest = mailhelpers.artifacts_dir() / f"relay-{tag}-dns"
        dest.mkdir(parents=True, exist_ok=True)
        for p in self.dns.workdir.glob("*"):
            shutil.copy(p, dest / p.name)


def federation_fixture(request, tmp_path_factory, build):
    """Shared body of the module-scoped federation fixtures: build(fed) adds relays."""
    name = conftest._safe(request.module.__name__)
    fed = Federation(tmp_path_factory.mktemp(f"fed-{name}"), name)
    failed_before = request.session.testsfailed
    try:
        build(fed)
        fed.start()
    except BaseException:
        fed.keep_logs(name)
        fed.stop()
        raise
    try:
        yield fed
    finally:
        died = [d for d, r in fed.relays.items() if r.proc is not None and r.proc.poll() not in (None, 0, -15)
                and not r.died]
        fed.stop()
        if died or request.session.testsfailed > failed_before:
            fed.keep_logs(name)
            sys.stderr.write(f"\n[relaybox tests] federation logs of {name} kept in {mailhelpers.ARTIFACTS}\n")


# ------------------------------------------------------------------------------------------------
# Mail over real sockets
# ------------------------------------------------------------------------------------------------


def submit(relay: FedRelay, addr: str, password: str, msgs: list[tuple[str, list[str], bytes]],
           timeout: float = 60) -> list[str]:
    """Send (from, [to], raw) messages over one authenticated submissions connection.
    Returns the problems (one per refused message); empty when all got 250."""
    problems = []
    s = smtplib.SMTP_SSL(relay.ip, relay.port("submissions"), context=mailhelpers.insecure_context(),
                         timeout=timeout)
    try:
        s.login(addr, password)
        for frm, to, raw in msgs:
            try:
                refused = s.sendmail(frm, to, raw)
                if refused:
                    problems.append(f"{to}: refused {refused}")
            except smtplib.SMTPResponseException as e:
                problems.append(f"{to}: {e.smtp_code} {e.smtp_error.decode(errors='replace')}")
                s.rset()
            except smtplib.SMTPRecipientsRefused as e:
                problems.append(f"{to}: {e.recipients}")
                s.rset()
    finally:
        try:
            s.quit()
        except Exception:
            pass
    return problems


def login_once(relay: FedRelay, addr: str, password: str) -> None:
    """Create the account (create-on-login) with one IMAP login."""
    c = mailhelpers.imaps(relay)
    try:
        c.login(mailhelpers.imap_quote(addr), password)
    finally:
        try:
            c.logout()
        except Exception:
            pass


def new_account(relay: FedRelay) -> tuple[str, str]:
    addr, pw = relay.new_credentials()
    login_once(relay, addr, pw)
    return addr, pw


def inbox_raw(relay: FedRelay, addr: str, password: str, headers_only: bool = False) -> list[bytes]:
    """Every message in INBOX (whole, or the header only); [] if the relay cannot be reached."""
    c = mailhelpers.imaps(relay, timeout=30)
    try:
        c.login(mailhelpers.imap_quote(addr), password)
        typ, _ = c.select("INBOX", readonly=True)
        assert typ == "OK"
        typ, data = c.uid("SEARCH", "ALL")
        uids = data[0].split() if data and data[0] else []
        if not uids:
            return []
        part = "BODY.PEEK[HEADER]" if headers_only else "BODY.PEEK[]"
        typ, fdata = c.uid("FETCH", b",".join(uids).decode(), f"({part})")
        assert typ == "OK", fdata
        return [item[1] for item in fdata if isinstance(item, tuple)]
    finally:
        try:
            c.logout()
        except Exception:
            pass


def message_ids(raws: list[bytes]) -> list[str]:
    out = []
    for r in raws:
        m = email.message_from_bytes(r)
        out.append((m.get("Message-ID") or "").strip())
    return out


def wait_inbox(relay: FedRelay, addr: str, password: str, pred, what: str, timeout: float,
               sender: FedRelay | None = None, headers_only: bool = False, poll: float = 0.5) -> list[bytes]:
    """Poll `addr`'s INBOX until pred(list of raw messages) is true; fail with both relay logs."""
    deadline = time.monotonic() + timeout
    last: list[bytes] = []
    err = None
    while True:
        try:
            last = inbox_raw(relay, addr, password, headers_only=headers_only)
            err = None
            if pred(last):
                return last
        except (OSError, imaplib.IMAP4.error, AssertionError) as e:
            err = e
        if time.monotonic() > deadline:
            msg = f"{what}: not there at {relay.domain} within {timeout:.0f}s ({len(last)} message(s) in INBOX of {addr}"
            if err:
                msg += f"; last IMAP error: {err}"
            msg += ")"
            if sender is not None:
                msg += f"\n--- sender relay {sender.domain} log tail ---\n{sender.log_tail()}"
            msg += f"\n--- receiver relay {relay.domain} log tail ---\n{relay.log_tail(2000)}"
            raise AssertionError(msg)
        time.sleep(poll)


def smtp_mx(relay: FedRelay, timeout: float = 30) -> smtplib.SMTP:
    """A plain connection to the relay's port 25 (EHLO not yet sent)."""
    return smtplib.SMTP(relay.ip, relay.port("smtp"), local_hostname="client.test", timeout=timeout)


def smtp_mx_tls(relay: FedRelay, ca: CA, timeout: float = 30) -> smtplib.SMTP:
    """Port 25 after EHLO + STARTTLS, the certificate verified against the CA for the domain."""
    s = smtp_mx(relay, timeout)
    s.ehlo()
    ctx = ca.client_context()
    # smtplib checks the host name against `_host`, which is the IP: verify for the domain
    s._host = relay.domain
    s.starttls(context=ctx)
    s.ehlo()
    return s


def mx_send(s: smtplib.SMTP, mail_from: str, rcpts: list[str], raw: bytes) -> tuple[int, str]:
    """One SMTP transaction; the first non-2xx/3xx reply (code, text) or the final (250, text)."""
    code, text = s.mail(mail_from)
    if code >= 400:
        return code, text.decode(errors="replace")
    for r in rcpts:
        code, text = s.rcpt(r)
        if code >= 400:
            s.rset()
            return code, text.decode(errors="replace")
    try:
        code, text = s.data(raw)
    except smtplib.SMTPDataError as e:
        return e.smtp_code, e.smtp_error.decode(errors="replace")
    return code, text.decode(errors="replace")


def https_post(relay: FedRelay, ca: CA, path: str, body, headers: list[tuple[str, str]],
               method: str = "POST", timeout: float = 60) -> tuple[int, str]:
    """An HTTPS request to the relay with the certificate verified for its domain; (status, body)."""
    import http.client

    ctx = ca.client_context()
    raw = socket.create_connection((relay.ip, relay.port("https")), timeout=timeout)
    tls = ctx.wrap_socket(raw, server_hostname=relay.domain)
    conn = http.client.HTTPSConnection(relay.domain, relay.port("https"), timeout=timeout, context=ctx)
    conn.sock = tls
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", relay.domain)
        for k, v in headers:
            conn.putheader(k, v)
        if isinstance(body, (bytes, bytearray)):
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        else:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            try:
                for chunk in body:
                    conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                conn.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the server may answer 413 and close before the end
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------
# Postfix + OpenDKIM (their own instance, on 127.0.0.4)
# ------------------------------------------------------------------------------------------------


class PostfixInstance:
    """A private Postfix (own config, queue and data directories; `postfix -c DIR start`) for
    `c.test` on its own loopback address, with OpenDKIM as a milter signing c.test mail.

    smtpd listens on ip:25+offset (with STARTTLS, certificate from the CA) and signs through
    OpenDKIM; a second smtpd on ip:2525+offset... (`unsigned_port`) does not use the milter.
    Mail for c.test goes to a Maildir under `mail/` (virtual delivery); mail to `a.test`/`b.test`
    goes to the relays' port 25+offset with `smtp_tls_security_level = encrypt`.
    """

    def __init__(self, workdir: Path, ip: str, offset: int, ca: CA, relays: dict[str, FedRelay],
                 domain: str = "c.test", misaligned_from_domain: str = "d.test"):
        self.postfix = need_binary("postfix", "postfix")
        self.opendkim = need_binary("opendkim", "opendkim")
        self.genkey = need_binary("opendkim-genkey", "opendkim-tools")
        self.workdir = workdir
        self.ip = ip
        self.offset = offset
        self.ca = ca
        self.domain = domain
        self.misaligned = misaligned_from_domain
        self.relays = relays
        self.conf = workdir / "etc"
        self.queue = workdir / "spool"
        self.data = workdir / "lib"
        self.mail = workdir / "mail"
        self.dkim_dir = workdir / "dkim"
        self.log_path = workdir / "postfix.log"
        self.opendkim_log = workdir / "opendkim.log"
        self.milter_port = free_udp_tcp_port(ip)
        self.smtp_port = 25 + offset
        self.unsigned_port = free_udp_tcp_port(ip)
        self.opendkim_proc: subprocess.Popen | None = None
        self.started = False

    def dkim_txt(self) -> tuple[str, str]:
        """(record name, TXT value) for c.test's key made by opendkim-genkey."""
        txt = (self.dkim_dir / "c.txt").read_text()
        value = "".join(re.findall(r'"([^"]*)"', txt))
        return f"c._domainkey.{self.domain}", value

    def prepare(self) -> list[str]:
        """Make keys, certificates and config; return dnsmasq records for c.test."""
        for d in (self.conf, self.queue, self.data, self.mail, self.dkim_dir):
            d.mkdir(parents=True, exist_ok=True)
        run([self.genkey, "-b", "2048", "-D", str(self.dkim_dir), "-d", self.domain, "-s", "c"])
        shutil.chown(self.dkim_dir, "opendkim", "opendkim")
        for p in self.dkim_dir.iterdir():
            shutil.chown(p, "opendkim", "opendkim")
        (self.dkim_dir / "c.private").chmod(0o600)
        cert, key = self.ca.issue(self.domain, [self.domain, f"mx.{self.domain}"])
        # Postfix and OpenDKIM drop privileges: everything they read lives in this
        # world-traversable directory (pytest's tmp dirs are 0700)
        self.cert, self.key, self.ca_file = self.workdir / "cert.pem", self.workdir / "key.pem", self.workdir / "ca.pem"
        shutil.copy(cert, self.cert)
        shutil.copy(key, self.key)
        shutil.copy(self.ca.cert, self.ca_file)
        self.key.chmod(0o600)
        pw = pwd.getpwnam("postfix")
        shutil.chown(self.data, pw.pw_uid, pw.pw_gid)
        self._write_opendkim()
        self._write_postfix()
        name, value = self.dkim_txt()
        return [
            f"--host-record={self.domain},{self.ip}",
            f"--host-record=mx.{self.domain},{self.ip}",
            f"--mx-host={self.domain},mx.{self.domain},10",
            f"--txt-record={name},{value}",
        ]

    def _write_opendkim(self) -> None:
        (self.dkim_dir / "keytable").write_text(f"ckey {self.domain}:c:{self.dkim_dir / 'c.private'}\n")
        # c.test mail is signed as c.test; d.test mail is signed as c.test too: misaligned
        (self.dkim_dir / "signingtable").write_text(f"*@{self.domain} ckey\n*@{self.misaligned} ckey\n")
        (self.dkim_dir / "opendkim.conf").write_text("\n".join([
            "Syslog no",
            "LogResults yes",
            f"Socket inet:{self.milter_port}@{self.ip}",
            f"PidFile {self.workdir / 'opendkim.pid'}",
            "UserID opendkim:opendkim",
            "Mode s",
            "Canonicalization relaxed/simple",
            f"KeyTable file:{self.dkim_dir / 'keytable'}",
            f"SigningTable refile:{self.dkim_dir / 'signingtable'}",
            "InternalHosts 127.0.0.0/8",
            "OversignHeaders From",
            "UMask 002",
            # the key lives under /tmp (a test directory), which OpenDKIM would call unsafe
            "RequireSafeKeys no",
            "",
        ]))

    def _write_postfix(self) -> None:
        pw = pwd.getpwnam("postfix")
        relay_tr = ", ".join(f"{d}=smtp:[{r.ip}]:{r.port('smtp')}" for d, r in self.relays.items())
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.domain,
            "mydomain": self.domain,
            "myorigin": self.domain,
            "mydestination": "",
            # Postfix wants inet_interfaces to be an interface address, and lo only has
            # 127.0.0.1/8: the smtpd services name their address in master.cf instead
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "smtp_bind_address": self.ip,
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "relay_domains": "",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.mail),
            "virtual_mailbox_maps": "static:inbox/",
            "virtual_uid_maps": f"static:{pw.pw_uid}",
            "virtual_gid_maps": f"static:{pw.pw_gid}",
            "transport_maps": "inline:{ " + relay_tr + " }",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtpd_peername_lookup": "no",
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_CAfile": str(self.ca_file),
            "smtp_tls_loglevel": "1",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_chain_files": f"{self.key}, {self.cert}",
            "smtpd_tls_loglevel": "1",
            "smtpd_milters": f"inet:{self.ip}:{self.milter_port}",
            "non_smtpd_milters": f"inet:{self.ip}:{self.milter_port}",
            "milter_default_action": "tempfail",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.workdir),
            "smtputf8_enable": "no",
            "biff": "no",
            "append_dot_mydomain": "no",
            "maximal_queue_lifetime": "1h",
            "bounce_queue_lifetime": "1h",
            "queue_run_delay": "5s",
            "minimal_backoff_time": "5s",
            "maximal_backoff_time": "10s",
            "shlib_directory": "/usr/lib/postfix",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "meta_directory": "/etc/postfix",
            "command_directory": "/usr/sbin",
            "manpage_directory": "/usr/share/man",
            "message_size_limit": "40000000",
        }
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        smtpd = f"{self.ip}:{self.smtp_port}"
        unsigned = f"{self.ip}:{self.unsigned_port}"
        master = f"""\
{smtpd} inet n - n - - smtpd
{unsigned} inet n - n - - smtpd -o smtpd_milters=
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
        (self.conf / "master.cf").write_text(master)
        shutil.chown(self.mail, pw.pw_uid, pw.pw_gid)

    def start(self) -> None:
        self.opendkim_proc = subprocess.Popen(
            [self.opendkim, "-f", "-x", str(self.dkim_dir / "opendkim.conf"), "-l"],
            stdin=subprocess.DEVNULL, stdout=open(self.opendkim_log, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_tcp(self.ip, self.milter_port, 15, "opendkim")
        env = dict(os.environ, MAIL_CONFIG=str(self.conf))
        for step in ("check", "start"):
            p = subprocess.run([self.postfix, "-c", str(self.conf), step], capture_output=True, timeout=60, env=env)
            if p.returncode != 0:
                # Postfix logs its fatal errors to syslog, or to stderr only when that is a tty
                why = subprocess.run(["script", "-qc", f"{self.postfix} -c {self.conf} {step}", "/dev/null"],
                                     capture_output=True, timeout=60, env=env)
                raise AssertionError(f"postfix {step} failed ({p.returncode}): "
                                     f"{why.stdout.decode(errors='replace')[-2000:]}\n{fh_tail(self.log())}")
        self.started = True
        wait_tcp(self.ip, self.smtp_port, 15, "postfix smtpd")

    def stop(self) -> None:
        if self.started:
            try:
                subprocess.run([self.postfix, "-c", str(self.conf), "stop"], capture_output=True, timeout=30,
                               env=dict(os.environ, MAIL_CONFIG=str(self.conf)))
            except Exception:
                pass
            # make sure the master is gone (its pid file is in the queue directory)
            pidf = self.queue / "pid" / "master.pid"
            deadline = time.monotonic() + 10
            while pidf.exists() and time.monotonic() < deadline:
                try:
                    pid = int(pidf.read_text().strip())
                    os.kill(pid, 0)
                except (ValueError, ProcessLookupError, FileNotFoundError):
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(int(pidf.read_text().strip()), signal.SIGKILL)
                except Exception:
                    pass
            self.started = False
        if self.opendkim_proc and self.opendkim_proc.poll() is None:
            self.opendkim_proc.terminate()
            try:
                self.opendkim_proc.wait(5)
            except subprocess.TimeoutExpired:
                self.opendkim_proc.kill()
                self.opendkim_proc.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def mailq(self) -> str:
        p = subprocess.run(["postqueue", "-c", str(self.conf), "-p"], capture_output=True, timeout=30)
        return p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")

    def flush(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.conf), "-f"], capture_output=True, timeout=30)

    def delivered(self) -> list[bytes]:
        """Messages in the c.test Maildir (every c.test address lands in the same one)."""
        out = []
        for sub in ("new", "cur"):
            d = self.mail / "inbox" / sub
            if d.is_dir():
                out += [p.read_bytes() for p in sorted(d.iterdir())]
        return out

    def keep_logs(self, tag: str) -> None:
        dest = mailhelpers.artifacts_dir() / f"postfix-{tag}"
        dest.mkdir(parents=True, exist_ok=True)
        for p in (self.log_path, self.opendkim_log, self.conf / "main.cf", self.conf / "master.cf",
                  self.dkim_dir / "opendkim.conf"):
            if p.exists():
                shutil.copy(p, dest / p.name)
        try:
            (dest / "mailq.txt").write_text(self.mailq())
        except Exception:
            pass
