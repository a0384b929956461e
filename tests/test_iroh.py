"""The iroh relay for webxdc realtime channels (issue 20): two real Delta Chat cores exchange
realtime data through relaybox's own iroh relay, the one announced in IMAP METADATA
`/shared/vendor/deltachat/irohrelay`.

The test relay is an IP literal with a self-signed certificate, so the announced URL is
`http://<ip>:<http port>` (iroh verifies relay certificates against its built-in roots only). The
cores have no other relay: core uses the announced one alone, and nothing else is reachable here.
The relay's metrics show the connections and bytes went through it.

Also measured (test-artifacts/iroh.txt): the relay's RSS with the two clients connected."""

from __future__ import annotations

import io
import os
import re
import ssl
import time
import urllib.request
import zipfile

import mailhelpers
from conftest import RELAYBOX_BIN  # noqa: F401  (the binary the fixtures start)

import imaplib

imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))

TIMEOUT = 60


def metadata_irohrelay(relay) -> str | None:
    addr, password = relay.new_credentials()
    conn = mailhelpers.imap_login(relay, addr, password)
    try:
        typ, data = conn._simple_command("GETMETADATA", '""', "/shared/vendor/deltachat/irohrelay")
        assert typ == "OK", data
        typ, data = conn._untagged_response(typ, data, "METADATA")
        item = data[0]
        value = item[1] if isinstance(item, tuple) else re.search(rb'"([^"]*)"\)$', item)
        if value is None:
            return None
        return (value if isinstance(value, bytes) else value.group(1)).decode()
    finally:
        conn.logout()


def test_metadata_announces_the_local_relay_and_it_answers_probes(relay):
    url = metadata_irohrelay(relay)
    assert url == f"http://{relay.ip}:{relay.port('http')}", url
    # The net_report probes of iroh clients, over the announced URL and over HTTPS.
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{url}/generate_204", timeout=10) as r:
        assert r.status == 204
    unverified = ssl._create_unverified_context()
    with urllib.request.urlopen(f"https://{relay.ip}:{relay.port('https')}/ping", timeout=10, context=unverified) as r:
        assert r.status == 200
    # A plain GET of /relay without the upgrade is the relay server's refusal, not our page.
    try:
        urllib.request.urlopen(f"{url}/relay", timeout=10)
        raise AssertionError("/relay without Upgrade answered 2xx")
    except urllib.error.HTTPError as e:
        assert e.code in (400, 426), e.code


def _xdc() -> bytes:
    """A minimal webxdc app (made here: realtime channels need a webxdc message to hang on)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("manifest.toml", 'name = "realtime"\n')
        z.writestr("index.html", "<!doctype html><title>realtime</title><script src=webxdc.js></script>")
    return buf.getvalue()


def _wait_data(dc_events, ac, msg_id, sender, payload, deadline) -> bytes:
    """Send `payload` from `sender` every second until `ac` receives realtime data on `msg_id`
    (the channel comes up when the gossip peers have met through the relay)."""
    next_send = 0.0
    while True:
        now = time.monotonic()
        assert now < deadline, "no realtime data within the deadline\n" + dc_events.recent_text(ac)
        if now >= next_send:
            sender.send_webxdc_realtime_data(payload)
            next_send = now + 1.0
        ev = dc_events.get(ac, min(1.0, deadline - now))
        if ev is not None and ev.kind == "WebxdcRealtimeData" and ev.msg_id == msg_id:
            return bytes(ev.data)


def test_two_cores_exchange_realtime_data_through_our_relay(relay, acmaker, dc_events, tmp_path):
    alice, bob = acmaker.new_accounts(["alice", "bob"])
    for ac in (alice, bob):
        ac.set_config("webxdc_realtime_enabled", "1")
    before = relay.metrics()
    rss_before = relay.rss_kib()

    app = tmp_path / "realtime.xdc"
    app.write_bytes(_xdc())
    chat = alice.create_chat(bob)
    alice_msg = chat.send_message(text="play", file=str(app))
    snap = dc_events.incoming_text(bob, "play")
    bob_msg = bob.get_message_by_id(snap.id)
    bob.create_chat(alice)

    alice_msg.send_webxdc_realtime_advertisement()
    bob_msg.send_webxdc_realtime_advertisement()
    deadline = time.monotonic() + TIMEOUT
    assert _wait_data(dc_events, bob, bob_msg.id, alice_msg, b"hello bob", deadline) == b"hello bob"
    assert _wait_data(dc_events, alice, alice_msg.id, bob_msg, b"hello alice", deadline) == b"hello alice"
    # The largest payload core guarantees a webxdc (128 KB), in one piece.
    big = os.urandom(128000)
    alice_msg.send_webxdc_realtime_data(big)
    while True:
        ev = dc_events.get(bob, max(0.0, deadline - time.monotonic()))
        assert ev is not None, "the 128 KB payload did not arrive\n" + dc_events.recent_text(bob)
        if ev.kind == "WebxdcRealtimeData" and ev.msg_id == bob_msg.id and len(ev.data) == len(big):
            assert bytes(ev.data) == big
            break

    after = relay.metrics()
    rss_after = relay.rss_kib()
    connected = after["relaybox_iroh_relay_clients"]
    made = after["relaybox_iroh_relay_connections_total"] - before["relaybox_iroh_relay_connections_total"]
    relayed = after["relaybox_iroh_relay_relayed_bytes_total"] - before["relaybox_iroh_relay_relayed_bytes_total"]
    # Both cores are connected to our relay; the peers met through it (their only relay, and the
    # advertisement carries no direct address), so their handshakes passed through it.
    assert connected >= 2 and made >= 2, (connected, made)
    assert relayed > 2000, relayed
    with open(mailhelpers.artifacts_dir() / "iroh.txt", "w") as f:
        f.write(
            f"iroh relay: {made:.0f} client connections, {connected:.0f} connected, "
            f"{relayed:.0f} bytes through the relay connections\n"
            f"relay RSS before the realtime channel {rss_before} KiB, after {rss_after} KiB "
            f"(+{rss_after - rss_before} KiB)\n"
        )
