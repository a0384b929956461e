"""Onboarding by the invite QR `DCACCOUNT:https://<domain>/new` with the real Delta Chat core,
against a relay on a `_`-prefixed domain (self-signed mode, reference §2/§7).

The core resolves host names with the C library of its static (musl) build, and musl refuses to
ask DNS for names with an underscore; so the name is given to the core through /etc/hosts, bind-
mounted into a private mount namespace of the rpc-server only (the machine's own /etc/hosts is
not touched). This needs root (`unshare -m`), which CI has; elsewhere the test is skipped.

The relay listens on the standard ports of a spare loopback address, because the QR carries no
port: the core fetches `https://<domain>/new` and then configures from the relay's autoconfig.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dchelpers  # noqa: E402
import fedhelpers as fh  # noqa: E402
from conftest import _ports_free  # noqa: E402
from deltachat_rpc_client import DeltaChat, Rpc  # noqa: E402


def _need_root():
    if os.geteuid() == 0 and shutil.which("unshare"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("the DCACCOUNT test needs root and unshare (a private mount namespace)")
    pytest.skip("needs root and unshare for a private /etc/hosts of the Delta Chat core")


def _spare_ip() -> str:
    for _ in range(200):
        ip = f"127.0.0.{random.randint(2, 250)}"
        if _ports_free(ip, 0):
            return ip
    raise AssertionError("no loopback address with the standard mail ports free")


@pytest.fixture(scope="module")
def underscore_relay(request, tmp_path_factory):
    _need_root()
    work = tmp_path_factory.mktemp("dcaccount")
    ip = _spare_ip()
    domain = f"_chat{random.randint(1000, 9999)}.test"
    relay = fh.FedRelay("dcaccount", work / "relay", ip, 0, domain, dns_addr=None, ca=None,
                        extra={"max_user_send_per_minute": 600})
    relay.start()
    failed_before = request.session.testsfailed
    yield relay
    relay.stop()
    if request.session.testsfailed > failed_before:
        relay.keep_logs("test_dcaccount")


@pytest.fixture
def core(underscore_relay, tmp_path):
    """An rpc-server that sees `<domain> -> <relay ip>` in its own /etc/hosts."""
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{underscore_relay.ip} {underscore_relay.domain}\n")
    wrapper = tmp_path / "rpc-server.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec unshare -m sh -c 'mount --bind {hosts} /etc/hosts && exec {dchelpers.rpc_server_path()}'\n"
    )
    wrapper.chmod(0o755)
    stderr = open(tmp_path / "rpc-server.stderr.log", "wb")
    rpc = Rpc(accounts_dir=str(tmp_path / "accounts"), rpc_server_path=str(wrapper), stderr=stderr)
    rpc.start()
    try:
        yield DeltaChat(rpc)
    finally:
        rpc.close()
        stderr.close()


def test_dcaccount_invite_creates_working_profiles(underscore_relay, core):
    relay = underscore_relay
    events = dchelpers.Events()
    qr = f"DCACCOUNT:https://{relay.domain}/new"
    accounts = []
    for name in ("alice", "bob"):
        ac = core.add_account()
        events.names[ac.id] = name
        parsed = ac.check_qr(qr)
        assert parsed["kind"] == "account", parsed
        assert parsed["domain"] == relay.domain, parsed
        try:
            ac.add_transport_from_qr(qr)
        except Exception as e:  # noqa: BLE001 - the core's reason goes into the failure
            raise AssertionError(f"{name}: DCACCOUNT configuration failed: {e}\n{events.recent_text(ac)}\n"
                                 f"relay log:\n{relay.log_tail()}") from e
        addr = dchelpers.self_addr(ac)
        assert addr.endswith("@" + relay.domain), addr
        ac.start_io()
        accounts.append(ac)
    alice, bob = accounts
    # the relay made both accounts at their first login (nothing was created by /new)
    log = relay.all_stderr()
    for ac in accounts:
        assert f"Created address: {dchelpers.self_addr(ac)}" in log, relay.log_tail()
    # and they chat: Secure-Join, then a message each way
    bob.secure_join(alice.get_qr_code())
    events.securejoin_done(alice, "SecurejoinInviterProgress", timeout=120)
    events.securejoin_done(bob, "SecurejoinJoinerProgress", timeout=120)
    bob.create_chat(alice).send_text("hello over _ domain")
    events.incoming_text(alice, "hello over _ domain")
    alice.create_chat(bob).send_text("reply over _ domain")
    events.incoming_text(bob, "reply over _ domain")


def test_relay_answers_new_over_https_on_the_name(underscore_relay):
    """`/new` on the relay's own name (the certificate is self-signed, as the core accepts for
    `_` domains): JSON credentials with the reference's lengths and a dclogin URL."""
    import json
    import ssl
    import http.client

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(underscore_relay.ip, 443, context=ctx, timeout=30)
    try:
        conn.request("POST", "/new", headers={"Host": underscore_relay.domain})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, body
    creds = json.loads(body)
    local, _, domain = creds["email"].partition("@")
    assert domain == underscore_relay.domain and len(local) == 9, creds
    assert creds["dclogin_url"].startswith("dclogin:"), creds
    # nothing was created by asking
    socket.create_connection((underscore_relay.ip, 993), timeout=5).close()
    assert f"Created address: {creds['email']}" not in underscore_relay.all_stderr()
