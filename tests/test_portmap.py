"""Automatic port mapping (issue 19) against a real router: Debian's miniupnpd (UPnP-IGD and
NAT-PMP, nftables backend) in a network namespace that NATs a "LAN" namespace, where the relay
runs, to an "internet" namespace.

    internet ns  up0 <EXT>.1  ──  wan0 <EXT>.2   router ns (miniupnpd, nft NAT)   lan0 192.168.77.1
                                                                                       │
                                                             relay ns   eth0 192.168.77.2 (relaybox serve)

What is checked: the relay's mappings appear in the router's nftables chain, a client in the
internet namespace reaches SMTP, IMAPS and HTTPS on the router's external address, the mappings
are gone after the relay stops; a refusing router and NAT-PMP alone are reported per port; a
carrier-grade NAT address (100.64.x.x) on the router's WAN side is reported as "cannot receive
from the internet"; the admin page shows the result and its Retry button works (Chromium).

Needs root (namespaces, nftables) and miniupnpd-nftables (`scripts/test.sh setup` installs it,
its system service masked). The namespace addresses exist only inside the namespaces: nothing
leaves the machine.
"""

from __future__ import annotations

import ctypes
import http.server
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

from conftest import RELAYBOX_BIN, REPO, artifacts_dir

MINIUPNPD = "/usr/sbin/miniupnpd"
WEB = REPO / "tests" / "web"
LAN_ROUTER, LAN_RELAY = "192.168.77.1", "192.168.77.2"
PORTS = [443, 25, 465, 587, 993, 143, 80]
# IPv6 (documentation prefix, only inside the namespaces): internet side, LAN, the relay.
INET6, LAN6 = "2001:db8:69::", "2001:db8:77::"
RELAY6 = f"{LAN6}2"
# TURN's server port and the relay range the tests configure (49152-49161).
TURN_PORTS = [3478, *range(49152, 49162)]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(
        not os.path.exists(MINIUPNPD) or not shutil.which("nft"),
        reason="miniupnpd-nftables and nftables missing (scripts/test.sh setup installs them)",
    ),
]

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_ns(ns: str, fn, *args):
    """Runs `fn(*args)` on a thread moved into network namespace `ns` (its sockets live there)
    and returns its result."""
    out: dict = {}

    def body():
        try:
            with open(f"/run/netns/{ns}") as f:
                if _libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            out["value"] = fn(*args)
        except BaseException as e:  # handed to the caller's thread
            out["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=20).stdout


NFT_RULES = """
table inet filter {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "lan0" accept
    jump miniupnpd
  }
  chain miniupnpd {
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
    oifname "wan0" masquerade
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
}
"""


class HomeNet:
    """Three namespaces, the router's nftables and miniupnpd; removed by `close`."""

    def __init__(self, tmp: Path, ext_net: str, upnp=True, natpmp=True, deny_ports=(), run_router=True, ipv6=False):
        tag = f"{os.getpid() % 100000}-{int(time.monotonic() * 1000) % 100000}"
        self.inet, self.router, self.lan = f"rbx-i{tag}", f"rbx-r{tag}", f"rbx-l{tag}"
        self.tmp, self.ext = tmp, f"{ext_net}.2"
        self.miniupnpd: subprocess.Popen | None = None
        self.relay: subprocess.Popen | None = None
        self.router_log = tmp / "miniupnpd.log"
        self.ipv6 = ipv6
        try:
            self._build(ext_net)
            if ipv6:
                self._build6()
            if run_router:
                self.start_router(upnp, natpmp, deny_ports)
        except BaseException:
            # The fixture never saw this network: remove the namespaces here.
            self.close()
            raise

    def _build(self, ext_net: str) -> None:
        tmp = self.tmp
        for ns in (self.inet, self.router, self.lan):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "wan0", "netns", self.router, "type", "veth", "peer", "name", "up0", "netns", self.inet)
        sh("ip", "link", "add", "lan0", "netns", self.router, "type", "veth", "peer", "name", "eth0", "netns", self.lan)
        for ns, dev, addr in [
            (self.inet, "up0", f"{ext_net}.1/24"),
            (self.router, "wan0", f"{ext_net}.2/24"),
            (self.router, "lan0", f"{LAN_ROUTER}/24"),
            (self.lan, "eth0", f"{LAN_RELAY}/24"),
        ]:
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", self.lan, "route", "add", "default", "via", LAN_ROUTER)
        sh("ip", "netns", "exec", self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = tmp / "router.nft"
        rules.write_text(NFT_RULES)
        sh("ip", "netns", "exec", self.router, "nft", "-f", str(rules))

    def _build6(self) -> None:
        """Routed IPv6 (no NAT): the LAN prefix reaches the internet namespace through the
        router, whose firewall (the same inet table) drops what comes in unasked."""
        for ns, dev, addr in [
            (self.inet, "up0", f"{INET6}1/64"),
            (self.router, "wan0", f"{INET6}2/64"),
            (self.router, "lan0", f"{LAN6}1/64"),
            (self.lan, "eth0", f"{RELAY6}/64"),
        ]:
            # nodad: usable at once (duplicate address detection would hold it tentative ~1 s)
            sh("ip", "-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad")
        sh("ip", "-n", self.lan, "-6", "route", "add", "default", "via", f"{LAN6}1")
        sh("ip", "-n", self.inet, "-6", "route", "add", f"{LAN6}/64", "via", f"{INET6}2")
        sh("ip", "netns", "exec", self.router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")

    def start_router(self, upnp=True, natpmp=True, deny_ports=()) -> None:
        """miniupnpd on the router (without it the router speaks neither UPnP nor NAT-PMP)."""
        tmp = self.tmp
        conf = [
            "ext_ifname=wan0",
            "listening_ip=lan0",
            "http_port=0",
            f"enable_upnp={'yes' if upnp else 'no'}",
            f"enable_natpmp={'yes' if natpmp else 'no'}",
            "secure_mode=yes",
            "upnp_table_name=filter",
            "upnp_nat_table_name=filter",
            "upnp_forward_chain=miniupnpd",
            "upnp_nat_chain=prerouting_miniupnpd",
            "upnp_nat_postrouting_chain=postrouting_miniupnpd",
            "uuid=3bd2c9a5-7c2f-4f5e-9a1b-2c7d1e0f4a11",
            *([f"ext_ifname6=wan0", f"ipv6_listening_ip={LAN6}1"] if self.ipv6 else []),
            *[f"deny {p} 0.0.0.0/0 0-65535" for p in deny_ports],
            "allow 0-65535 192.168.77.0/24 0-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
        ]
        (tmp / "miniupnpd.conf").write_text("\n".join(conf) + "\n")
        with open(self.router_log, "ab") as log:
            self.miniupnpd = subprocess.Popen(
                ["ip", "netns", "exec", self.router, MINIUPNPD, "-f", str(tmp / "miniupnpd.conf"), "-d",
                 "-P", str(tmp / "miniupnpd.pid")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while b"Listening for NAT-PMP" not in self.router_log.read_bytes() and b"HTTP listening" not in self.router_log.read_bytes():
            assert self.miniupnpd.poll() is None, self.router_log.read_text()
            assert time.monotonic() < deadline, "miniupnpd did not start: " + self.router_log.read_text()
            time.sleep(0.05)

    def mappings(self) -> dict:
        """The router's forwards: external port (TCP) or "port/udp" → internal `ip:port`."""
        out = sh("ip", "netns", "exec", self.router, "nft", "list", "chain", "inet", "filter", "prerouting_miniupnpd")
        # the IPv4 header's protocol byte (bit 72): 0x6 TCP, 0x11 UDP
        rules = re.findall(r"@nh,72,8 0x([0-9a-f]+) th dport (\d+) dnat ip to (\S+)", out)
        return {(int(p) if proto == "6" else f"{p}/udp"): to for proto, p, to in rules}

    def pinholes(self) -> dict:
        """The router's IPv6 pinholes: port (TCP) or "port/udp" → the address let through."""
        out = sh("ip", "netns", "exec", self.router, "nft", "list", "chain", "inet", "filter", "miniupnpd")
        # miniupnpd writes raw matches: destination address at bit 192 of the IPv6 header,
        # next header (6 TCP, 0x11 UDP) at bit 48
        rules = re.findall(r"th dport (\d+) @nh,192,128 0x([0-9a-f]{32}) @nh,48,8 0x([0-9a-f]+)", out)
        return {(int(p) if proto == "6" else f"{p}/udp"): str(ipaddress.IPv6Address(int(to, 16)))
                for p, to, proto in rules}

    def start_relay(self, admin_ui=False, domain=None, extra="") -> Path:
        data = self.tmp / "data"
        cfg = self.tmp / "relay.toml"
        cfg.write_text(
            f'mail_domain = "{domain or f"[{self.ext}]"}"\n'
            f'data_dir = "{data}"\n'
            'port_mapping = "auto"\n'
            "outbound_probes = []\n"
            f"admin_ui = {'true' if admin_ui else 'false'}\n" + extra
        )
        self.relay_log = self.tmp / "relay.log"
        with open(self.relay_log, "wb") as log:
            self.relay = subprocess.Popen(
                ["ip", "netns", "exec", self.lan, str(RELAYBOX_BIN), "serve", "--config", str(cfg)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        return data

    def wait_log(self, pattern: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.relay_log.read_text(errors="replace")
            m = re.search(pattern, text)
            if m:
                return m.group(0)
            assert self.relay.poll() is None, "relay exited:\n" + text[-3000:]
            assert time.monotonic() < deadline, f"no {pattern!r} in the relay's log:\n" + text[-3000:]
            time.sleep(0.1)

    def stop_relay(self) -> int:
        self.relay.send_signal(signal.SIGTERM)
        return self.relay.wait(timeout=15)

    def close(self) -> None:
        for p in (self.relay, self.miniupnpd):
            if p is not None and p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        for ns in (self.inet, self.router, self.lan):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def home(tmp_path, request):
    nets: list[HomeNet] = []

    def make(**kw) -> HomeNet:
        n = HomeNet(tmp_path, **kw)
        nets.append(n)
        return n

    yield make
    for n in nets:
        keep = artifacts_dir() / "portmap" / request.node.name
        keep.mkdir(parents=True, exist_ok=True)
        for f in ("relay.log", "miniupnpd.log", "miniupnpd.conf"):
            if (tmp_path / f).exists():
                shutil.copy(tmp_path / f, keep / f)
        n.close()


def _tls_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def imaps_banner(ext: str) -> str:
    with _tls_ctx().wrap_socket(socket.create_connection((ext, 993), timeout=5)) as s:
        return s.recv(200).decode(errors="replace")


def probe_from_internet(ext: str) -> dict:
    """What a client on the internet gets from the router's external address."""
    out = {}
    with socket.create_connection((ext, 25), timeout=5) as s:
        out[25] = s.recv(200).decode(errors="replace")
    out[993] = imaps_banner(ext)
    with _tls_ctx().wrap_socket(socket.create_connection((ext, 443), timeout=5)) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {ext}\r\nConnection: close\r\n\r\n".encode())
        out[443] = s.recv(200).decode(errors="replace")
    return out


def admin_api(data: Path, path: str, method="GET", body: dict | None = None) -> dict:
    """Logs in with the setup code (set-up is pending) and calls an admin endpoint, from the
    relay's own namespace."""
    jar = CookieJar()
    op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    code = (data / "setup-code").read_text().strip()
    base = f"http://{LAN_RELAY}/api/admin/"
    req = urllib.request.Request(base + "login", json.dumps({"setup_code": code}).encode(),
                                 {"Content-Type": "application/json"})
    csrf = json.load(op.open(req, timeout=10))["csrf"]
    req = urllib.request.Request(base + path, data=json.dumps(body or {}).encode() if method == "POST" else None,
                                 method=method,
                                 headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"})
    return json.load(op.open(req, timeout=30))


def test_ports_are_mapped_reachable_and_removed_at_shutdown(home):
    """UPnP-IGD: every port in use is forwarded, the relay answers from the internet on the
    router's address, and the forwards are gone once the relay has stopped."""
    net = home(ext_net="81.2.69")
    assert net.mappings() == {}
    t0 = time.monotonic()
    net.start_relay()
    line = net.wait_log(r"port mapping router=.*")
    took = time.monotonic() - t0
    assert "UPnP-IGD at 192.168.77.1" in line and "reach=Public" in line, line
    assert net.mappings() == {p: f"{LAN_RELAY}:{p}" for p in PORTS}, line
    got = in_ns(net.inet, probe_from_internet, net.ext)
    assert got[25].startswith("220 "), got
    assert got[993].startswith("* OK"), got
    assert got[443].startswith("HTTP/1.1 "), got
    assert net.stop_relay() == 0
    assert "port mappings removed" in net.relay_log.read_text()
    assert net.mappings() == {}
    # nothing is forwarded any more
    with pytest.raises(OSError):
        in_ns(net.inet, lambda: socket.create_connection((net.ext, 993), timeout=2).close())
    print(f"mapped within {took:.1f} s of the start")


def test_refused_ports_and_natpmp_only_router_are_reported(home):
    """A router with UPnP off speaks NAT-PMP only, and refuses port 25 (many routers keep some
    ports for themselves): the relay maps the rest through NAT-PMP and reports 25 as refused.
    TURN is on: its UDP ports are mapped with NAT-PMP's UDP request."""
    net = home(ext_net="81.2.69", upnp=False, deny_ports=[25])
    data = net.start_relay(admin_ui=True, extra='turn = true\nturn_relay_ports = "49152-49153"\n')
    line = net.wait_log(r"port mapping router=.*")
    assert "NAT-PMP at 192.168.77.1" in line, line
    want = {p: f"{LAN_RELAY}:{p}" for p in PORTS if p != 25}
    want |= {f"{p}/udp": f"{LAN_RELAY}:{p}" for p in TURN_PORTS[:3]}
    assert net.mappings() == want, line
    s = in_ns(net.lan, admin_api, data, "portmap")
    by_port = {p["external"]: p for p in s["ports"] if p["protocol"] == "tcp"}
    udp = {p["external"]: p["result"] for p in s["ports"] if p["protocol"] == "udp"}
    assert udp == {p: "mapped" for p in TURN_PORTS[:3]}, s
    assert by_port[25]["result"] == "refused_by_router", s
    # miniupnpd's NAT-PMP answers a denied port with another free one (26); mail needs 25, so
    # the relay gives that back (it is not in the router's list above) and says why.
    assert "offered port 26 instead" in by_port[25]["detail"], s
    assert all(by_port[p]["result"] == "mapped" for p in want if isinstance(p, int)), s
    assert s["external_ipv4"] == net.ext and s["reach"] == "public", s
    # NAT-PMP forwards like UPnP does
    assert in_ns(net.inet, imaps_banner, net.ext).startswith("* OK")
    assert net.stop_relay() == 0
    assert net.mappings() == {}


def test_ipv6_pinholes_are_opened_with_pcp(home):
    """The router routes IPv6 and its firewall drops what comes in unasked. The relay asks it
    over PCP (RFC 6887) to let the ports through to the box's IPv6 address: afterwards IMAPS
    answers on that address from the internet, and at shutdown the pinholes are closed."""
    net = home(ext_net="81.2.69", ipv6=True)

    def imaps6(timeout=5) -> str:
        with _tls_ctx().wrap_socket(socket.create_connection((RELAY6, 993), timeout=timeout)) as s:
            return s.recv(200).decode(errors="replace")

    # the router's firewall: nothing gets in (dropped, so a timeout rather than a refusal)
    with pytest.raises((socket.timeout, TimeoutError)):
        in_ns(net.inet, imaps6, 1)
    data = net.start_relay(admin_ui=True)
    line = net.wait_log(r"IPv6 pinholes router=.*")
    assert f"PCP at {LAN6}1" in line and RELAY6 in line, line
    s = in_ns(net.lan, admin_api, data, "portmap")
    assert s["ipv6"] == RELAY6 and s["ipv6_router"] == f"PCP at {LAN6}1", s
    holes = {p["external"]: p for p in s["pinholes"]}
    assert set(holes) == set(PORTS), s
    opened = [p for p, h in holes.items() if h["result"] == "mapped"]
    assert net.pinholes() == {p: RELAY6 for p in opened}, s
    assert 993 in opened, s
    assert in_ns(net.inet, imaps6).startswith("* OK")
    assert net.stop_relay() == 0
    assert "IPv6 pinholes removed" in net.relay_log.read_text()
    assert net.pinholes() == {}
    print("pinholes:", {p: (h["result"], h["detail"]) for p, h in holes.items()})


def test_carrier_grade_nat_is_reported(home):
    """The router's WAN side has a carrier-grade NAT address (100.64.x.x). miniupnpd 2.3.1 then
    answers GetExternalIPAddress with an empty address and refuses every mapping (it will not
    even start with `ext_ip` set to such an address); the relay reports "cannot receive from the
    internet" with what to do, each port as refused, and no public address. (A router that
    reports the 100.64 address itself is classified as `cgnat`: plan.rs's unit test.)"""
    net = home(ext_net="100.64.7")
    data = net.start_relay(admin_ui=True)
    net.wait_log(r"port mapping router=.*")
    s = in_ns(net.lan, admin_api, data, "portmap")
    assert s["external_ipv4"] is None, s
    assert s["reach"] == "no_public_address", s
    assert "cannot receive from the internet" in s["note"], s
    assert {p["result"] for p in s["ports"]} == {"refused_by_router"}, s
    assert net.mappings() == {}
    assert net.stop_relay() == 0


def stun_binding(ext: str) -> bool:
    """Whether a STUN Binding request (RFC 5389) to `ext`:3478 gets a Binding success answer."""
    tid = os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        for _ in range(3):
            s.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + tid, (ext, 3478))
            try:
                b = s.recv(1500)
            except TimeoutError:
                continue
            return b[:2] == b"\x01\x01" and b[8:20] == tid
    return False


class UpdateServer:
    """A dynamic DNS provider's update URL (dyndns2 style) on the internet side: records every
    request and answers `good <ip>`."""

    def __init__(self, ns: str, addr: str):
        self.requests: list[str] = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.path)
                ip = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("myip", [""])[0]
                body = f"good {ip}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        # Bound inside the namespace; the socket stays there whichever thread serves it.
        self.server = in_ns(ns, lambda: http.server.ThreadingHTTPServer((addr, 0), Handler))
        self.url = f"http://{addr}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_no_router_support_is_reported_and_retry_finds_the_router(home):
    """With nothing answering UPnP or NAT-PMP every port says "no router support"; once the
    router speaks, "Retry" in the wizard's DNS step maps them, TURN's UDP ports included, and
    the router's public address reaches dynamic DNS, whose update the wizard and the admin page
    show (Chromium)."""
    net = home(ext_net="81.2.69", run_router=False)
    provider = UpdateServer(net.inet, "81.2.69.1")
    try:
        data = net.start_relay(admin_ui=True, domain="relay.test", extra=(
            'turn_relay_ports = "49152-49161"\n'
            "[ddns]\n"
            f'update_url = "{provider.url}/nic/update?hostname={{domain}}&myip={{ip}}"\n'
            "ipv6 = false\n"
        ))
        net.wait_log(r"port mapping router=.*")
        s = in_ns(net.lan, admin_api, data, "portmap")
        assert s["router"] is None, s
        assert {p["result"] for p in s["ports"]} == {"no_router_support"}, s
        assert "No router support" in s["note"], s
        d = in_ns(net.lan, admin_api, data, "ddns")
        assert d["enabled"] and d["last_update"] is None and d["next_check"], d
        assert provider.requests == []
        # The router's owner switches UPnP on.
        net.start_router()
        browser_check(net, data, "portmap-test-password-1")
        assert provider.requests == ["/nic/update?hostname=relay.test&myip=81.2.69.2"]
        # TURN restarted to announce the router's address, and answers through the UDP mapping
        net.wait_log(r"TURN restarted")
        assert in_ns(net.inet, stun_binding, net.ext), net.relay_log.read_text()[-3000:]
        assert "for TURN" not in net.relay_log.read_text()
        want = {p: f"{LAN_RELAY}:{p}" for p in PORTS}
        want |= {f"{p}/udp": f"{LAN_RELAY}:{p}" for p in TURN_PORTS}
        assert net.mappings() == want
        assert net.stop_relay() == 0
        assert net.mappings() == {}
    finally:
        provider.close()


def browser_check(net: HomeNet, data: Path, password: str) -> None:
    if not (WEB / "node_modules" / "playwright-core").exists() or not shutil.which("node"):
        pytest.fail("playwright-core or node missing: run `scripts/test.sh setup`")
    shots = artifacts_dir() / "portmap"
    args = {
        "http": f"http://{LAN_RELAY}",
        "https": f"https://{LAN_RELAY}",
        "code": (data / "setup-code").read_text().strip(),
        "domain": "relay.test",
        "ext": net.ext,
        "password": password,
        "shots": str(shots),
    }
    r = subprocess.run(
        ["ip", "netns", "exec", net.lan, "node", str(WEB / "portmap.mjs"), json.dumps(args)],
        cwd=WEB, capture_output=True, text=True, timeout=90,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["ok"], (res.get("error"), res)
    mapped = {str(p): "mapped" for p in PORTS} | {"3478/udp": "mapped", "49152-49161/udp": "mapped"}
    assert set(res["before"].values()) == {"no_router_support"}, res
    assert set(res["before"]) == set(mapped), res
    assert "no router support" in res["before_text"], res
    assert res["before_ddns"]["note"].startswith("No public address known yet"), res
    assert res["before_ddns"]["rows"]["last-update"] == "none yet", res
    assert res["after"] == mapped, res
    assert "81.2.69.2" in res["after_facts"], res
    for page in ("after_ddns", "admin_ddns"):
        d = res[page]
        assert d["note"] == "The records were updated.", res
        assert d["rows"]["published"] == "81.2.69.2", res
        assert d["rows"]["result"] == "update URL (81.2.69.1): good 81.2.69.2", res
        assert d["rows"]["last-update"] != "none yet" and d["rows"]["next-check"] != "—", res
    assert res["admin"] == mapped, res
    assert "updated" in res["admin_status"] and "good 81.2.69.2" in res["admin_status"], res
    assert res["overflow"] <= 0 and res["admin_overflow"] <= 0, res
