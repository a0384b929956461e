"""End-to-end tests with the real Delta Chat core (deltachat-rpc-server) against `relaybox dev`.

Each account is configured from a dclogin: URL made by the test (random 9-char local part,
random 16-char password, ic=3 for the self-signed certificate), like a user scanning the relay's
QR code.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
import urllib.parse

import pytest

from dchelpers import self_addr
from mailhelpers import artifacts_dir

TEN_MIB = 10 * 1024 * 1024


def test_relay_printed_dclogin_works(relay, dc, dc_events):
    """The account `relaybox dev` prints on stdout configures a real Delta Chat profile."""
    from dchelpers import AccountMaker

    url = relay.printed_dclogin()
    parsed = urllib.parse.urlparse(url)
    query = urllib.parse.parse_qs(parsed.query)
    addr = urllib.parse.unquote(parsed.path.lstrip("/"))
    assert addr.endswith("@" + relay.domain), f"printed address {addr!r} is not on {relay.domain}"
    assert len(addr.split("@")[0]) == 9, addr
    assert query.get("v") == ["1"], url
    assert query.get("ic") == ["3"], url
    assert len(query.get("p", [""])[0]) >= 9, url
    ac = dc.add_account()
    dc_events.names[ac.id] = "printed"
    assert ac.check_qr(url)["kind"] == "login", ac.check_qr(url)
    try:
        AccountMaker.configure_from_qr(ac, url)()
    except Exception as e:
        raise AssertionError(f"configuring from the printed URL {url} failed: {e}") from e
    assert ac.is_configured()
    assert self_addr(ac) == addr


def test_one_to_one_both_ways(acmaker, dc_events):
    alice, bob = acmaker.new_accounts(["alice", "bob"])
    chat = alice.create_chat(bob)
    chat.send_text("hello bob")
    snap = dc_events.incoming_text(bob, "hello bob")
    assert snap.is_info is False
    assert snap.show_padlock, "message between Delta Chat profiles should be encrypted"

    bob_chat = snap.chat
    bob_chat.accept()
    bob_chat.send_text("hello alice")
    snap = dc_events.incoming_text(alice, "hello alice")
    assert snap.chat_id == chat.id
    assert snap.show_padlock


def test_single_dot_text(acmaker, dc_events):
    alice, bob = acmaker.new_accounts(["alice", "bob"])
    chat = alice.create_chat(bob)
    chat.send_text("before the dot")
    dc_events.incoming_text(bob, "before the dot").chat.accept()
    chat.send_text(".")
    snap = dc_events.incoming_text(bob, ".")
    assert snap.text == "."
    chat.send_text("..")
    assert dc_events.incoming_text(bob, "..").text == ".."


def test_group_of_three(acmaker, dc_events):
    alice, bob, charlie = acmaker.new_accounts(["alice", "bob", "charlie"])
    group = alice.create_group("relaybox group")
    group.add_contact(alice.create_contact(bob), alice.create_contact(charlie))
    group.send_text("hello group")

    bob_snap = dc_events.incoming_text(bob, "hello group")
    charlie_snap = dc_events.incoming_text(charlie, "hello group")
    for who, snap in (("bob", bob_snap), ("charlie", charlie_snap)):
        full = snap.chat.get_full_snapshot()
        assert full.name == "relaybox group", f"{who} sees group name {full.name!r}"
        assert len(full.contact_ids) == 3, f"{who} sees {len(full.contact_ids)} members: {full.contact_ids}"
        snap.chat.accept()

    bob_snap.chat.send_text("reply from bob")
    assert dc_events.incoming_text(alice, "reply from bob").chat_id == group.id
    dc_events.incoming_text(charlie, "reply from bob")


def _wait_downloaded(ac, dc_events, msg_id, timeout=240):
    """Wait until the message's attachment is fully downloaded (pre-/post-message aware)."""
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
            raise AssertionError(
                f"attachment of message {msg_id} not downloaded after {timeout}s (state {state!r}, "
                f"file {snap.get('file')!r})\n" + dc_events.recent_text(ac)
            )
        dc_events.get(ac, 1.0)


@pytest.mark.timeout(400)
def test_ten_mib_attachment(acmaker, dc_events, tmp_path):
    alice, bob = acmaker.new_accounts(["alice", "bob"])
    path = tmp_path / "relaybox-10mib.bin"
    data = os.urandom(TEN_MIB)
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()

    t0 = time.monotonic()
    alice.create_chat(bob).send_message(text="big file", file=str(path))
    ev = dc_events.wait(
        bob,
        lambda e: e.kind == "IncomingMsg",
        "incoming message with the 10 MiB file",
        timeout=240,
    )
    snap = _wait_downloaded(bob, dc_events, ev.msg_id)
    elapsed = time.monotonic() - t0
    with open(snap.file, "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    assert os.path.getsize(snap.file) == TEN_MIB, f"received {os.path.getsize(snap.file)} bytes"
    assert got == want, "received file differs from the sent one"
    assert snap.file_name == path.name, snap.file_name
    print(f"10 MiB attachment delivered and downloaded in {elapsed:.1f}s")


def test_securejoin_qr(acmaker, dc_events):
    """Setup-contact by QR: both sides finish, and bob holds exactly the key the QR promised."""
    alice, bob = acmaker.new_accounts(["alice", "bob"])
    qr = alice.get_qr_code()
    parsed = bob.check_qr(qr)
    assert parsed["kind"] == "askVerifyContact", parsed
    bob.secure_join(qr)
    inviter = dc_events.securejoin_done(alice, "SecurejoinInviterProgress", timeout=120)
    joiner = dc_events.securejoin_done(bob, "SecurejoinJoinerProgress", timeout=120)

    bob_alice = bob.get_contact_by_id(joiner.contact_id)
    alice_bob = alice.get_contact_by_id(inviter.contact_id)
    for who, contact, addr in (("bob", bob_alice, self_addr(alice)), ("alice", alice_bob, self_addr(bob))):
        snap = contact.get_snapshot()
        assert snap.address == addr, f"{who} has contact {snap.address}, expected {addr}"
        assert snap.is_key_contact and snap.e2ee_avail, f"{who}: {snap}"
        if "is_verified" in snap:  # older cores expose the verification flag directly
            assert snap.is_verified, f"{who} does not see the peer as verified: {snap}"
        chat = contact.create_chat().get_basic_snapshot()
        assert chat.is_encrypted and not chat.is_contact_request, f"{who}: {chat}"
    fingerprint = " ".join(parsed["fingerprint"].split())
    info = " ".join(bob_alice.get_encryption_info().split())
    assert fingerprint in info, f"bob's key for alice is not the QR's {fingerprint}:\n{info}"

    # the verified chat carries messages both ways
    bob.create_chat(alice).send_text("verified hello")
    dc_events.incoming_text(alice, "verified hello")
    alice.create_chat(bob).send_text("verified reply")
    dc_events.incoming_text(bob, "verified reply")


def test_idle_latency(acmaker, dc_events, capsys):
    """An IDLEing profile gets a new message; prints the latency (no timing assertion)."""
    alice, bob = acmaker.new_accounts(["alice", "bob"])
    chat = alice.create_chat(bob)
    # the first message also carries keys and makes bob's chat; measure later ones. Bob accepts
    # the chat: core emits IncomingMsg only for the first message of a contact request.
    chat.send_text("warm-up")
    dc_events.incoming_text(bob, "warm-up").chat.accept()

    samples = []
    for i in range(5):
        # let bob go back to IDLE after the previous fetch
        try:
            dc_events.wait(bob, lambda e: e.kind == "ImapInboxIdle", "ImapInboxIdle", timeout=10)
        except AssertionError:
            pass  # the event is informational; a sleep is enough
        time.sleep(1.0)
        text = f"idle ping {i}"
        t_send = time.monotonic()
        chat.send_text(text)
        t_smtp = None
        got = None
        deadline = t_send + 60
        while got is None:
            if time.monotonic() > deadline:
                raise AssertionError(dc_events.timeout_text(bob, f"incoming {text!r}", 60))
            ev = dc_events.get(alice, 0.002)
            if ev is not None and ev.kind == "SmtpMessageSent" and t_smtp is None:
                t_smtp = time.monotonic()
            ev = dc_events.get(bob, 0.002)
            if ev is not None and ev.kind == "IncomingMsg":
                if bob.get_message_by_id(ev.msg_id).get_snapshot().text == text:
                    got = time.monotonic()
        samples.append((got - t_send, (t_smtp - t_send) if t_smtp else None))

    totals = [s[0] for s in samples]
    lines = [f"IDLE latency (send_text on alice -> IncomingMsg on bob), {len(samples)} samples:"]
    for i, (total, smtp) in enumerate(samples):
        smtp_txt = f"{smtp * 1000:.0f} ms" if smtp is not None else "?"
        lines.append(f"  sample {i}: total {total * 1000:.0f} ms (alice SMTP done after {smtp_txt})")
    lines.append(
        f"  median {statistics.median(totals) * 1000:.0f} ms, min {min(totals) * 1000:.0f} ms, "
        f"max {max(totals) * 1000:.0f} ms"
    )
    report = "\n".join(lines)
    (artifacts_dir() / "idle_latency.txt").write_text(report + "\n")
    with capsys.disabled():
        print("\n" + report)
