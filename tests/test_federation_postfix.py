"""Interop with a classic MTA: Debian's Postfix, signing with Debian's OpenDKIM, for `c.test`
on 127.0.0.4 (its own instance: `postfix -c DIR start`, own queue and data directories under the
test's tmp dir; see fedhelpers.PostfixInstance), beside relaybox `a.test` on 127.0.0.2. dnsmasq
serves a.test's records (from `relaybox dns`) and c.test's A/MX and the TXT record made by
`opendkim-genkey`.

* Postfix -> relaybox: DKIM-signed encrypted-shaped mail is accepted and arrives; unsigned mail
  (Postfix's second smtpd without the milter) and misaligned mail (From d.test, signed d=c.test)
  are refused with 554 5.7.1, which Postfix logs (and bounces to its local sender).
* relaybox -> Postfix: a relaybox user writes to someone@c.test; relaybox looks up c.test's MX,
  finds no /mxdeliv there and delivers over SMTP with STARTTLS (certificate from the private CA
  for mx.c.test); the message lands in Postfix's Maildir signed by a.test. This one waits on
  relaybox's outbound delivery.
"""

from __future__ import annotations

import email
import re
import shutil
import smtplib
import tempfile
import time
from pathlib import Path

import pytest

import fedhelpers as fh
from mailhelpers import build_message

A_IP, C_IP = "127.0.0.2", "127.0.0.4"


@pytest.fixture(scope="module")
def fed(request, tmp_path_factory):
    holder = {}

    def build(f):
        f.offset = fh.pick_offset([A_IP, C_IP])
        f.add_named("a.test", A_IP, {"queue_retry_initial": "1s", "queue_retry_max": "3s"})
        # Postfix/OpenDKIM drop privileges: their directory must be reachable for their users
        pfdir = Path(tempfile.mkdtemp(prefix="relaybox-postfix-", dir="/tmp"))
        pfdir.chmod(0o755)
        pf = fh.PostfixInstance(pfdir, C_IP, f.offset, f.ca, dict(f.relays))
        f.extra_records = pf.prepare()
        holder["pf"] = pf

    gen = fh.federation_fixture(request, tmp_path_factory, build)
    f = next(gen)
    pf = holder["pf"]
    failed_before = request.session.testsfailed
    try:
        pf.start()
        f.postfix = pf
        yield f
    finally:
        pf.stop()
        if request.session.testsfailed > failed_before:
            pf.keep_logs(fh.conftest._safe(request.module.__name__))
        shutil.rmtree(pf.workdir, ignore_errors=True)
        try:
            next(gen)
        except StopIteration:
            pass


def _postfix_send(pf, port, frm, to, raw):
    s = smtplib.SMTP(pf.ip, port, local_hostname="client.c.test", timeout=30)
    try:
        s.sendmail(frm, [to], raw)
    finally:
        s.quit()


def _wait_log(pf, pattern, timeout, what, relay=None):
    deadline = time.monotonic() + timeout
    while True:
        log = pf.log()
        m = re.search(pattern, log)
        if m:
            return m
        if time.monotonic() > deadline:
            extra = f"\n--- {relay.domain} log tail ---\n{relay.log_tail(2500)}" if relay else ""
            raise AssertionError(f"{what}: /{pattern}/ not in the Postfix log within {timeout}s\n"
                                 f"--- postfix log tail ---\n{fh.tail(pf.log(), 4000)}\n"
                                 f"--- opendkim log ---\n{fh.tail(pf.opendkim_log.read_text(errors='replace'), 1500)}"
                                 f"\n--- mailq ---\n{pf.mailq()}{extra}")
        time.sleep(0.3)


def test_dns_serves_c_test_dkim_record(fed):
    pf = fed.postfix
    name, value = pf.dkim_txt()
    rcode, txt = fh.dns_query(("127.0.0.1", fed.dns.port), name, "TXT")
    assert txt == [("TXT", value)], txt
    rcode, mx = fh.dns_query(("127.0.0.1", fed.dns.port), "c.test", "MX")
    assert mx == [("MX", 10, "mx.c.test")], mx


def test_postfix_dkim_signed_mail_accepted(fed):
    a, pf = fed.relays["a.test"], fed.postfix
    alice, pw = fh.new_account(a)
    frm = "someone@c.test"
    raw = build_message(frm, [alice], body="from postfix, signed")
    mid = email.message_from_bytes(raw)["Message-ID"]
    _postfix_send(pf, pf.smtp_port, frm, alice, raw)
    try:
        got = fh.wait_inbox(a, alice, pw, lambda m: mid in fh.message_ids(m), "Postfix's signed message", 45)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- postfix log tail ---\n{fh.tail(pf.log(), 3000)}") from None
    msg = [g for g in got if mid.encode() in g][0]
    assert b"from postfix, signed" in msg
    # relaybox accepted it over port 25 with TLS (Postfix: smtp_tls_security_level = encrypt)
    m = _wait_log(pf, r"status=sent \(250[^)]*\)", 10, "Postfix's delivery report", a)
    assert m


def test_postfix_unsigned_mail_refused(fed):
    a, pf = fed.relays["a.test"], fed.postfix
    alice, _ = fh.new_account(a)
    frm = "unsigned@c.test"
    raw = build_message(frm, [alice], body="from postfix, unsigned")
    _postfix_send(pf, pf.unsigned_port, frm, alice, raw)
    _wait_log(pf, re.escape(f"to=<{alice}>") + r".*said: 554 5\.7\.1 No DKIM signature found", 45,
              "relaybox's refusal of the unsigned message", a)
    _wait_log(pf, re.escape(f"to=<{alice}>") + r".*status=bounced", 10, "Postfix's bounce", a)


def test_postfix_misaligned_mail_refused(fed):
    a, pf = fed.relays["a.test"], fed.postfix
    alice, _ = fh.new_account(a)
    frm = f"someone@{pf.misaligned}"  # OpenDKIM signs it with d=c.test
    raw = build_message(frm, [alice], body="from postfix, misaligned")
    _postfix_send(pf, pf.smtp_port, frm, alice, raw)
    # "No valid" (not "No DKIM signature found"): OpenDKIM did sign it, with the wrong d=
    _wait_log(pf, re.escape(f"to=<{alice}>") + r".*said: 554 5\.7\.1 No valid DKIM signature found", 45,
              "relaybox's refusal of the misaligned message", a)


def test_relaybox_delivers_to_postfix_with_starttls(fed):
    a, pf = fed.relays["a.test"], fed.postfix
    alice, pw = fh.new_account(a)
    to = "someone@c.test"
    raw = build_message(alice, [to], body="from relaybox to postfix")
    mid = email.message_from_bytes(raw)["Message-ID"]
    problems = fh.submit(a, alice, pw, [(alice, [to], raw)])
    assert not problems, f"a.test refused the submission of mail for c.test: {problems}"
    deadline = time.monotonic() + 60
    while True:
        mine = [m for m in pf.delivered() if mid.encode() in m]
        if mine:
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"message {mid} did not arrive at Postfix (c.test) within 60 s\n"
                f"--- a.test log tail ---\n{a.log_tail()}\n--- postfix log tail ---\n{fh.tail(pf.log(), 3000)}")
        time.sleep(0.5)
    assert len(mine) == 1
    msg = email.message_from_bytes(mine[0])
    sigs = [s.replace(" ", "").replace("\r\n", "").replace("\n", "").replace("\t", "")
            for s in msg.get_all("DKIM-Signature") or []]
    assert any("d=a.test" in s for s in sigs), f"not DKIM-signed by a.test: {sigs}"
    # Postfix saw a TLS session from relaybox (smtpd_tls_loglevel = 1)
    _wait_log(pf, r"Anonymous TLS connection established from [^\n]*127\.0\.0\.\d+\]", 5,
              "a TLS connection from relaybox", a)
    assert b"from relaybox to postfix" in mine[0]
