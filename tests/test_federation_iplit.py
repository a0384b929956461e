"""IP-literal relays `[127.0.0.2]` <-> `[127.0.0.3]` federate without DNS.

Both run `relaybox serve` with an IP-literal mail_domain, their self-signed certificates (made on
first start) and a DNS server address where nothing answers, so any DNS lookup on the way would
fail the delivery. Mail between IP literals is not DKIM-signed and not DKIM-checked.
"""

from __future__ import annotations

import pytest

import conftest
import fedhelpers as fh
from dchelpers import AccountMaker

A_IP, B_IP = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def pair(request, tmp_path_factory):
    name = conftest._safe(request.module.__name__)
    work = tmp_path_factory.mktemp(f"fed-{name}")
    offset = fh.pick_offset([A_IP, B_IP])
    dead_dns = f"127.0.0.1:{fh.free_udp_tcp_port('127.0.0.1')}"  # nobody listens there
    relays = [
        fh.FedRelay(f"{name}-{ip}", work / ip, ip, offset, None, dead_dns, None, None,
                    {"queue_retry_initial": "1s", "queue_retry_max": "3s"})
        for ip in (A_IP, B_IP)
    ]
    failed_before = request.session.testsfailed
    try:
        for r in relays:
            r.start()
        yield relays
    finally:
        for r in relays:
            r.stop()
        if request.session.testsfailed > failed_before:
            for r in relays:
                r.keep_logs(f"{name}-{r.ip}")


def test_ip_literal_relays_federate_without_dns(pair, dc, dc_events):
    a, b = pair
    assert a.domain == "[127.0.0.2]" and b.domain == "[127.0.0.3]"
    ma, mb = AccountMaker(dc, a, dc_events), AccountMaker(dc, b, dc_events)
    try:
        alice, = ma.new_accounts(["alice-ip"])
        bob, = mb.new_accounts(["bob-ip"])
        alice.create_chat(bob).send_text("hello [127.0.0.3]")
        for text, ac in (("hello [127.0.0.3]", bob), ("hello [127.0.0.2]", alice)):
            if ac is alice:
                snap.chat.accept()
                snap.chat.send_text(text)
            try:
                snap = dc_events.incoming_text(ac, text, timeout=60)
            except AssertionError as e:
                raise AssertionError(
                    f"{text!r} did not arrive within 60 s: {e}\n--- {a.domain} log tail ---\n{a.log_tail()}"
                    f"\n--- {b.domain} log tail ---\n{b.log_tail()}") from None
            assert snap.show_padlock
    finally:
        ma.close()
        mb.close()
