"""Federation between two relaybox instances, a.test (127.0.0.2) and b.test (127.0.0.3), with a
real dnsmasq serving what `relaybox dns` prints and a private CA (see fedhelpers.py).

One relay pair (and one deltachat-rpc-server) serves the whole module. The Delta Chat
scenarios run three times, grouped by the module fixture `mode`:
  any    both relays listen on port 25 and HTTPS (senders should use HTTPS /mxdeliv first)
  smtp   HTTPS off on both relays (`[listen] https = []`): delivery has to use SMTP
  https  port 25 off on both relays (`[listen] smtp = []`): delivery has to use HTTPS
Each restart keeps the data directories. The cross-relay round-trip time (send on one side ->
IncomingMsg on the other) is written to test-artifacts/federation_rtt.txt.

Inbound checks (DNS, certificates, refusals, DKIM) pass without outbound delivery; the scenarios
that send from one relay to the other wait on the outbound queue/transport.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import shutil
import statistics
import time

import pytest

import fedhelpers as fh
import mailhelpers
from dchelpers import AccountMaker, self_addr
from mailhelpers import artifacts_dir, build_message

A_IP, B_IP = "127.0.0.2", "127.0.0.3"
MAX_MSG = 20 * 1024 * 1024  # above a 10 MiB attachment (base64 + OpenPGP), below the 413 probe
ARRIVAL = 60  # seconds a cross-relay message may take before the test fails
TEN_MIB = 10 * 1024 * 1024
MODES = {"any": set(), "smtp": {"https"}, "https": {"smtp"}}
RTT: dict[str, str] = {}


@pytest.fixture(scope="module")
def fed(request, tmp_path_factory):
    def build(f):
        f.offset = fh.pick_offset([A_IP, B_IP])
        extra = {
            "max_message_size": MAX_MSG,
            "queue_retry_initial": "1s",
            "queue_retry_max": "5s",
            "max_user_send_per_minute": 1000,
            "max_user_send_burst_size": 100,
        }
        f.add_named("a.test", A_IP, extra)
        f.add_named("b.test", B_IP, extra)

    yield from fh.federation_fixture(request, tmp_path_factory, build)


def set_off(fed, off: set[str]) -> None:
    """Restart both relays (data kept) with these services switched off, if not already."""
    for r in fed.relays.values():
        if r.off != off or not r.alive():
            r.restart(off)


@pytest.fixture(autouse=True)
def _relays_alive(request):
    yield
    if "fed" in request.fixturenames:
        for r in request.getfixturevalue("fed").relays.values():
            r.assert_alive()


@pytest.fixture
def full(fed):
    """Both relays with every listener on."""
    set_off(fed, set())
    return fed


def a_b(fed):
    return fed.relays["a.test"], fed.relays["b.test"]


# ------------------------------------------------------------------------------------------------
# The harness itself
# ------------------------------------------------------------------------------------------------


def test_dnsmasq_serves_relaybox_dns_records(full):
    server = ("127.0.0.1", full.dns.port)
    for domain, r in full.relays.items():
        zone = r.dns_zone()
        rcode, mx = fh.dns_query(server, domain, "MX")
        assert rcode == 0 and mx == [("MX", 10, domain)], f"MX {domain}: rcode {rcode}, {mx}"
        rcode, a = fh.dns_query(server, domain, "A")
        assert a == [("A", r.ip)], f"A {domain}: {a}"
        # the DKIM record: what `relaybox dns` prints in one piece, for the relay's own key
        one_piece = [ln for ln in zone.splitlines() if ln.startswith(f"; opendkim._domainkey.{domain}.")]
        assert one_piece, f"`relaybox dns` printed no DKIM record for {domain}:\n{zone}"
        want = one_piece[0].split("TXT", 1)[1].strip()
        rcode, txt = fh.dns_query(server, f"opendkim._domainkey.{domain}", "TXT")
        assert txt == [("TXT", want)], f"DKIM TXT {domain}: {txt}\nwanted {want}"
        assert want == fh.dkim_txt_for(r.dkim_key()).replace(" ", "") + ";s=email;t=s", (
            "the TXT record does not carry the key in the relay's data dir"
        )
    rcode, _ = fh.dns_query(server, "nosuch.test", "MX")
    assert rcode == 3, f"nosuch.test should be NXDOMAIN, rcode {rcode}"


def test_relays_present_ca_certificates(full):
    """Port 25 (STARTTLS) and HTTPS present certificates from the private CA for the domain and
    its mx. name; another name does not verify."""
    import ssl

    for domain, r in full.relays.items():
        s = fh.smtp_mx_tls(r, full.ca)
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3"), s.sock.version()
        s.quit()
        for name in (domain, f"mx.{domain}"):
            raw = fh.socket.create_connection((r.ip, r.port("https")), timeout=10)
            with full.ca.client_context().wrap_socket(raw, server_hostname=name) as t:
                assert t.version() in ("TLSv1.2", "TLSv1.3")
        raw = fh.socket.create_connection((r.ip, r.port("https")), timeout=10)
        with pytest.raises(ssl.SSLCertVerificationError):
            full.ca.client_context().wrap_socket(raw, server_hostname="c.test")
        raw.close()


# ------------------------------------------------------------------------------------------------
# Refusals against a federation relay (b.test), over real sockets
# ------------------------------------------------------------------------------------------------


def _b_account(fed):
    return fh.new_account(fed.relays["b.test"])


def _a_signed(fed, to: str, encrypted: bool = True, **kw) -> tuple[str, bytes]:
    """An encrypted-shaped message from a (made-up) a.test user, DKIM-signed with a.test's real key."""
    a = fed.relays["a.test"]
    frm = a.addr(mailhelpers.random_localpart())
    raw = build_message(frm, [to], encrypted=encrypted, **kw)
    return frm, fh.dkim_sign(raw, "a.test", "opendkim", a.dkim_key())


def test_open_relay_attempt_refused(full):
    _, b = a_b(full)
    s = fh.smtp_mx_tls(b, full.ca)
    try:
        for rcpt in ("someone@c.test", "someone@a.test", "someone@[127.0.0.9]"):
            code, text = s.mail("x@a.test")
            assert code == 250, (code, text)
            code, text = s.rcpt(rcpt)
            assert code == 554 and b"5.7.1" in text, f"RCPT {rcpt} on b.test's port 25 -> {code} {text!r}"
            s.rset()
    finally:
        s.quit()


def test_unknown_local_user_refused_at_rcpt(full):
    _, b = a_b(full)
    s = fh.smtp_mx_tls(b, full.ca)
    try:
        s.mail("x@a.test")
        code, text = s.rcpt("nosuchuser@b.test")
        assert code == 550 and b"5.1.1" in text, (code, text)
    finally:
        s.quit()


def test_cleartext_mail_before_starttls_refused(full):
    _, b = a_b(full)
    s = fh.smtp_mx(b)
    try:
        s.ehlo()
        assert s.has_extn("starttls"), f"port 25 does not offer STARTTLS: {s.ehlo_resp!r}"
        code, text = s.mail("x@a.test")
        assert code == 530 and b"5.7.0" in text, f"MAIL before STARTTLS -> {code} {text!r}"
    finally:
        s.close()


def test_unencrypted_mail_to_account_refused(full):
    bob, _ = _b_account(full)
    frm, raw = _a_signed(full, bob, encrypted=False)
    s = fh.smtp_mx_tls(full.relays["b.test"], full.ca)
    try:
        code, text = fh.mx_send(s, frm, [bob], raw)
    finally:
        s.quit()
    assert code == 523, f"unencrypted, validly signed mail to {bob} -> {code} {text}"


def test_dkim_control_and_forgeries_smtp(full, tmp_path):
    """A message signed with a.test's real key is accepted and delivered (the control: the
    signer is right); the same message unsigned, signed by a key that is not a.test's, or signed
    validly by b.test's key while From is a.test (misaligned) is refused with 554 5.7.1."""
    a, b = a_b(full)
    bob, bob_pw = _b_account(full)
    other = fh.rsa_key(tmp_path / "other.key")
    frm = a.addr(mailhelpers.random_localpart())

    def msg(body):
        return build_message(frm, [bob], body=body)

    cases = [
        ("signed by a.test's key", fh.dkim_sign(msg("control"), "a.test", "opendkim", a.dkim_key()), 250, None),
        ("unsigned", msg("unsigned"), 554, "No DKIM signature found"),
        ("d=a.test with another key", fh.dkim_sign(msg("forged key"), "a.test", "opendkim", other), 554, "5.7.1"),
        ("From a.test, signed d=b.test", fh.dkim_sign(msg("misaligned"), "b.test", "opendkim", b.dkim_key()), 554,
         "No valid DKIM signature found"),
    ]
    for what, raw, want, text_part in cases:
        s = fh.smtp_mx_tls(b, full.ca)
        try:
            code, text = fh.mx_send(s, frm, [bob], raw)
        finally:
            s.quit()
        assert code == want and (text_part is None or text_part in text), f"{what}: {code} {text}"
    got = fh.wait_inbox(b, bob, bob_pw, lambda m: len(m) >= 1, "the validly signed message", 15)
    bodies = b"".join(got)
    assert b"control" in bodies and b"forged key" not in bodies and b"misaligned" not in bodies


def test_dkim_control_and_forgeries_mxdeliv(full, tmp_path):
    """The same over HTTPS /mxdeliv: 200 with a 250 reply, 400 with the 554 reply."""
    a, b = a_b(full)
    bob, bob_pw = _b_account(full)
    other = fh.rsa_key(tmp_path / "other.key")
    frm = a.addr(mailhelpers.random_localpart())
    hdrs = [("X-MAIL-FROM", frm), ("X-MAIL-TO", bob)]

    control = fh.dkim_sign(build_message(frm, [bob], body="https control"), "a.test", "opendkim", a.dkim_key())
    status, text = fh.https_post(b, full.ca, "/mxdeliv", control, hdrs)
    assert status == 200 and text.startswith("250"), (status, text)
    for what, raw in [
        ("unsigned", build_message(frm, [bob], body="https unsigned")),
        ("another key", fh.dkim_sign(build_message(frm, [bob], body="https forged"), "a.test", "opendkim", other)),
        ("misaligned", fh.dkim_sign(build_message(frm, [bob], body="https mis"), "b.test", "opendkim",
                                    b.dkim_key())),
    ]:
        status, text = fh.https_post(b, full.ca, "/mxdeliv", raw, hdrs)
        assert status == 400 and text.startswith("554") and "5.7.1" in text, f"{what}: {status} {text}"
    got = fh.wait_inbox(b, bob, bob_pw, lambda m: len(m) >= 1, "the validly signed message", 15)
    assert len(got) == 1 and b"https control" in got[0], [g[:300] for g in got]


def test_mxdeliv_body_over_limit_413(full):
    _, b = a_b(full)
    bob, _ = _b_account(full)
    chunk = b"x" * 65536 + b"\r\n"
    n = MAX_MSG // len(chunk) + 64  # ~4 MiB over the limit, streamed (chunked)
    status, text = fh.https_post(b, full.ca, "/mxdeliv", (chunk for _ in range(n)),
                                 [("X-MAIL-FROM", "x@a.test"), ("X-MAIL-TO", bob)])
    assert status == 413 and "552" in text, (status, text[:300])
    status, _ = fh.https_post(b, full.ca, "/mxdeliv", b"", [], method="GET")
    assert status == 405


# ------------------------------------------------------------------------------------------------
# Outbound: raw mail and bounces
# ------------------------------------------------------------------------------------------------


def send_raw_a_to_b(fed, timeout: float = ARRIVAL, what: str = "raw message a.test -> b.test"):
    """alice@a.test submits an encrypted-shaped message to bob@b.test; wait until it is in bob's
    INBOX exactly once. Returns (alice, bob, raw received)."""
    a, b = a_b(fed)
    alice, alice_pw = fh.new_account(a)
    bob, bob_pw = fh.new_account(b)
    raw = build_message(alice, [bob], body=f"{what} {time.time()}")
    mid = email.message_from_bytes(raw)["Message-ID"]
    problems = fh.submit(a, alice, alice_pw, [(alice, [bob], raw)])
    assert not problems, f"a.test refused the submission of mail for b.test: {problems}"
    got = fh.wait_inbox(b, bob, bob_pw, lambda m: mid in fh.message_ids(m), f"{what} ({mid})", timeout, sender=a)
    assert fh.message_ids(got).count(mid) == 1, fh.message_ids(got)
    return (alice, alice_pw), (bob, bob_pw), [g for g in got if mid.encode() in g][0]


def test_raw_delivery_is_dkim_signed_by_sender(full):
    _, _, raw = send_raw_a_to_b(full)
    # the receiving relay verified the signature (else 554); the stored copy shows who signed
    msg = email.message_from_bytes(raw)
    sigs = msg.get_all("DKIM-Signature") or []
    # the reference strips DKIM-Signature on local delivery (lmtp_header_checks); either way the
    # message passed b.test's strict check, so a.test signed it
    for s in sigs:
        assert "d=a.test" in s.replace(" ", ""), s


def test_bounce_for_nonexistent_user(full):
    a, b = a_b(full)
    alice, alice_pw = fh.new_account(a)
    rcpt = "nosuchuser@b.test"
    raw = build_message(alice, [rcpt], body="to nobody")
    mid = email.message_from_bytes(raw)["Message-ID"]
    problems = fh.submit(a, alice, alice_pw, [(alice, [rcpt], raw)])
    assert not problems, f"a.test refused the submission of mail for b.test: {problems}"
    got = fh.wait_inbox(a, alice, alice_pw, lambda m: len(m) >= 1, f"bounce for {mid} to {rcpt}", ARRIVAL, sender=a)
    assert len(got) == 1, f"{len(got)} messages in alice's INBOX, wanted one bounce"
    bounce = email.message_from_bytes(got[0], policy=email.policy.compat32)
    assert bounce.get_content_type() == "multipart/report", bounce.get_content_type()
    assert bounce.get_param("report-type") == "delivery-status", bounce.get("Content-Type")
    assert bounce["From"] and "mailer-daemon@a.test" in bounce["From"].lower(), bounce["From"]
    assert (bounce["Auto-Submitted"] or "").strip().lower() == "auto-replied", bounce["Auto-Submitted"]
    sig = bounce.get("DKIM-Signature") or ""
    assert "d=a.test" in sig.replace(" ", "").replace("\r\n", "").replace("\t", ""), f"bounce DKIM-Signature: {sig!r}"
    assert mid.strip("<>").encode() in got[0], "the bounce does not name the original Message-ID"
    assert rcpt.encode() in got[0].lower(), "the bounce does not name the failed recipient"


# ------------------------------------------------------------------------------------------------
# Delta Chat across the relays, in three transport modes
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(MODES))
def mode(request, fed):
    """Switch the relays into the mode, then check that a raw message goes a -> b at all (so
    the Delta Chat tests of a mode without working delivery fail at once with the reason)."""
    set_off(fed, MODES[request.param])
    send_raw_a_to_b(fed, what=f"probe for mode {request.param}")
    return request.param


@pytest.fixture
def makers(dc, fed, dc_events):
    ms = {d: AccountMaker(dc, r, dc_events) for d, r in fed.relays.items()}
    yield ms
    for m in ms.values():
        m.close()


def arrive(dc_events, ac, text, fed, timeout=ARRIVAL):
    """incoming_text with both relay logs in the failure."""
    try:
        return dc_events.incoming_text(ac, text, timeout=timeout)
    except AssertionError as e:
        logs = "".join(f"\n--- {d} log tail ---\n{r.log_tail(2500)}" for d, r in fed.relays.items())
        raise AssertionError(f"message {text!r} did not arrive within {timeout}s: {e}{logs}") from None


def write_rtt():
    lines = ["Cross-relay Delta Chat round trip (send_text -> IncomingMsg on the other relay), "
             "a.test <-> b.test on loopback:"]
    lines += [f"  {k}: {v}" for k, v in sorted(RTT.items())]
    (artifacts_dir() / "federation_rtt.txt").write_text("\n".join(lines) + "\n")


def test_dc_one_to_one_both_ways(mode, fed, makers, dc_events, capsys):
    alice, = makers["a.test"].new_accounts([f"alice-{mode}"])
    bob, = makers["b.test"].new_accounts([f"bob-{mode}"])
    chat = alice.create_chat(bob)
    chat.send_text("hello bob")
    snap = arrive(dc_events, bob, "hello bob", fed)
    assert snap.show_padlock, "message across relays should be encrypted"
    snap.chat.accept()
    snap.chat.send_text("hello alice")
    back = arrive(dc_events, alice, "hello alice", fed)
    assert back.chat_id == chat.id and back.show_padlock

    # round trip times, both directions (chats accepted: IncomingMsg for every message)
    samples = []
    for i in range(4):
        for src, dst, c in ((alice, bob, chat), (bob, alice, snap.chat)):
            text = f"rtt {mode} {i} {src.id}"
            t0 = time.monotonic()
            c.send_text(text)
            ev = dc_events.wait(
                dst, lambda e: e.kind == "IncomingMsg" and dst.get_message_by_id(e.msg_id).get_snapshot().text == text,
                f"IncomingMsg {text!r}", timeout=ARRIVAL)
            assert ev
            samples.append(time.monotonic() - t0)
    transport = {"any": "default (HTTPS first)", "smtp": "SMTP (receivers without HTTPS)",
                 "https": "HTTPS (receivers without port 25)"}[mode]
    RTT[mode] = (f"{transport}: median {statistics.median(samples) * 1000:.0f} ms, "
                 f"min {min(samples) * 1000:.0f} ms, max {max(samples) * 1000:.0f} ms, {len(samples)} samples")
    write_rtt()
    with capsys.disabled():
        print(f"\nfederation RTT {RTT[mode]}")


def test_dc_securejoin_across_relays(mode, fed, makers, dc_events):
    alice, = makers["a.test"].new_accounts([f"alice-sj-{mode}"])
    bob, = makers["b.test"].new_accounts([f"bob-sj-{mode}"])
    qr = alice.get_qr_code()
    assert bob.check_qr(qr)["kind"] == "askVerifyContact"
    bob.secure_join(qr)
    try:
        inviter = dc_events.securejoin_done(alice, "SecurejoinInviterProgress", timeout=2 * ARRIVAL)
        joiner = dc_events.securejoin_done(bob, "SecurejoinJoinerProgress", timeout=2 * ARRIVAL)
    except AssertionError as e:
        logs = "".join(f"\n--- {d} log tail ---\n{r.log_tail(2500)}" for d, r in fed.relays.items())
        raise AssertionError(f"Secure-Join across relays did not finish: {e}{logs}") from None
    assert bob.get_contact_by_id(joiner.contact_id).get_snapshot().address == self_addr(alice)
    assert alice.get_contact_by_id(inviter.contact_id).get_snapshot().address == self_addr(bob)
    bob.create_chat(alice).send_text("verified hello across")
    arrive(dc_events, alice, "verified hello across", fed)
    alice.create_chat(bob).send_text("verified reply across")
    arrive(dc_events, bob, "verified reply across", fed)


def test_dc_group_on_both_relays(mode, fed, makers, dc_events):
    alice, carol = makers["a.test"].new_accounts([f"alice-g-{mode}", f"carol-g-{mode}"])
    bob, dave = makers["b.test"].new_accounts([f"bob-g-{mode}", f"dave-g-{mode}"])
    group = alice.create_group(f"fed group {mode}")
    group.add_contact(*(alice.create_contact(x) for x in (bob, carol, dave)))
    group.send_text("hello group across")
    snaps = {n: arrive(dc_events, ac, "hello group across", fed) for n, ac in
             (("bob", bob), ("carol", carol), ("dave", dave))}
    for who, snap in snaps.items():
        full = snap.chat.get_full_snapshot()
        assert len(full.contact_ids) == 4, f"{who} sees {len(full.contact_ids)} members"
        snap.chat.accept()
    snaps["bob"].chat.send_text("reply from b.test")
    for ac in (alice, carol, dave):
        arrive(dc_events, ac, "reply from b.test", fed)


def _wait_downloaded(ac, dc_events, msg_id, timeout):
    deadline = time.monotonic() + timeout
    asked = False
    while True:
        snap = ac.get_message_by_id(msg_id).get_snapshot()
        state = snap.get("download_state")
        if state == "Done" and snap.get("file") and os.path.exists(snap.file):
            return snap
        if state in ("Available", "Failure") and not asked:
            ac._rpc.download_full_message(ac.id, msg_id)
            asked = True
        if time.monotonic() > deadline:
            raise AssertionError(f"attachment not downloaded after {timeout}s (state {state!r})\n"
                                 + dc_events.recent_text(ac))
        dc_events.get(ac, 1.0)


@pytest.mark.timeout(420)
def test_dc_ten_mib_attachment_across(mode, fed, makers, dc_events, tmp_path, capsys):
    alice, = makers["a.test"].new_accounts([f"alice-big-{mode}"])
    bob, = makers["b.test"].new_accounts([f"bob-big-{mode}"])
    data = os.urandom(TEN_MIB)
    path = tmp_path / "relaybox-10mib.bin"
    path.write_bytes(data)
    t0 = time.monotonic()
    alice.create_chat(bob).send_message(text="big file across", file=str(path))
    try:
        ev = dc_events.wait(bob, lambda e: e.kind == "IncomingMsg", "incoming 10 MiB message", timeout=180)
    except AssertionError as e:
        logs = "".join(f"\n--- {d} log tail ---\n{r.log_tail(2500)}" for d, r in fed.relays.items())
        raise AssertionError(f"the 10 MiB message did not arrive at b.test: {e}{logs}") from None
    snap = _wait_downloaded(bob, dc_events, ev.msg_id, 180)
    with open(snap.file, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(data).hexdigest()
    with capsys.disabled():
        print(f"\n10 MiB across relays ({mode}) in {time.monotonic() - t0:.1f}s")


# ------------------------------------------------------------------------------------------------
# Delta Chat shows a bounced message as failed
# ------------------------------------------------------------------------------------------------

OUT_FAILED = 24


def test_dc_bounce_marks_message_failed(full, makers, dc_events):
    """alice (a.test) and bob (b.test) have an encrypted chat; then b.test loses bob's account
    (b restarts on an empty data directory with the same DKIM key); alice's next message bounces,
    and the core marks it failed (OutFailed) from the DKIM-signed DSN."""
    a, b = a_b(full)
    alice, = makers["a.test"].new_accounts(["alice-bounce"])
    bob, = makers["b.test"].new_accounts(["bob-bounce"])
    chat = alice.create_chat(bob)
    chat.send_text("before the bounce")
    arrive(dc_events, bob, "before the bounce", full).chat.accept()
    bob.create_chat(alice).send_text("keys for alice")
    arrive(dc_events, alice, "keys for alice", full)
    bob.stop_io()
    # Core 2.x drops every unencrypted message unless force_encryption is off ("Fetched
    # unencrypted message, ignoring"), DSNs included, whoever sends them (the reference's Postfix
    # bounces alike). With it off, the core reads the report and fails the message.
    alice.set_config("force_encryption", "0")

    old_data = b.data_dir
    b.stop()
    b.data_dir = old_data.parent / "data-empty"
    (b.data_dir / "dkim").mkdir(parents=True, exist_ok=True)
    shutil.copy(old_data / "dkim" / "opendkim.key", b.data_dir / "dkim" / "opendkim.key")
    try:
        b.start()
        msg = chat.send_text("into the void")
        deadline = time.monotonic() + 2 * ARRIVAL
        state = None
        while time.monotonic() < deadline:
            state = msg.get_snapshot().state
            if state == OUT_FAILED:
                break
            dc_events.get(alice, 1.0)
        assert state == OUT_FAILED, (
            f"the message to the deleted account is in state {state}, not OutFailed ({OUT_FAILED}) "
            f"after {2 * ARRIVAL}s\n{dc_events.recent_text(alice)}\n--- a.test log tail ---\n{a.log_tail()}")
        err = msg.get_snapshot().get("error")
        assert err, "a failed message should carry the bounce's reason"
    finally:
        b.stop()
        b.data_dir = old_data
        b.start()
