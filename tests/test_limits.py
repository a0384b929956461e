"""Connection caps and descriptor headroom (issue 14, items 2/5/8), against the real binary.

Each test starts its own relay: one under a low descriptor limit (`prlimit`), one with loopback
subject to the per-address caps.
"""

from __future__ import annotations

import shutil
import socket
import time

import pytest

from conftest import Relay


class LimitedRelay(Relay):
    """A relay started under `prlimit --nofile=N:N`."""

    def __init__(self, *a, nofile: int, **kw):
        super().__init__(*a, **kw)
        self.nofile = nofile

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}:{self.nofile}", "--"] + super().command()


def first_line(ip: str, port: int, timeout: float = 5.0) -> str:
    """The server's first line; '' if it said nothing in time or hung up."""
    with socket.create_connection((ip, port), timeout=timeout) as s:
        data = b""
        try:
            while b"\n" not in data:
                got = s.recv(512)
                if not got:
                    break
                data += got
        except OSError:
            pass
        return data.split(b"\n")[0].decode(errors="replace").strip()


def flood_imap(relay: Relay, most: int) -> tuple[list[socket.socket], str]:
    """Opens plain IMAP connections until one is not greeted with `* OK` (or `most`)."""
    held: list[socket.socket] = []
    for _ in range(most):
        s = socket.create_connection((relay.ip, relay.port("imap")), timeout=3)
        try:
            line = s.recv(256)
        except OSError:
            line = b""
        if not line.startswith(b"* OK"):
            s.close()
            return held, line.decode(errors="replace").strip()
        held.append(s)
    return held, "max"


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_an_imap_flood_at_the_descriptor_limit_leaves_smtp_and_http_accepting(tmp_path):
    relay = LimitedRelay("fdlimit", tmp_path, nofile=256)
    relay.start()
    held: list[socket.socket] = []
    try:
        # More connections than there are descriptors.
        held, stopped = flood_imap(relay, 400)
        assert stopped.startswith("* BYE"), (
            f"the IMAP flood was not turned away with BYE after {len(held)} connections "
            f"(got {stopped!r}): the descriptor limit was reached"
        )
        assert len(held) < 256
        # The other listeners still accept and answer while the flood holds its slots.
        assert first_line(relay.ip, relay.port("smtp")).startswith("220 "), "SMTP 25 no longer greets"
        with socket.create_connection((relay.ip, relay.port("http")), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 "), "HTTP 80 no longer answers"
        # And IMAP accepts again once the flood lets go.
        for s in held:
            s.close()
        held = []
        deadline = time.monotonic() + 10
        while not first_line(relay.ip, relay.port("imap")).startswith("* OK"):
            assert time.monotonic() < deadline, "IMAP did not accept again after the flood"
            time.sleep(0.2)
        relay.assert_alive()
    finally:
        for s in held:
            s.close()
        relay.stop()


def test_per_address_caps_hold_on_smtp_imap_and_http(tmp_path):
    relay = Relay("perip", tmp_path)
    relay.data_dir.mkdir(parents=True, exist_ok=True)
    (relay.data_dir / "settings.toml").write_text(
        "conn_limits_exempt_loopback = false\n"
        "max_smtp_connections_per_ip = 3\n"
        "max_http_connections_per_ip = 3\n"
        "max_imap_connections_per_ip = 4\n"
        "max_unauthenticated_per_ip = 4\n"
    )
    relay.start()
    held: list[socket.socket] = []
    try:
        imap, stopped = flood_imap(relay, 50)
        held += imap
        assert len(imap) == 4 and stopped == "* BYE Too many connections, try again later", (len(imap), stopped)
        for _ in range(3):
            s = socket.create_connection((relay.ip, relay.port("smtp")), timeout=5)
            assert s.recv(256).startswith(b"220 ")
            held.append(s)
        assert first_line(relay.ip, relay.port("smtp")).startswith("421 4.7.0 ")
        for _ in range(3):
            held.append(socket.create_connection((relay.ip, relay.port("http")), timeout=5))
        time.sleep(0.3)
        with socket.create_connection((relay.ip, relay.port("http")), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = s.recv(64)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", f"a 4th HTTP connection from one address was served: {answer!r}"
        relay.assert_alive()
    finally:
        for s in held:
            s.close()
        relay.stop()
