"""IMAP and SMTP wire behaviour of `relaybox dev`, checked with Python's imaplib/smtplib.

The expectations follow the chatmail relay (Dovecot + Postfix + filtermail) and what Delta Chat
core needs (see shared/reference/chatmail-relay.md §3-5 and deltachat-core.md).
"""

from __future__ import annotations

import imaplib
import smtplib
import socket
import ssl

import pytest

from mailhelpers import (
    REQUIRE_ENCRYPTION,
    body_of,
    build_message,
    create_account,
    fetch_inbox,
    imap_login,
    imap_quote,
    imaps,
    insecure_context,
    random_localpart,
    random_password,
    send_raw,
    smtp_login,
    smtps,
)

# What Delta Chat and the chatmail test-suite look for, plus the extensions relaybox promises.
REQUIRED_IMAP_CAPS = [
    "IMAP4REV1",
    "XCHATMAIL",
    "XDELTAPUSH",
    "IDLE",
    "METADATA",
    "QUOTA",
    "MOVE",
    "UIDPLUS",
    "CONDSTORE",
    "ENABLE",
    "ID",
    "NAMESPACE",
    "LITERAL+",
    "UNSELECT",
    "SPECIAL-USE",
]

DEFAULT_MAX_MESSAGE_SIZE = 31457280


def caps_of(conn: imaplib.IMAP4) -> set[str]:
    return {c.upper() for c in conn.capabilities}


def fresh_caps(conn: imaplib.IMAP4) -> set[str]:
    typ, data = conn.capability()
    assert typ == "OK", f"CAPABILITY -> {typ} {data}"
    return {c.upper() for c in data[0].decode().split()}


# ----------------------------------------------------------------------------------------------
# IMAP
# ----------------------------------------------------------------------------------------------


def test_imap_capabilities_before_login(relay):
    conn = imaps(relay)
    try:
        caps = fresh_caps(conn)
        missing = [c for c in REQUIRED_IMAP_CAPS if c not in caps]
        assert not missing, f"missing before login: {missing}; advertised: {sorted(caps)}"
        assert "LOGINDISABLED" not in caps, "LOGINDISABLED must not be advertised on implicit TLS"
    finally:
        conn.shutdown()


def test_imap_capabilities_after_login(relay):
    """Delta Chat reads the capabilities after LOGIN (deltachat-core.md item 1)."""
    addr, pw = relay.new_credentials()
    conn = imap_login(relay, addr, pw)
    try:
        caps = fresh_caps(conn)
        for c in ["IDLE", "MOVE", "QUOTA", "METADATA", "XDELTAPUSH", "XCHATMAIL", "ID"]:
            assert c in caps, f"{c} missing after login; advertised: {sorted(caps)}"
    finally:
        conn.logout()


def test_imap_plain_port_requires_starttls(relay):
    conn = imaplib.IMAP4(relay.ip, relay.port("imap"), timeout=30)
    try:
        caps = caps_of(conn)
        assert "STARTTLS" in caps, f"143 must offer STARTTLS; advertised: {sorted(caps)}"
        assert "LOGINDISABLED" in caps, f"143 must advertise LOGINDISABLED before TLS; advertised: {sorted(caps)}"
        addr, pw = relay.new_credentials()
        with pytest.raises(imaplib.IMAP4.error):
            conn.login(imap_quote(addr), pw)
        conn.starttls(ssl_context=insecure_context())
        caps = fresh_caps(conn)
        assert "LOGINDISABLED" not in caps, f"LOGINDISABLED still advertised after STARTTLS: {sorted(caps)}"
        assert "STARTTLS" not in caps, f"STARTTLS advertised again after STARTTLS: {sorted(caps)}"
        typ, _ = conn.login(imap_quote(addr), pw)
        assert typ == "OK"
        typ, data = conn.select("INBOX")
        assert typ == "OK", f"SELECT INBOX -> {typ} {data}"
    finally:
        try:
            conn.logout()
        except Exception:
            conn.shutdown()


def test_login_creates_account_and_second_login_works(relay):
    addr, pw = relay.new_credentials()
    create_account(relay, addr, pw)
    conn = imap_login(relay, addr, pw)
    typ, data = conn.select("INBOX")
    assert typ == "OK", f"SELECT INBOX -> {typ} {data}"
    conn.logout()
    # the same account also works for SMTP submission
    smtp_login(relay, addr, pw).quit()


def test_password_with_quotes_and_backslashes(relay):
    """/new passwords contain punctuation; LOGIN gets them as quoted strings with escapes."""
    addr = relay.addr(random_localpart())
    pw = 'q"uo\\te' + random_password(8) + "!#$%&'()*+,-./:;<=>?@[]^_`{|}~"
    create_account(relay, addr, pw)
    imap_login(relay, addr, pw).logout()
    smtp_login(relay, addr, pw).quit()


def test_login_with_unquoted_astring_username(relay):
    """`user@[127.0.0.X]` is a valid IMAP astring ('[' is an atom char, ']' an astring char)."""
    addr, pw = relay.new_credentials()
    create_account(relay, addr, pw)
    conn = imaps(relay)
    try:
        typ, _ = conn.login(addr, pw)  # imaplib sends the user name as is
        assert typ == "OK"
    finally:
        conn.logout()


def test_smtp_first_login_creates_account(relay):
    """Account creation must work on whichever protocol logs in first."""
    addr, pw = relay.new_credentials()
    smtp_login(relay, addr, pw).quit()
    imap_login(relay, addr, pw).logout()


@pytest.mark.parametrize("case", ["password-9-chars", "dot-dash-underscore"])
def test_login_rules_accept(relay, case):
    if case == "password-9-chars":
        addr, pw = relay.addr(random_localpart()), random_password(9)
    else:
        addr, pw = relay.addr("a.b-c_" + random_localpart(3)), random_password()
    create_account(relay, addr, pw)
    imap_login(relay, addr, pw).logout()


@pytest.mark.parametrize(
    "case",
    [
        "localpart-8-chars",
        "localpart-10-chars",
        "uppercase",
        "plus-sign",
        "password-admin",
        "password-8-chars",
        "foreign-domain-name",
        "foreign-ip-literal",
        "no-domain",
    ],
)
def test_login_rules_refuse(refusals_relay, case):
    relay = refusals_relay
    local = random_localpart()
    pw = random_password()
    other_ip = "127.0.0.1" if relay.ip != "127.0.0.1" else "127.0.0.254"
    addr = {
        "localpart-8-chars": relay.addr(local[:8]),
        "localpart-10-chars": relay.addr(local + "x"),
        "uppercase": relay.addr(local[:4] + "ABCDE"),
        "plus-sign": relay.addr(local[:8] + "+"),
        "password-admin": relay.addr(local),
        "password-8-chars": relay.addr(local),
        "foreign-domain-name": f"{local}@example.org",
        "foreign-ip-literal": f"{local}@[{other_ip}]",
        "no-domain": local,
    }[case]
    if case == "password-admin":
        pw = "admin"
    elif case == "password-8-chars":
        pw = random_password(8)
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(relay, addr, pw).logout()
    with pytest.raises(smtplib.SMTPAuthenticationError):
        smtp_login(relay, addr, pw).quit()


def test_wrong_password_fails_and_right_one_still_works(relay):
    addr, pw = create_account(relay)
    with pytest.raises(imaplib.IMAP4.error) as exc:
        imap_login(relay, addr, pw + "x")
    assert "AUTHENTICATIONFAILED" in str(exc.value).upper(), f"IMAP NO reply should carry [AUTHENTICATIONFAILED]: {exc.value}"
    with pytest.raises(smtplib.SMTPAuthenticationError) as sexc:
        smtp_login(relay, addr, "wrong-" + pw)
    assert sexc.value.smtp_code == 535, f"SMTP wrong password -> {sexc.value.smtp_code} {sexc.value.smtp_error!r}"
    # the stored password was not replaced by the wrong one
    imap_login(relay, addr, pw).logout()
    smtp_login(relay, addr, pw).quit()
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(relay, addr, pw + "x")


# ----------------------------------------------------------------------------------------------
# SMTP
# ----------------------------------------------------------------------------------------------


def test_smtps_is_tls13(relay):
    with socket.create_connection((relay.ip, relay.port("submissions")), timeout=30) as raw:
        with insecure_context().wrap_socket(raw) as tls:
            assert tls.version() == "TLSv1.3", f"465 negotiated {tls.version()}"
            greeting = tls.recv(512)
            assert greeting.startswith(b"220"), greeting


def test_ehlo_advertises_size_and_auth(relay):
    with smtps(relay) as s:
        assert s.has_extn("size"), f"EHLO on 465 lacks SIZE: {s.esmtp_features}"
        assert s.esmtp_features["size"].strip() == str(DEFAULT_MAX_MESSAGE_SIZE), s.esmtp_features
        assert "PLAIN" in s.esmtp_features.get("auth", "").upper().split(), s.esmtp_features


def test_submission_587_requires_starttls_for_auth(relay):
    addr, pw = relay.new_credentials()
    with smtplib.SMTP(relay.ip, relay.port("submission"), timeout=30) as s:
        s.ehlo("relaybox-test")
        assert s.has_extn("starttls"), f"587 must offer STARTTLS: {s.esmtp_features}"
        code, text = s.docmd("AUTH", "PLAIN AGVtAGVt")
        assert code >= 500, f"AUTH before STARTTLS on 587 must be refused, got {code} {text!r}"
        s.starttls(context=insecure_context())
        s.ehlo("relaybox-test")
        s.login(addr, pw)


def test_smtp_port_25_offers_starttls(relay):
    with smtplib.SMTP(relay.ip, relay.port("smtp"), timeout=30) as s:
        code, _ = s.ehlo("relay.example")
        assert code == 250
        assert s.has_extn("starttls"), f"25 must offer STARTTLS: {s.esmtp_features}"
        s.starttls(context=insecure_context())
        code, _ = s.ehlo("relay.example")
        assert code == 250


def test_vrfy_is_252(relay):
    addr, pw = create_account(relay)
    with smtp_login(relay, addr, pw) as s:
        for who in (addr, relay.addr("nosuchusr"), "postmaster"):
            code, text = s.verify(who)
            assert code == 252, f"VRFY {who} -> {code} {text!r}"


def test_mail_from_someone_else_is_553_at_rcpt(relay):
    """The reference's test_authenticated_from: Postfix (smtpd_delay_reject) answers the foreign
    sender at RCPT TO, so smtplib reports it in SMTPRecipientsRefused.recipients."""
    addr, pw = create_account(relay)
    other = relay.addr(random_localpart())
    rcpt, _ = create_account(relay)
    with smtp_login(relay, addr, pw) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail(other, [rcpt], build_message(other, rcpt))
    code, text = e.value.recipients[rcpt]
    assert code == 553, f"RCPT TO:<{rcpt}> after MAIL FROM:<{other}> as {addr} -> {code} {text!r}"
    assert text == f"5.7.1 <{other}>: Sender address rejected: not owned by user {addr}".encode()


def test_from_header_must_match_envelope(relay):
    sender, spw = create_account(relay)
    rcpt, _ = create_account(relay)
    forged = relay.addr(random_localpart())
    raw = build_message(sender, rcpt, header_from=forged)
    code, text = send_raw(relay, sender, spw, rcpt, raw)
    assert code == 500, f"forged From -> {code} {text!r}"
    assert b"Invalid FROM" in text, f"reply text should say 'Invalid FROM': {text!r}"


def test_size_above_limit_is_552(relay):
    addr, pw = create_account(relay)
    with smtp_login(relay, addr, pw) as s:
        code, text = s.mail(addr, ["SIZE=40000000"])
        assert code == 552, f"MAIL FROM SIZE=40000000 (limit {DEFAULT_MAX_MESSAGE_SIZE}) -> {code} {text!r}"
    with smtp_login(relay, addr, pw) as s:
        code, text = s.mail(addr, ["SIZE=1000"])
        assert code == 250, f"MAIL FROM SIZE=1000 -> {code} {text!r}"


def test_local_delivery_arrives_in_inbox(relay):
    sender, spw = create_account(relay)
    rcpt, rpw = create_account(relay)
    raw = build_message(sender, rcpt, body="local delivery works\r\nsecond line", subject="local")
    code, text = send_raw(relay, sender, spw, rcpt, raw)
    assert code == 250, f"DATA -> {code} {text!r}"
    [got] = fetch_inbox(relay, rcpt, rpw, want=1)
    assert body_of(got) == body_of(raw), f"body changed in transit:\nsent {body_of(raw)[:300]!r}\ngot  {body_of(got)[:300]!r}"
    assert f"{sender}".encode() in got.split(b"\r\n\r\n", 1)[0], "From header lost"


def test_delivery_to_two_local_recipients(relay):
    sender, spw = create_account(relay)
    r1, p1 = create_account(relay)
    r2, p2 = create_account(relay)
    raw = build_message(sender, [r1, r2], body="to both")
    code, text = send_raw(relay, sender, spw, [r1, r2], raw)
    assert code == 250, f"DATA -> {code} {text!r}"
    for r, p in ((r1, p1), (r2, p2)):
        [got] = fetch_inbox(relay, r, p, want=1)
        assert body_of(got) == body_of(raw)


def test_dot_body_survives(relay):
    """A message whose body is a single '.' (dot-stuffed to '..' on the wire) arrives as '.'."""
    sender, spw = create_account(relay)
    rcpt, rpw = create_account(relay)
    raw = build_message(sender, rcpt, body=".")
    code, text = send_raw(relay, sender, spw, rcpt, raw)
    assert code == 250, f"DATA -> {code} {text!r}"
    [got] = fetch_inbox(relay, rcpt, rpw, want=1)
    assert body_of(got) == body_of(raw), f"sent body {body_of(raw)[:80]!r}, got {body_of(got)[:80]!r}"
    if not REQUIRE_ENCRYPTION:
        assert body_of(got) == b".\r\n"


def test_dot_lines_inside_body_survive(relay):
    sender, spw = create_account(relay)
    rcpt, rpw = create_account(relay)
    body = "first\r\n.\r\n..\r\n.leading dot\r\nlast"
    raw = build_message(sender, rcpt, body=body)
    code, text = send_raw(relay, sender, spw, rcpt, raw)
    assert code == 250, f"DATA -> {code} {text!r}"
    [got] = fetch_inbox(relay, rcpt, rpw, want=1)
    assert body_of(got) == body_of(raw)


def test_encrypted_shaped_message_is_accepted(relay):
    """The shape every message will need once the encryption policy is on (filtermail rule)."""
    sender, spw = create_account(relay)
    rcpt, rpw = create_account(relay)
    raw = build_message(sender, rcpt, body="preamble", encrypted=True)
    code, text = send_raw(relay, sender, spw, rcpt, raw)
    assert code == 250, f"DATA -> {code} {text!r}"
    [got] = fetch_inbox(relay, rcpt, rpw, want=1)
    assert body_of(got) == body_of(raw)


@pytest.mark.skipif(not REQUIRE_ENCRYPTION, reason="encryption policy not enabled yet (RELAYBOX_TEST_MAIL=encrypted)")
def test_unencrypted_mail_is_rejected(relay):
    sender, spw = create_account(relay)
    rcpt, _ = create_account(relay)
    raw = build_message(sender, rcpt, body="cleartext", encrypted=False)
    with smtp_login(relay, sender, spw) as s:
        s.mail(sender)
        code, text = s.rcpt(rcpt)
        if code in (250, 251):
            code, text = s.data(raw)
    assert code == 523, f"unencrypted mail -> {code} {text!r}"


def test_unauthenticated_submission_is_refused(relay):
    rcpt, _ = create_account(relay)
    with smtps(relay) as s:
        code, text = s.mail(rcpt)
        if code == 250:
            code, text = s.rcpt(rcpt)
        assert code >= 500, f"submission without AUTH must be refused, got {code} {text!r}"


def test_smtps_refuses_tls12(relay):
    """465 is implicit TLS 1.3 only (as the reference's Postfix smtps)."""
    ctx = insecure_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((relay.ip, relay.port("submissions")), timeout=30) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            with ctx.wrap_socket(raw) as tls:
                tls.recv(100)


# ----------------------------------------------------------------------------------------------
# What Delta Chat core relies on (shared/reference/deltachat-core.md, items 4-9)
# ----------------------------------------------------------------------------------------------

for _cmd in ("ID", "GETMETADATA"):
    imaplib.Commands.setdefault(_cmd, ("NONAUTH", "AUTH", "SELECTED"))


def test_select_reports_uidvalidity_and_uidnext(relay):
    addr, pw = create_account(relay)
    conn = imap_login(relay, addr, pw)
    try:
        typ, _ = conn.select("INBOX")
        assert typ == "OK"
        for code in ("UIDVALIDITY", "UIDNEXT", "EXISTS"):
            typ, data = conn.response(code)
            assert data and data[0] is not None, f"SELECT INBOX did not report {code}"
        # core's resync fetch on an empty mailbox: OK and nothing
        typ, data = conn.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID X-MICROSOFT-ORIGINAL-MESSAGE-ID)])")
        assert typ == "OK", f"UID FETCH 1:* on empty INBOX -> {typ} {data}"
        assert data in ([None], []), data
    finally:
        conn.logout()


def test_quota_root_has_matching_quota(relay):
    """`a root without its QUOTA line is an error` in core (src/quota.rs)."""
    addr, pw = create_account(relay)
    conn = imap_login(relay, addr, pw)
    try:
        typ, data = conn.getquotaroot("INBOX")
        assert typ == "OK", f"GETQUOTAROOT INBOX -> {typ} {data}"
        roots, quotas = data
        assert roots and roots[0], f"no QUOTAROOT line: {data}"
        root_words = roots[0].decode().split()
        assert root_words[0].strip('"').upper() == "INBOX" and len(root_words) >= 2, roots
        root = root_words[1].strip('"')
        assert quotas and quotas[0], f"no QUOTA line for root {root!r}: {data}"
        q = quotas[0].decode()
        assert q.strip('"').startswith(root) or q.startswith(f'"{root}"'), f"QUOTA {q!r} is not for root {root!r}"
        assert "STORAGE" in q.upper(), q
    finally:
        conn.logout()


def test_id_and_getmetadata_are_well_formed(relay):
    addr, pw = create_account(relay)
    conn = imap_login(relay, addr, pw)
    try:
        typ, data = conn._simple_command("ID", '("name" "Delta Chat")')
        assert typ == "OK", f"ID -> {typ} {data}"
        typ, data = conn._untagged_response(typ, data, "ID")
        assert data and data[0] is not None, "no untagged * ID reply"
        keys = (
            "(/shared/comment /shared/admin /shared/vendor/deltachat/irohrelay "
            "/shared/vendor/deltachat/turn /shared/vendor/deltachat/maxsmtprecipients "
            "/shared/vendor/deltachat/appversions)"
        )
        typ, data = conn._simple_command("GETMETADATA", '""', keys)
        assert typ == "OK", f"GETMETADATA -> {typ} {data}"
    finally:
        conn.logout()


def test_store_deleted_then_close_expunges(relay):
    """Core deletes with UID STORE +FLAGS (\\Deleted) and CLOSE (not EXPUNGE)."""
    sender, spw = create_account(relay)
    rcpt, rpw = create_account(relay)
    for i in range(2):
        code, text = send_raw(relay, sender, spw, rcpt, build_message(sender, rcpt, body=f"msg {i}"))
        assert code == 250, f"DATA -> {code} {text!r}"
    fetch_inbox(relay, rcpt, rpw, want=2)
    conn = imap_login(relay, rcpt, rpw)
    try:
        conn.select("INBOX")
        typ, data = conn.uid("SEARCH", "ALL")
        uids = data[0].split()
        assert len(uids) == 2, uids
        typ, data = conn.uid("STORE", uids[0], "+FLAGS", "(\\Deleted)")
        assert typ == "OK", f"UID STORE -> {typ} {data}"
        typ, data = conn.close()
        assert typ == "OK", f"CLOSE -> {typ} {data}"
        conn.select("INBOX")
        typ, data = conn.uid("SEARCH", "ALL")
        assert data[0].split() == [uids[1]], f"after CLOSE INBOX has {data[0]!r}, expected only {uids[1]!r}"
    finally:
        conn.logout()


# ----------------------------------------------------------------------------------------------
# Restarts: nothing accepted is lost, UIDs are never reused under one UIDVALIDITY
# ----------------------------------------------------------------------------------------------


def _uid_state(relay, addr, pw):
    conn = imap_login(relay, addr, pw)
    try:
        conn.select("INBOX", readonly=True)
        _, v = conn.response("UIDVALIDITY")
        _, n = conn.response("UIDNEXT")
        _, data = conn.uid("SEARCH", "ALL")
        uids = [int(u) for u in (data[0] or b"").split()]
        return int(v[0]), int(n[0]), uids
    finally:
        conn.logout()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_restart_keeps_mail_and_uids(tmp_path, how):
    from conftest import Relay

    r = Relay(f"restart-{how}", tmp_path / "relay")
    r.start()
    try:
        sender, spw = create_account(r)
        rcpt, rpw = create_account(r)
        raws = [build_message(sender, rcpt, body=f"before restart {i}") for i in range(3)]
        for raw in raws:
            code, text = send_raw(r, sender, spw, rcpt, raw)
            assert code == 250, f"DATA -> {code} {text!r}"
        fetch_inbox(r, rcpt, rpw, want=3)
        # delete the newest, so a store that derives UIDNEXT from the highest UID would reuse it
        conn = imap_login(r, rcpt, rpw)
        conn.select("INBOX")
        _, data = conn.uid("SEARCH", "ALL")
        newest = data[0].split()[-1]
        conn.uid("STORE", newest, "+FLAGS", "(\\Deleted)")
        conn.close()
        conn.logout()
        validity, uidnext, uids = _uid_state(r, rcpt, rpw)
        assert len(uids) == 2 and uidnext > int(newest), (uidnext, uids, newest)
        last = None
        if how == "sigkill":
            # a message acknowledged with 250 must survive a kill right after the reply
            last = build_message(sender, rcpt, body="acknowledged just before the kill")
            code, text = send_raw(r, sender, spw, rcpt, last)
            assert code == 250, f"DATA -> {code} {text!r}"
            r.proc.kill()
            r.proc.wait(timeout=10)
        else:
            assert r.stop() == 0, f"relay exit code after SIGTERM: {r.proc.returncode}\n{r.stderr()[-3000:]}"

        r2 = Relay(f"restart-{how}-2", tmp_path / "relay", ip=r.ip, offset=r.offset)
        r2.stderr_path = tmp_path / "relay" / "relay2.stderr.log"
        r2.stdout_path = tmp_path / "relay" / "relay2.stdout.log"
        r2.start()
        try:
            if last is not None:
                got = fetch_inbox(r2, rcpt, rpw, want=3)
                assert body_of(last) in [body_of(m) for m in got], "the acknowledged message was lost in the kill"
                validity, uidnext, uids = _uid_state(r2, rcpt, rpw)
                raws = raws[:2] + [last]
            else:
                raws = raws[:2]
            validity2, uidnext2, uids2 = _uid_state(r2, rcpt, rpw)
            assert uids2 == uids, f"messages after restart {uids2}, before {uids}"
            if validity2 == validity:
                assert uidnext2 >= uidnext, f"UIDNEXT went back from {uidnext} to {uidnext2} under one UIDVALIDITY"
            got = fetch_inbox(r2, rcpt, rpw, want=len(raws))
            assert sorted(body_of(m) for m in got) == sorted(body_of(x) for x in raws)
            raw = build_message(sender, rcpt, body="after restart")
            code, text = send_raw(r2, sender, spw, rcpt, raw)
            assert code == 250, f"DATA after restart -> {code} {text!r}"
            fetch_inbox(r2, rcpt, rpw, want=len(raws) + 1)
            validity3, _, uids3 = _uid_state(r2, rcpt, rpw)
            new = [u for u in uids3 if u not in uids]
            assert len(new) == 1, uids3
            if validity3 == validity:
                assert new[0] >= uidnext, f"new message got UID {new[0]}, but UIDNEXT was {uidnext} before restart"
        except BaseException:
            r2.keep_logs(f"restart-{how}-2")
            raise
        finally:
            r2.stop()
    except BaseException:
        r.keep_logs(f"restart-{how}")
        raise
    finally:
        r.stop()


def test_sigkill_mid_burst_loses_no_acknowledged_message(tmp_path):
    """Four senders deliver at once (group commits with small bodies inside the index's log
    record); a SIGKILL in the middle: after the restart every message that got its 250 is
    there, whole. Bounded: at most 4 x 15 messages, the kill after 20 replies or 15 s."""
    import threading
    import time

    from conftest import Relay

    r = Relay("burst-kill", tmp_path / "relay")
    r.start()
    try:
        rcpt, rpw = create_account(r)
        senders = [create_account(r) for _ in range(4)]
        acked: list[bytes] = []
        lock = threading.Lock()

        def burst(addr, pw, n):
            try:
                with smtp_login(r, addr, pw) as s:
                    for i in range(15):
                        raw = build_message(addr, rcpt, body=f"burst {n}-{i} " + "x" * 3000)
                        s.sendmail(addr, [rcpt], raw)
                        with lock:
                            acked.append(body_of(raw))
            except (OSError, smtplib.SMTPException):
                pass  # the kill cut the connection

        threads = [threading.Thread(target=burst, args=(a, p, n), daemon=True) for n, (a, p) in enumerate(senders)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with lock:
                if len(acked) >= 20:
                    break
            time.sleep(0.01)
        r.proc.kill()
        r.proc.wait(timeout=10)
        for t in threads:
            t.join(timeout=30)
        with lock:
            acked_at_kill = list(acked)
        assert len(acked_at_kill) >= 20, f"only {len(acked_at_kill)} messages acknowledged before the kill"

        r2 = Relay("burst-kill-2", tmp_path / "relay", ip=r.ip, offset=r.offset)
        r2.stderr_path = tmp_path / "relay" / "relay2.stderr.log"
        r2.stdout_path = tmp_path / "relay" / "relay2.stdout.log"
        r2.start()
        try:
            got = {body_of(m) for m in fetch_inbox(r2, rcpt, rpw, want=len(acked_at_kill))}
            lost = [b[:20] for b in acked_at_kill if b not in got]
            assert not lost, f"{len(lost)} acknowledged messages lost in the kill: {lost[:3]}"
        except BaseException:
            r2.keep_logs("burst-kill-2")
            raise
        finally:
            r2.stop()
    except BaseException:
        r.keep_logs("burst-kill")
        raise
    finally:
        r.stop()

def test_queue_command_shows_and_flushes_waiting_mail(relay):
    """Mail for a domain nobody answers for waits in the outbound queue; `relaybox queue`
    shows it with its last error (through the running relay's control socket), and `--flush`
    retries it at once."""
    import subprocess
    import time

    from conftest import RELAYBOX_BIN

    addr, pw = create_account(relay)
    # 127.0.0.254: nothing listens there on 443 or 25, so each attempt fails at once
    rcpt = f"{random_localpart()}@[127.0.0.254]"
    code, text = send_raw(relay, addr, pw, rcpt, build_message(addr, rcpt, encrypted=True))
    assert code == 250 and b"queued" in text, (code, text)

    def queue(*extra):
        out = subprocess.run([str(RELAYBOX_BIN), "queue", "--data", str(relay.data_dir), *extra],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    deadline = time.monotonic() + 30
    while True:
        text = queue()
        if rcpt in text and "last error: 4" in text:
            break
        assert time.monotonic() < deadline, f"no failed attempt shown within 30 s:\n{text}"
        time.sleep(0.3)
    assert text.startswith("1 message(s) for 1 recipient(s) waiting"), text
    assert f"from {addr}" in text and "1 attempt(s)" in text, text
    flushed = queue("--flush")
    assert "retrying all of them now" in flushed, flushed
    deadline = time.monotonic() + 30
    while "2 attempt(s)" not in queue():
        assert time.monotonic() < deadline, "--flush did not retry"
        time.sleep(0.3)
