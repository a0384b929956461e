"""The policy as a mail client meets it over smtplib: the encryption gate, the send rate, the
size limit, and what the recipient finally fetches (reference §3.4, §3.11)."""

from __future__ import annotations

import re
import smtplib

import pytest

from mailhelpers import (
    build_message,
    create_account,
    fake_pgp_armored,
    fetch_inbox,
    smtp_login,
)

ENCRYPTION_NEEDED = "523 Encryption Needed: Invalid Unencrypted Mail"


def submit(relay, sender, pw, rcpt, raw):
    """MAIL, RCPT, DATA; returns the (code, text) of the first refusal or of the final reply."""
    with smtp_login(relay, sender, pw) as s:
        code, text = s.mail(sender)
        if code != 250:
            return code, text
        code, text = s.rcpt(rcpt)
        if code not in (250, 251):
            return code, text
        return s.data(raw)


def inbox_count(relay, addr, pw):
    return len(fetch_inbox(relay, addr, pw, want=0, timeout=1))


def plain(sender, rcpt):
    return build_message(sender, rcpt, body="hello in clear text", encrypted=False)


def fake_armor(sender, rcpt):
    """text/plain whose body merely looks like an OpenPGP message."""
    return build_message(sender, rcpt, body=fake_pgp_armored().decode(), encrypted=False)


def literal_packet(sender, rcpt):
    """The PGP/MIME structure, but the payload is a literal-data packet anyone can read."""
    return build_message(sender, rcpt, body="", encrypted=True, payload=fake_pgp_armored(literal=True))


@pytest.mark.parametrize("make", [plain, fake_armor, literal_packet], ids=["plain", "fake-armor", "literal-packet"])
def test_unencrypted_kinds_get_523_and_nothing_is_stored(relay, make):
    sender, spw = create_account(relay)
    rcpt, rpw = create_account(relay)
    code, text = submit(relay, sender, spw, rcpt, make(sender, rcpt))
    assert f"{code} {text.decode()}" == ENCRYPTION_NEEDED
    assert inbox_count(relay, rcpt, rpw) == 0


def test_eleventh_message_of_a_burst_gets_450(relay):
    sender, spw = create_account(relay)
    rcpt, rpw = create_account(relay)
    with smtp_login(relay, sender, spw) as s:
        for i in range(10):
            code, text = s.mail(sender)
            assert code == 250, f"message {i}: MAIL -> {code} {text!r}"
            assert s.rcpt(rcpt)[0] == 250
            code, text = s.data(build_message(sender, rcpt, body=f"burst {i}"))
            assert code == 250, f"message {i}: DATA -> {code} {text!r}"
        # The reference's test_exceed_rate_limit: the 450 comes at RCPT TO (Postfix
        # smtpd_delay_reject), so smtplib reports it in SMTPRecipientsRefused.recipients.
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail(sender, [rcpt], build_message(sender, rcpt, body="burst 10"))
    code, text = e.value.recipients[rcpt]
    assert code == 450, f"11th message, RCPT -> {code} {text!r}"
    assert text.startswith(f"4.7.1: Too much mail from {sender}".encode()), text
    assert inbox_count(relay, rcpt, rpw) == 10


def test_message_over_the_size_limit_gets_552(relay):
    sender, spw = create_account(relay)
    rcpt, rpw = create_account(relay)
    big = build_message(sender, rcpt, body="x" * 100 + "\r\n" + ("y" * 998 + "\r\n") * 32000)
    assert len(big) > 31_457_280
    code, text = submit(relay, sender, spw, rcpt, big)
    assert code == 552, f"{code} {text!r}"
    assert inbox_count(relay, rcpt, rpw) == 0


def test_recipient_sees_no_subject_and_no_sender_ip(relay):
    sender, spw = create_account(relay)
    rcpt, rpw = create_account(relay)
    raw = build_message(
        sender,
        rcpt,
        body="hi",
        subject="our secret plans",
        extra_headers={
            "Received": "from [192.0.2.77] by laptop.example with ESMTPSA",
            "X-Originating-IP": "[192.0.2.77]",
            "User-Agent": "Mutt/2.2",
            "X-Mailer": "Thunderbird",
        },
    )
    code, text = submit(relay, sender, spw, rcpt, raw)
    assert code == 250, f"{code} {text!r}"
    [got] = fetch_inbox(relay, rcpt, rpw, want=1)
    head = got.split(b"\r\n\r\n", 1)[0].decode()
    assert re.search(r"^Subject: \[\.\.\.\]\r?$", head, re.M), head
    assert "secret" not in head
    for name in ("Received", "X-Originating-IP", "User-Agent", "X-Mailer"):
        assert not re.search(rf"^{name}:", head, re.M | re.I), f"{name} left in:\n{head}"
    # No IP address of any kind in the header the recipient fetches.
    assert not re.search(r"\b\d{1,3}(\.\d{1,3}){3}\b", head.replace(relay.ip, "")), head
