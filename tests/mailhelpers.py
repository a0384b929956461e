"""Building test e-mails and talking IMAP/SMTP to a relaybox instance (stdlib only).

Every raw test message is built by `build_message` in this one place. Right now the relay has no
encryption requirement, so plain text/plain messages are accepted. When the policy lands (chatmail
rule: outgoing mail must be OpenPGP-encrypted, else `523 Encryption Needed`), flip
`REQUIRE_ENCRYPTION` to True (or run with RELAYBOX_TEST_MAIL=encrypted): every message is then
built in the "encrypted" shape that passes the filtermail check (multipart/encrypted, `Version: 1`,
an armored PKESK+SEIPD packet stream), and `test_unencrypted_mail_is_rejected` starts running.
"""

from __future__ import annotations

import base64
import email.utils
import imaplib
import os
import secrets
import smtplib
import ssl
import string
import time
import uuid
from pathlib import Path

# The relay refuses unencrypted mail (523), so test messages are built in the encrypted shape
# unless a test asks for plain text (RELAYBOX_TEST_MAIL=plain builds plain ones by default).
REQUIRE_ENCRYPTION = os.environ.get("RELAYBOX_TEST_MAIL", "encrypted") == "encrypted"

CRLF = b"\r\n"

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("RELAYBOX_ARTIFACTS", REPO / "test-artifacts"))


def artifacts_dir() -> Path:
    """test-artifacts/ (created on demand): kept logs and measurements."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

LOCAL_ALPHABET = string.ascii_lowercase + string.digits
PASSWORD_ALPHABET = string.ascii_letters + string.digits


def random_localpart(length: int = 9) -> str:
    """A local part the relay accepts for account creation: exactly 9 chars of [a-z0-9]."""
    return "".join(secrets.choice(LOCAL_ALPHABET) for _ in range(length))


def random_password(length: int = 16) -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def insecure_context() -> ssl.SSLContext:
    """TLS client context for the self-signed dev certificate: no verification."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------------------------
# OpenPGP-shaped payload (structure only; nobody can decrypt it, the relay only checks the shape)
# --------------------------------------------------------------------------------------------


def _pgp_packet(tag: int, body: bytes) -> bytes:
    """A new-format OpenPGP packet with a definite length."""
    n = len(body)
    if n < 192:
        length = bytes([n])
    elif n < 8384:
        n2 = n - 192
        length = bytes([(n2 >> 8) + 192, n2 & 0xFF])
    else:
        length = b"\xff" + n.to_bytes(4, "big")
    return bytes([0xC0 | tag]) + length + body


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def fake_pgp_armored(payload_size: int = 300, literal: bool = False) -> bytes:
    """An ASCII-armored PGP MESSAGE: one PKESK (tag 1) then one SEIPD (tag 18), random contents.
    With `literal`, the payload is a literal-data packet (tag 11) instead: readable by anyone,
    so the relay must refuse it."""
    if literal:
        data = _pgp_packet(11, b"b\x00\x00\x00\x00\x00" + b"cleartext in a PGP wrapper\r\n")
        b64 = base64.b64encode(data)
        crc = base64.b64encode(_crc24(data).to_bytes(3, "big"))
        return b"-----BEGIN PGP MESSAGE-----\r\n\r\n" + b64 + b"\r\n=" + crc + b"\r\n-----END PGP MESSAGE-----\r\n"
    pkesk = _pgp_packet(1, b"\x03" + secrets.token_bytes(8) + b"\x01" + b"\x08\x00" + secrets.token_bytes(256))
    seipd = _pgp_packet(18, b"\x01" + secrets.token_bytes(payload_size))
    data = pkesk + seipd
    b64 = base64.b64encode(data)
    lines = [b64[i : i + 76] for i in range(0, len(b64), 76)]
    crc = base64.b64encode(_crc24(data).to_bytes(3, "big"))
    return (
        b"-----BEGIN PGP MESSAGE-----\r\n\r\n"
        + CRLF.join(lines)
        + b"\r\n="
        + crc
        + b"\r\n-----END PGP MESSAGE-----\r\n"
    )


# --------------------------------------------------------------------------------------------
# The one message builder
# --------------------------------------------------------------------------------------------


def build_message(
    from_addr: str,
    to_addrs,
    body: str = "hello from the relaybox test suite",
    subject: str = "relaybox test",
    encrypted: bool | None = None,
    header_from: str | None = None,
    extra_headers: dict | None = None,
    payload: bytes | None = None,
) -> bytes:
    """Return a raw RFC 5322 message (CRLF line ends, not dot-stuffed).

    `body` is the text whose bytes must survive transport unchanged. In plain mode it is the
    text/plain body; in encrypted mode it is put into the MIME preamble of the multipart/encrypted
    message (ignored by MIME parsers, kept byte-for-byte by a relay), so tests that compare
    "everything after the header" work in both modes.
    `header_from` lets a test forge the From header (defaults to `from_addr`).
    """
    if encrypted is None:
        encrypted = REQUIRE_ENCRYPTION
    if isinstance(to_addrs, str):
        to_addrs = [to_addrs]
    domain = from_addr.rsplit("@", 1)[-1].strip("[]") or "relaybox.test"
    headers = [
        f"From: <{header_from or from_addr}>",
        "To: " + ", ".join(f"<{a}>" for a in to_addrs),
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(localtime=False)}",
        f"Message-ID: <{uuid.uuid4().hex}@{domain}>",
        "MIME-Version: 1.0",
    ]
    for k, v in (extra_headers or {}).items():
        headers.append(f"{k}: {v}")
    body_bytes = body.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    if not body_bytes.endswith(CRLF):
        body_bytes += CRLF
    if not encrypted:
        headers.append("Content-Type: text/plain; charset=utf-8")
        headers.append("Content-Transfer-Encoding: 8bit")
        return "\r\n".join(headers).encode("utf-8") + CRLF + CRLF + body_bytes
    boundary = "rbx-" + uuid.uuid4().hex
    headers.append(f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="{boundary}"')
    b = boundary.encode()
    parts = (
        body_bytes
        + b"--" + b + CRLF
        + b"Content-Type: application/pgp-encrypted" + CRLF
        + b"Content-Description: PGP/MIME version identification" + CRLF
        + CRLF
        + b"Version: 1" + CRLF
        + CRLF
        + b"--" + b + CRLF
        + b'Content-Type: application/octet-stream; name="encrypted.asc"' + CRLF
        + b"Content-Description: OpenPGP encrypted message" + CRLF
        + b'Content-Disposition: inline; filename="encrypted.asc"' + CRLF
        + CRLF
        + (payload if payload is not None else fake_pgp_armored())
        + CRLF
        + b"--" + b + b"--" + CRLF
    )
    return "\r\n".join(headers).encode("utf-8") + CRLF + CRLF + parts


def body_of(raw: bytes) -> bytes:
    """Everything after the first empty line (the header/body separator)."""
    sep = raw.find(b"\r\n\r\n")
    assert sep >= 0, f"no header/body separator in {raw[:200]!r}"
    return raw[sep + 4 :]


# --------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------


def imap_quote(s: str) -> str:
    """An IMAP quoted string (as Delta Chat sends LOGIN arguments)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def imaps(relay, timeout: float = 30) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL(relay.ip, relay.port("imaps"), ssl_context=insecure_context(), timeout=timeout)


def imap_login(relay, addr: str, password: str) -> imaplib.IMAP4_SSL:
    """Log in over 993 with the user name quoted (like Delta Chat); raises imaplib.IMAP4.error."""
    conn = imaps(relay)
    try:
        conn.login(imap_quote(addr), password)
    except Exception:
        conn.shutdown()
        raise
    return conn


def create_account(relay, addr: str | None = None, password: str | None = None):
    """Create an account by first login over IMAP; return (addr, password)."""
    addr = addr or relay.addr(random_localpart())
    password = password or random_password()
    conn = imap_login(relay, addr, password)
    conn.logout()
    return addr, password


def smtps(relay, timeout: float = 30) -> smtplib.SMTP_SSL:
    conn = smtplib.SMTP_SSL(relay.ip, relay.port("submissions"), context=insecure_context(), timeout=timeout)
    conn.ehlo("relaybox-test")
    return conn


def smtp_login(relay, addr: str, password: str) -> smtplib.SMTP_SSL:
    conn = smtps(relay)
    conn.login(addr, password)
    return conn


def send_raw(relay, addr: str, password: str, rcpts, raw: bytes):
    """Submit over 465 step by step; return the (code, text) of DATA's final reply."""
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    with smtp_login(relay, addr, password) as s:
        code, text = s.mail(addr)
        assert code == 250, f"MAIL FROM:<{addr}> -> {code} {text!r}"
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code in (250, 251), f"RCPT TO:<{r}> -> {code} {text!r}"
        try:
            code, text = s.data(raw)
        except smtplib.SMTPDataError as e:  # DATA itself (not the final dot) was refused
            code, text = e.smtp_code, e.smtp_error
        return code, text


def fetch_inbox(relay, addr: str, password: str, want: int = 1, timeout: float = 30) -> list[bytes]:
    """Poll INBOX over IMAP until it holds at least `want` messages; return them (BODY.PEEK[])."""
    deadline = time.monotonic() + timeout
    last = []
    while True:
        conn = imap_login(relay, addr, password)
        try:
            typ, data = conn.select("INBOX", readonly=True)
            assert typ == "OK", f"SELECT INBOX -> {typ} {data}"
            typ, data = conn.uid("SEARCH", "ALL")
            assert typ == "OK", f"UID SEARCH ALL -> {typ} {data}"
            uids = data[0].split() if data and data[0] else []
            msgs = []
            for uid in uids:
                typ, fdata = conn.uid("FETCH", uid, "(BODY.PEEK[])")
                assert typ == "OK", f"UID FETCH {uid} -> {typ} {fdata}"
                for item in fdata:
                    if isinstance(item, tuple):
                        msgs.append(item[1])
            last = msgs
        finally:
            try:
                conn.logout()
            except Exception:
                pass
        if len(last) >= want:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"INBOX of {addr} has {len(last)} message(s) after {timeout}s, wanted {want}")
        time.sleep(0.3)
