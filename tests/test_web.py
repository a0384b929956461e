"""The web side of the relay, end to end against `relaybox dev` (IP mode, self-signed).

- port 443 (here 443 + offset) multiplexes by ALPN: a real Delta Chat profile configured with
  IMAP and SMTP both on the HTTPS port chats; HTTPS with ALPN http/1.1 still serves the page;
- `/new` hands out credentials whose `dclogin_url` configures a working Delta Chat profile;
- the public pages render the configured values in headless Chromium (screenshot kept in
  test-artifacts/);
- port 80 redirects to HTTPS, the autoconfig file names the 443 port.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.parse

import pytest

from dchelpers import AccountMaker, self_addr
from mailhelpers import artifacts_dir


def _tls_context(alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed in dev mode
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def https(relay, method: str, path: str, alpn: list[str] | None = None) -> tuple[int, dict, bytes, str | None]:
    """One request to the relay's HTTPS port; (status, headers, body, negotiated ALPN)."""
    conn = http.client.HTTPSConnection(relay.ip, relay.port("https"), context=_tls_context(alpn), timeout=20)
    try:
        conn.request(method, path, headers={"Connection": "close"})
        proto = conn.sock.selected_alpn_protocol()
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, proto
    finally:
        conn.close()


def _configure(dc, dc_events, name: str, url: str):
    ac = dc.add_account()
    dc_events.names[ac.id] = name
    ac.set_config("displayname", name)
    try:
        AccountMaker.configure_from_qr(ac, url)()
    except Exception as e:
        raise AssertionError(f"configuring {name} from {url} failed: {e}\n{dc_events.recent_text(ac)}") from e
    assert ac.is_configured()
    return ac


def _start(accounts, dc_events):
    for ac in accounts:
        ac.start_io()
    for ac in accounts:
        ac._rpc.wait_for_all_work_done(ac.id)
        while dc_events.get(ac, 0) is not None:
            pass


def _chat_both_ways(alice, bob, dc_events, tag: str):
    chat = alice.create_chat(bob)
    chat.send_text(f"hello bob {tag}")
    snap = dc_events.incoming_text(bob, f"hello bob {tag}")
    assert snap.show_padlock
    snap.chat.accept()
    snap.chat.send_text(f"hello alice {tag}")
    snap = dc_events.incoming_text(alice, f"hello alice {tag}")
    assert snap.chat_id == chat.id


# --- ALPN on 443 ----------------------------------------------------------------------------


def test_https_port_serves_the_page_with_alpn_http11_and_without_alpn(relay):
    for alpn in (["http/1.1"], None, ["h2", "http/1.1"]):
        status, headers, body, proto = https(relay, "GET", "/", alpn)
        assert status == 200, (alpn, status, body[:300])
        assert proto == ("http/1.1" if alpn else None), (alpn, proto)
        assert relay.domain.encode() in body
        assert headers["content-type"].startswith("text/html")


def test_https_port_speaks_imap_and_smtp_by_alpn(relay):
    for alpn, greeting in (("imap", b"* OK"), ("smtp", b"220 ")):
        ctx = _tls_context([alpn])
        with socket.create_connection((relay.ip, relay.port("https")), timeout=20) as tcp:
            with ctx.wrap_socket(tcp, server_hostname=relay.ip) as s:
                assert s.selected_alpn_protocol() == alpn
                assert s.version() == "TLSv1.3"
                assert s.recv(4096).startswith(greeting)


def test_delta_chat_with_imap_and_smtp_on_the_https_port(relay, dc, dc_events):
    """Both profiles use only the 443 port (IMAP and SMTP); core offers ALPN imap/smtp there."""
    port = relay.port("https")
    urls = []
    for _ in range(2):
        addr, pw = relay.new_credentials()
        urls.append(
            f"dclogin:{urllib.parse.quote(addr, safe='@[]')}?p={urllib.parse.quote(pw, safe='')}&v=1"
            f"&ih={relay.ip}&ip={port}&is=ssl&sh={relay.ip}&sp={port}&ss=ssl&ic=3"
        )
    alice = _configure(dc, dc_events, "alice443", urls[0])
    bob = _configure(dc, dc_events, "bob443", urls[1])
    _start([alice, bob], dc_events)
    _chat_both_ways(alice, bob, dc_events, "over 443")


# --- /new --------------------------------------------------------------------------------------


def test_new_returns_credentials_and_a_working_dclogin_url(relay, dc, dc_events):
    made = []
    for method in ("POST", "GET"):
        status, headers, body, _ = https(relay, method, "/new")
        assert status == 200, (method, status, body)
        assert headers["content-type"] == "application/json"
        data = json.loads(body)
        local, domain = data["email"].split("@")
        assert domain == relay.domain and len(local) == 9, data
        assert len(data["password"]) == 12, data
        url = data["dclogin_url"]
        assert url.startswith(f"dclogin:{data['email']}?p="), url
        assert "&v=1&" in url and url.endswith("&ic=3") and f"ih={relay.ip}" in url, url
        made.append(url)
    alice = _configure(dc, dc_events, "alice-new", made[0])
    bob = _configure(dc, dc_events, "bob-new", made[1])
    assert self_addr(alice) == urllib.parse.unquote(made[0][len("dclogin:") :].split("?")[0])
    _start([alice, bob], dc_events)
    _chat_both_ways(alice, bob, dc_events, "from /new")


# --- files ---------------------------------------------------------------------------------------


def test_autoconfig_qr_robots_and_http_redirect(relay):
    status, _, body, _ = https(relay, "GET", "/.well-known/autoconfig/mail/config-v1.1.xml")
    assert status == 200
    xml = body.decode()
    https_port = relay.port("https")
    assert xml.count(f"<port>{https_port}</port>") == 2, xml
    assert f"<port>{relay.port('imaps')}</port>" in xml and f"<port>{relay.port('submissions')}</port>" in xml
    status, headers, body, _ = https(relay, "GET", "/qr-chatmail-invite.png")
    assert status == 200 and headers["content-type"] == "image/png" and body.startswith(b"\x89PNG")
    (artifacts_dir() / "web-invite-qr.png").write_bytes(body)
    status, headers, body, _ = https(relay, "GET", "/qr-chatmail-invite.svg")
    assert status == 200 and b"<svg" in body
    status, _, body, _ = https(relay, "GET", "/robots.txt")
    assert body == b"User-agent: *\nDisallow: /\n"

    conn = http.client.HTTPConnection(relay.ip, relay.port("http"), timeout=20)
    conn.request("GET", "/info.html?a=b")
    resp = conn.getresponse()
    assert resp.status == 301
    assert resp.getheader("Location") == f"https://{relay.ip}:{https_port}/info.html?a=b"
    conn.close()
    conn = http.client.HTTPConnection(relay.ip, relay.port("http"), timeout=20)
    conn.request("GET", "/.well-known/acme-challenge/token")
    assert conn.getresponse().status == 404
    conn.close()


# --- pages in a browser ------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _run_chromium(args: list[str], timeout: float = 90) -> str:
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True
    )
    try:
        out, _err = proc.communicate(timeout=timeout)
        return out
    finally:
        # Headless Chromium leaves helper processes behind when it is killed; end the group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.mark.timeout(240)
def test_pages_render_configured_values_in_chromium(relay, tmp_path):
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (scripts/test.sh setup installs it)")
        pytest.skip("chromium is not installed")
    base = f"https://{relay.ip}:{relay.port('https')}"
    common = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--ignore-certificate-errors",  # the dev relay's self-signed certificate
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--no-first-run",
        "--window-size=390,844",
    ]
    dom = _run_chromium(common + ["--dump-dom", base + "/"])
    for want in (
        relay.domain,
        '<b id="send-rate">60</b>',
        '<b id="mailbox-size">500 MB</b>',
        '<b id="message-size">30 MB</b>',
        '<b id="delete-days">20</b>',
        '<b id="inactive-days">90</b>',
        "also between addresses of this relay",  # issue 16: not only to other relays
        'href="dclogin:',
        "<svg",
    ):
        assert want in dom, f"{want!r} not in the rendered page:\n{dom[:3000]}"
    privacy = _run_chromium(common + ["--dump-dom", base + "/privacy.html"])
    assert "Privacy policy of " + relay.domain in privacy
    shot = artifacts_dir() / "web-index-390x844.png"
    shot.unlink(missing_ok=True)
    _run_chromium(common + [f"--screenshot={shot}", base + "/"])
    assert shot.exists() and shot.stat().st_size > 5000, "no screenshot"


# Last in the module: it empties this client's /new bucket (the invite QR shares it).
def test_new_is_rate_limited(relay):
    statuses = [https(relay, "POST", "/new")[0] for _ in range(12)]
    assert statuses[0] == 200 and 429 in statuses, statuses
