"""Push notifications and metrics, end to end.

The relay runs from a config file (`relaybox serve --config`), so that `push_url` points at a
plain-HTTP push service inside the test (it records every POST and answers from a per-token
script) and the retry schedule is short. Metrics are read from the `[listen] metrics` listener
and parsed with prometheus_client's text parser.
"""

from __future__ import annotations

import collections
import http.server
import imaplib
import threading
import time
import urllib.request

import pytest

import mailhelpers
from conftest import Relay, _safe, pick_address
from dchelpers import AccountMaker, self_addr

PUSH_DELAYS = [1, 2, 30]

# imaplib does not know the METADATA commands (RFC 5464)
imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))
imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))


class PushService:
    """A local push service: records (token, time) per POST; answers with the token's script."""

    def __init__(self):
        self.posts: list[tuple[str, float]] = []
        self.script: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.always: dict[str, int] = {}
        self.lock = threading.Lock()
        svc = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                token = self.rfile.read(n).decode("utf-8", "replace")
                with svc.lock:
                    svc.posts.append((token, time.monotonic()))
                    q = svc.script[token]
                    status = q.popleft() if q else svc.always.get(token, 200)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def got(self, token: str) -> list[float]:
        with self.lock:
            return [t for tok, t in self.posts if tok == token]

    def wait(self, token: str, count: int, timeout: float = 30) -> list[float]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.got(token)
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                with self.lock:
                    seen = [tok[:40] for tok, _ in self.posts]
                raise AssertionError(f"{count} POSTs of {token[:40]!r} expected, got {len(got)}; all POSTs: {seen}")
            time.sleep(0.05)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class ConfigRelay(Relay):
    """A relay started with `relaybox serve --config` from a config file written by the test."""

    def __init__(self, name, workdir, push_url):
        while True:
            ip, offset = pick_address()
            if offset + 9464 < 65536:
                break
        super().__init__(name, workdir, ip, offset)
        self.config_path = workdir / "relaybox.toml"
        listen = "\n".join(f'{svc} = ["{ip}:{self.port(svc)}"]' for svc in
                           ("smtp", "submissions", "submission", "imap", "imaps", "http", "https", "metrics"))
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f'mail_domain = "{self.domain}"\n'
            f'data_dir = "{self.data_dir}"\n'
            "max_load_1m = 1000.0\n"
            'min_free_disk_space = "64M"\n'
            f'push_url = "{push_url}"\n'
            f"push_retry_delays = {PUSH_DELAYS}\n"
            'push_give_up_after = "1h"\n'
            f"[listen]\n{listen}\n"
        )

    def command(self):
        return [str(mailhelpers_bin()), "serve", "--config", str(self.config_path)]

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://{self.ip}:{self.port('metrics')}/metrics", timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = r.read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
                out[key] = s.value
        return out


def mailhelpers_bin():
    import conftest

    return conftest.RELAYBOX_BIN


@pytest.fixture(scope="module")
def push_service():
    svc = PushService()
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def relay(request, tmp_path_factory, push_service):
    """Overrides conftest's `relay`: this module's relay runs from a config file."""
    name = _safe(request.module.__name__)
    r = ConfigRelay(name, tmp_path_factory.mktemp(f"relay-{name}"), push_service.url)
    failed_before = request.session.testsfailed
    try:
        r.start()
    except BaseException:
        r.keep_logs(name)
        raise
    yield r
    r.stop()
    if request.session.testsfailed > failed_before:
        where = r.keep_logs(name)
        print(f"\n[relaybox tests] relay logs of {name} kept in {where}")


def set_token(relay, addr, password, token):
    conn = mailhelpers.imap_login(relay, addr, password)
    try:
        typ, data = conn._simple_command("SETMETADATA", "INBOX", f"(/private/devicetoken {mailhelpers.imap_quote(token)})")
        assert typ == "OK", (typ, data)
    finally:
        conn.logout()


def get_tokens(relay, addr, password) -> bytes:
    conn = mailhelpers.imap_login(relay, addr, password)
    try:
        typ, data = conn._simple_command("GETMETADATA", "INBOX", "/private/devicetoken")
        assert typ == "OK", (typ, data)
        typ, data = conn._untagged_response(typ, data, "METADATA")
        return data[0] if data and data[0] else b""
    finally:
        conn.logout()


def send(relay, sender, rcpt, body="push me"):
    (addr, pw) = sender
    raw = mailhelpers.build_message(addr, [rcpt], body=body, encrypted=True)
    code, text = mailhelpers.send_raw(relay, addr, pw, [rcpt], raw)
    assert code == 250, (code, text)


def account_with_token(relay, token):
    addr, pw = mailhelpers.create_account(relay)
    set_token(relay, addr, pw, token)
    return addr, pw


def test_token_from_delta_chat_triggers_push(relay, push_service, dc, dc_events):
    """Two real Delta Chat profiles chat; mail from alice POSTs bob's token; bob's own messages
    push nothing to bob.

    The core only registers a token it got from the app through `set_push_device_token`, which
    deltachat-rpc-server does not expose (the `device_token` config key is not read for it), so
    the token is set by the test with SETMETADATA over IMAPS on bob's credentials, exactly as the
    core would send it (`openpgp:…`)."""
    acmaker = AccountMaker(dc, relay, dc_events)
    try:
        alice, bob = acmaker.dc.add_account(), acmaker.dc.add_account()
        dc_events.names[alice.id], dc_events.names[bob.id] = "alice", "bob"
        creds = {}
        for ac in (alice, bob):
            addr, pw = relay.new_credentials()
            creds[ac.id] = (addr, pw)
            AccountMaker.configure_from_qr(ac, relay.dclogin_url(addr, pw))()
            acmaker.created.append(ac)
            ac.start_io()
        # Core skips what is already in INBOX at its first fetch: bob must have fetched once
        # before alice sends, or "wake up bob" may arrive first and never be shown.
        for ac in (alice, bob):
            ac._rpc.wait_for_all_work_done(ac.id)
        bob_addr, bob_pw = creds[bob.id]
        token = "openpgp:" + mailhelpers.random_password(40)
        set_token(relay, bob_addr, bob_pw, token)
        assert token.encode() in get_tokens(relay, bob_addr, bob_pw)

        before = len(push_service.got(token))
        chat = alice.create_chat(bob)
        chat.send_text("wake up bob")
        dc_events.incoming_text(bob, "wake up bob")
        push_service.wait(token, before + 1)
        # bob answers; the copy in bob's own INBOX (bcc-self) does not push to bob
        n_bob = len(push_service.got(token))
        bob_chat = bob.create_chat(alice)
        bob_chat.send_text("I am awake")
        dc_events.incoming_text(alice, "I am awake")
        time.sleep(1.5)
        assert len(push_service.got(token)) == n_bob, "bob's own message pushed to bob"
        assert self_addr(bob) == bob_addr
    finally:
        acmaker.close()


def test_gone_token_is_removed(relay, push_service):
    token = "gone-" + mailhelpers.random_password(12)
    push_service.script[token].extend([410])
    bob = account_with_token(relay, token)
    assert token.encode() in get_tokens(relay, *bob)
    alice = mailhelpers.create_account(relay)
    send(relay, alice, bob[0])
    push_service.wait(token, 1)
    deadline = time.monotonic() + 10
    while token.encode() in get_tokens(relay, *bob):
        assert time.monotonic() < deadline, "the token stayed after 410"
        time.sleep(0.2)
    send(relay, alice, bob[0], "again")
    time.sleep(1.5)
    assert len(push_service.got(token)) == 1, "a removed token was used again"


def test_failed_push_is_retried(relay, push_service):
    token = "flaky-" + mailhelpers.random_password(12)
    push_service.script[token].extend([500, 503])
    bob = account_with_token(relay, token)
    alice = mailhelpers.create_account(relay)
    before = relay.metrics()
    send(relay, alice, bob[0])
    times = push_service.wait(token, 3, timeout=20)
    assert len(times) == 3
    # the schedule of the config: 1 s, then 2 s
    assert times[1] - times[0] >= 0.9, times
    assert times[2] - times[1] >= 1.9, times
    time.sleep(0.5)
    after = relay.metrics()
    assert after["relaybox_push_attempt_failed_total"] - before["relaybox_push_attempt_failed_total"] >= 2
    assert after["relaybox_push_sent_total"] > before["relaybox_push_sent_total"]
    assert after["relaybox_push_pending"] == 0 or len(push_service.got(token)) == 3


def test_restart_resumes_pending_push(relay, push_service):
    token = "restart-" + mailhelpers.random_password(12)
    push_service.always[token] = 500
    bob = account_with_token(relay, token)
    alice = mailhelpers.create_account(relay)
    send(relay, alice, bob[0])
    push_service.wait(token, 1)
    pending = relay.data_dir / "pending_notifications"
    deadline = time.monotonic() + 10
    while not [p for p in pending.iterdir() if not p.name.endswith(".tmp")]:
        assert time.monotonic() < deadline, "no pending notification was written"
        time.sleep(0.1)
    assert relay.stop() == 0
    n = len(push_service.got(token))
    push_service.always[token] = 200
    relay.start()
    push_service.wait(token, n + 1, timeout=20)
    deadline = time.monotonic() + 10
    while list(pending.iterdir()):
        assert time.monotonic() < deadline, f"pending files left: {list(pending.iterdir())}"
        time.sleep(0.1)
    assert relay.metrics()["relaybox_push_pending"] == 0


def test_metrics_move_with_mail(relay):
    before = relay.metrics()
    alice = mailhelpers.create_account(relay)
    bob = mailhelpers.create_account(relay)
    send(relay, alice, bob[0])
    plain = mailhelpers.build_message(alice[0], [bob[0]], encrypted=False)
    code, text = mailhelpers.send_raw(relay, alice[0], alice[1], [bob[0]], plain)
    assert code == 523, (code, text)
    # a login that may not create an account
    with pytest.raises(imaplib.IMAP4.error):
        mailhelpers.imap_login(relay, relay.addr("x"), "short")
    after = relay.metrics()

    def moved(name):
        return after[name] - before.get(name, 0)

    assert moved("relaybox_created_accounts_total") == 2
    assert moved("relaybox_delivered_mail_total") == 1
    assert moved("relaybox_outgoing_encrypted_mail_total") == 1
    assert moved("relaybox_filtered_outgoing_mail_total") == 2
    assert moved("relaybox_rejected_unencrypted_mail_total") == 1
    assert moved("relaybox_rejected_registrations_total") >= 1
    assert after["relaybox_accounts"] >= 2
    assert after["relaybox_active_accounts{days=1}"] >= 2
    assert after["relaybox_stored_bytes"] > before.get("relaybox_stored_bytes", 0)
    assert after["relaybox_queue_length"] == 0
    assert after["relaybox_certificate_expiry_seconds"] > 86400
    assert after["relaybox_data_written_bytes"] >= 0
    for g in ("relaybox_imap_connections", "relaybox_smtp_connections", "relaybox_imap_idle_clients"):
        assert g in after
    # a connection that is open while we scrape is counted
    conn = mailhelpers.imap_login(relay, *bob)
    try:
        assert relay.metrics()["relaybox_imap_connections"] >= 1
    finally:
        conn.logout()
