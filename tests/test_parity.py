"""Parity with chatmail relay 1.12 and Delta Chat core 2.65 (issue 16, items 7-10), driven over
the wire the way the reference's online tests and core do it (test_2_deltachat.py
TestMetadataTokens, test_get_appversions; core's identify_server and push detection)."""

from __future__ import annotations

import imaplib
import json
import re

from mailhelpers import imaps, random_localpart, random_password

for _cmd in ("GETMETADATA", "SETMETADATA"):
    imaplib.Commands.setdefault(_cmd, ("AUTH", "SELECTED"))

APPVERSIONS = "/shared/vendor/deltachat/appversions"


def _caps_in(text: bytes) -> set[str]:
    m = re.match(rb"\[CAPABILITY ([^\]]*)\]", text)
    assert m, f"no [CAPABILITY ...] code in {text!r}"
    return {c.decode().upper() for c in m.group(1).split()}


def _server_value(conn, entry: str) -> bytes | None:
    typ, data = conn._simple_command("GETMETADATA", '""', entry)
    assert typ == "OK", f"GETMETADATA {entry} -> {typ} {data}"
    typ, data = conn._untagged_response(typ, data, "METADATA")
    # imaplib gives a literal as a (head, value) tuple, a quoted string inline.
    item = data[0]
    if isinstance(item, tuple):
        return item[1]
    m = re.search(rb'\(\S+ (NIL|"((?:[^"\\]|\\.)*)")\)$', item)
    assert m, item
    if m.group(1) == b"NIL":
        return None
    return re.sub(rb"\\(.)", rb"\1", m.group(2))


def test_login_and_authenticate_replies_carry_the_capabilities(relay):
    """Core 2.65 takes the capabilities from the LOGIN/AUTHENTICATE OK and sends no CAPABILITY."""
    addr, pw = relay.addr(random_localpart()), random_password()
    conn = imaps(relay)
    typ, data = conn.login(addr, pw)
    assert typ == "OK", data
    caps = _caps_in(data[0])
    for c in ("IDLE", "MOVE", "QUOTA", "METADATA", "XDELTAPUSH", "XCHATMAIL", "ID"):
        assert c in caps, f"{c} missing from the LOGIN reply: {data[0]!r}"
    assert not any(c.startswith("AUTH=") for c in caps), caps
    conn.logout()

    conn = imaps(relay)
    typ, data = conn.authenticate("PLAIN", lambda _: f"\0{addr}\0{pw}".encode())
    assert typ == "OK", data
    assert {"METADATA", "XDELTAPUSH", "XCHATMAIL"} <= _caps_in(data[0]), data
    conn.logout()


def test_maxsmtprecipients_is_served(relay):
    """Core 2.58+ takes push as working when this key exists (supports_push)."""
    addr, pw = relay.addr(random_localpart()), random_password()
    conn = imaps(relay)
    conn.login(addr, pw)
    assert _server_value(conn, "/shared/vendor/deltachat/maxsmtprecipients") == b"1000"
    conn.logout()


def test_set_get_metadata_as_the_reference_test_sends_it(relay):
    """TestMetadataTokens.test_set_get_metadata: note the space before `)`, which Dovecot takes."""
    addr, pw = relay.addr(random_localpart()), random_password()
    conn = imaps(relay)
    conn.login(addr, pw)
    conn.select("INBOX")
    for token in ("1111", "2222"):
        typ, data = conn._simple_command("SETMETADATA", "INBOX", f'(/private/devicetoken "{token}" )')
        assert typ == "OK", f"SETMETADATA with a space before ')' -> {typ} {data}"
        assert data == [b"Setmetadata completed"], data
    typ, data = conn._simple_command("GETMETADATA", "INBOX", "/private/devicetoken")
    assert typ == "OK", data
    typ, data = conn._untagged_response(typ, data, "METADATA")
    assert data[0] == b'INBOX (/private/devicetoken "1111 2222")', data
    conn.logout()


def test_get_appversions_default_then_operator_file(relay):
    addr, pw = relay.addr(random_localpart()), random_password()
    conn = imaps(relay)
    conn.login(addr, pw)
    value = _server_value(conn, APPVERSIONS)
    assert value is not None, "appversions is NIL"
    assert b"\n" not in value
    parsed = json.loads(value)
    source = parsed["clients"][0]["sources"][0]
    assert parsed["clients"][0]["clientId"] == "deltachat"
    assert 0 < source["versionInteger"] < 2**32
    assert source["downloadUrl"].startswith(("https://github.com/deltachat/", "https://download.delta.chat/"))

    own = {"clients": [{"clientId": "deltachat", "sources": [{
        "sourceId": "fdroid", "versionInteger": 770, "versionString": "2.65.0",
        "downloadUrl": "https://download.delta.chat/android/deltachat-fdroid-2.65.0.apk"}]}]}
    path = relay.data_dir / "appversions.json"
    path.write_text(json.dumps(own, indent=2) + "\n")
    try:
        value = _server_value(conn, APPVERSIONS)
        assert value == json.dumps(own, separators=(",", ":")).encode()
        path.write_text("{ not json")
        assert _server_value(conn, APPVERSIONS) is None
    finally:
        path.unlink()
    assert json.loads(_server_value(conn, APPVERSIONS)) == parsed
    conn.logout()
