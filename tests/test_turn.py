"""TURN for calls (issue 20): coturn's `turnutils_uclient` allocates and relays through relaybox's
own TURN server with the credentials a client reads from IMAP METADATA
`/shared/vendor/deltachat/turn`, the way Delta Chat core gets them; `turnutils_peer` echoes.

Also measured here (written to test-artifacts/turn.txt): relay throughput and the relay's RSS
per allocation held."""

from __future__ import annotations

import imaplib
import re
import shutil
import socket
import subprocess
import time

import pytest

import mailhelpers
from conftest import Relay, _safe, pick_address

imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))

UCLIENT = shutil.which("turnutils_uclient")
PEER = shutil.which("turnutils_peer")

PER_USER = 40
RELAY_PORTS = 120


def _free_udp_run(ip: str, first: int, n: int) -> bool:
    socks = []
    try:
        for p in range(first, first + n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind((ip, p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


class TurnRelay(Relay):
    """A relay started from a config with `turn = true` (an IP literal has it off by default)."""

    def __init__(self, name, workdir):
        while True:
            ip, offset = pick_address()
            # TURN below the offset ports (which end at 9464 + offset), relay ports after it.
            turn_port = 3478 + offset
            relay_first = 10000 + offset
            if relay_first + RELAY_PORTS < 65536 and _free_udp_run(ip, turn_port, 1) and _free_udp_run(
                ip, relay_first, RELAY_PORTS + 1
            ):
                break
        super().__init__(name, workdir, ip, offset)
        self.turn_port = turn_port
        self.peer_port = relay_first + RELAY_PORTS
        self.config_path = workdir / "relaybox.toml"
        listen = "\n".join(
            f'{svc} = ["{ip}:{self.port(svc)}"]'
            for svc in ("smtp", "submissions", "submission", "imap", "imaps", "http", "https", "metrics")
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f'mail_domain = "{self.domain}"\n'
            f'data_dir = "{self.data_dir}"\n'
            "max_load_1m = 1000.0\n"
            'min_free_disk_space = "64M"\n'
            "turn = true\n"
            f"turn_port = {turn_port}\n"
            f'turn_relay_ports = "{relay_first}-{relay_first + RELAY_PORTS - 1}"\n'
            f"turn_max_allocations_per_user = {PER_USER}\n"
            "turn_max_allocations_per_ip = 1000\n"
            # High enough for the throughput run; the rate limit is a unit test.
            'turn_max_allocation_rate = "100M"\n'
            f"[listen]\n{listen}\n"
        )

    def command(self):
        import conftest

        return [str(conftest.RELAYBOX_BIN), "serve", "--config", str(self.config_path)]


@pytest.fixture(scope="module")
def turn_relay(request, tmp_path_factory):
    if not (UCLIENT and PEER):
        pytest.fail("coturn's turnutils_uclient/turnutils_peer missing: run `scripts/test.sh setup`", pytrace=False)
    r = TurnRelay("turn", tmp_path_factory.mktemp(_safe(request.module.__name__)))
    r.start()
    yield r
    r.stop()
    r.keep_logs("turn")


@pytest.fixture(scope="module")
def peer(turn_relay):
    p = subprocess.Popen(
        [PEER, "-L", turn_relay.ip, "-p", str(turn_relay.peer_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(0.3)
    yield turn_relay.peer_port
    p.terminate()
    p.wait(timeout=10)


def metadata_turn(relay) -> str:
    """What Delta Chat core reads: GETMETADATA "" /shared/vendor/deltachat/turn, after a login.
    Each call gets a username (the expiry second) no earlier call got, so the per-user counts of
    each test start at zero."""
    time.sleep(1.02 - time.time() % 1)
    addr, password = relay.new_credentials()
    conn = mailhelpers.imap_login(relay, addr, password)
    try:
        typ, data = conn._simple_command("GETMETADATA", '""', "/shared/vendor/deltachat/turn")
        assert typ == "OK", data
        typ, data = conn._untagged_response(typ, data, "METADATA")
        item = data[0]
        value = item[1] if isinstance(item, tuple) else re.search(rb'"([^"]*)"\)$', item).group(1)
        return value.decode()
    finally:
        conn.logout()


def uclient(relay, user, password, peer_port, *args, timeout=40) -> subprocess.CompletedProcess:
    cmd = [
        UCLIENT, "-c", "-X", "-u", user, "-w", password, "-p", str(relay.turn_port),
        "-e", relay.ip, "-r", str(peer_port), *args, relay.ip,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _stat(out: str, name: str) -> int:
    """The last value uclient printed for `name` (the earlier lines are progress)."""
    found = re.findall(rf"{name}[=~ ]+(\d+)", out)
    assert found, f"no {name} in uclient output:\n{out[-3000:]}"
    return int(found[-1])


def test_metadata_announces_host_port_expiry_and_password(turn_relay):
    value = metadata_turn(turn_relay)
    host, port, expiry, password = value.split(":", 3)
    assert host == turn_relay.ip
    assert int(port) == turn_relay.turn_port
    # Core refreshes when fewer than 12 h remain: a fresh credential has days.
    assert int(expiry) - time.time() > 4 * 86400
    assert re.fullmatch(r"[A-Za-z0-9+/]{27}=", password), password


def test_uclient_relays_through_our_turn_with_metadata_credentials(turn_relay, peer):
    _, _, user, password = metadata_turn(turn_relay).split(":", 3)
    before = turn_relay.metrics()
    r = uclient(turn_relay, user, password, peer, "-n", "20", "-l", "200", "-m", "2")
    out = r.stdout + r.stderr
    sent, received = _stat(out, "tot_send_msgs"), _stat(out, "tot_recv_msgs")
    assert sent == 40 and received == sent, out[-3000:]
    after = turn_relay.metrics()
    assert after["relaybox_turn_allocations_created_total"] - before["relaybox_turn_allocations_created_total"] >= 2
    # Both directions went through our relay sockets: 40 × 200 bytes each way.
    assert after["relaybox_turn_relayed_bytes_total"] - before["relaybox_turn_relayed_bytes_total"] >= 2 * 40 * 200


def test_a_wrong_password_allocates_nothing(turn_relay, peer):
    _, _, user, password = metadata_turn(turn_relay).split(":", 3)
    before = turn_relay.metrics()["relaybox_turn_allocations_created_total"]
    wrong = ("B" if password[0] == "A" else "A") + password[1:]
    r = uclient(turn_relay, user, wrong, peer, "-n", "3", timeout=30)
    out = r.stdout + r.stderr
    assert "error 4" in out and not re.search(r"tot_recv_msgs=[1-9]", out), out[-3000:]
    assert turn_relay.metrics()["relaybox_turn_allocations_created_total"] == before


def _uclient_from(relay, user, password, peer, *args):
    # From the relay's own loopback address (the other tests' allocations, which stay until their
    # lifetime ends, came from 127.0.0.1).
    return subprocess.Popen(
        [UCLIENT, "-c", "-X", "-L", relay.ip, "-u", user, "-w", password, "-p", str(relay.turn_port),
         "-e", relay.ip, "-r", str(peer), *args, relay.ip],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _watch(relay, p, open0: int, want: int) -> tuple[int, int]:
    """Most allocations open at once while `p` runs (beyond `open0`), and the RSS then."""
    held, rss = 0, 0
    deadline = time.monotonic() + 30
    while p.poll() is None and time.monotonic() < deadline:
        held = max(held, int(relay.metrics()["relaybox_turn_allocations"]) - open0)
        if held >= want:
            rss = max(rss, relay.rss_kib())
        time.sleep(0.05)
    return held, rss


def test_rss_per_allocation_and_throughput(turn_relay, peer):
    """Many clients relay at once: RSS with their allocations held, bytes per second relayed."""
    _, _, user, password = metadata_turn(turn_relay).split(":", 3)
    base = turn_relay.metrics()
    rss0 = turn_relay.rss_kib()
    t0 = time.monotonic()
    # Each client: 400 datagrams of 1000 bytes, one every 2 ms (the peer echoes each back).
    # uclient makes up to two allocations per client (-m; pairs with a reserved port).
    clients = PER_USER // 4
    p = _uclient_from(turn_relay, user, password, peer, "-n", "400", "-l", "1000", "-z", "2",
                      "-m", str(clients))
    held, rss_held = _watch(turn_relay, p, int(base["relaybox_turn_allocations"]), clients)
    out, _ = p.communicate(timeout=40)
    wall = time.monotonic() - t0
    after = turn_relay.metrics()
    sent, received = _stat(out, "tot_send_msgs"), _stat(out, "tot_recv_msgs")
    assert "error" not in out and clients <= held <= 2 * clients, f"held {held} at once\n{out[-3000:]}"
    assert sent == clients * 400 and received >= sent * 0.9, out[-3000:]
    relayed = after["relaybox_turn_relayed_bytes_total"] - base["relaybox_turn_relayed_bytes_total"]
    line = (
        f"{held} allocations held: RSS {rss0} KiB -> {rss_held} KiB = "
        f"{(rss_held - rss0) / held:.1f} KiB per allocation; relayed {relayed / 1e6:.2f} MB "
        f"(both directions) in {wall:.1f} s of uclient = {relayed / wall / 1e6:.2f} MB/s; "
        f"uclient sent {sent} datagrams, got {received} back; {out.strip().splitlines()[-3]}"
    )
    print(line)
    (mailhelpers.artifacts_dir() / "turn.txt").write_text(line + "\n")


def test_allocations_per_user_are_capped(turn_relay, peer):
    """While one username holds its cap, one more allocation with it is refused (508) and one
    with a fresh username from the same address is not."""
    _, _, user, password = metadata_turn(turn_relay).split(":", 3)
    base = turn_relay.metrics()
    open0 = int(base["relaybox_turn_allocations"])
    # PER_USER / 2 clients, two allocations each, kept for about 10 s.
    holder = _uclient_from(turn_relay, user, password, peer, "-n", "500", "-m", str(PER_USER // 2))
    try:
        deadline = time.monotonic() + 20
        while int(turn_relay.metrics()["relaybox_turn_allocations"]) - open0 < PER_USER:
            assert holder.poll() is None and time.monotonic() < deadline, holder.stdout.read()[-3000:]
            time.sleep(0.05)
        one_more = uclient(turn_relay, user, password, peer, "-n", "2")
        assert "error 508" in one_more.stdout + one_more.stderr, one_more.stdout[-3000:]
        assert turn_relay.metrics()["relaybox_turn_refused_total"] > base["relaybox_turn_refused_total"]
        _, _, other, other_password = metadata_turn(turn_relay).split(":", 3)
        r = uclient(turn_relay, other, other_password, peer, "-n", "2")
        assert _stat(r.stdout + r.stderr, "tot_recv_msgs") == 2, r.stdout[-3000:]
    finally:
        holder.kill()
        holder.communicate(timeout=10)


def test_a_taken_turn_port_leaves_mail_running_and_announces_nothing(tmp_path):
    r = TurnRelay("turn-taken", tmp_path / "taken")
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind((r.ip, r.turn_port))
    try:
        r.start()
        try:
            assert metadata_turn_or_nil(r) is None
            assert "TURN" in r.stderr() and "calls will use the clients' other TURN servers" in r.stderr()
        finally:
            r.stop()
    finally:
        blocker.close()


def metadata_turn_or_nil(relay) -> str | None:
    addr, password = relay.new_credentials()
    conn = mailhelpers.imap_login(relay, addr, password)
    try:
        typ, data = conn._simple_command("GETMETADATA", '""', "/shared/vendor/deltachat/turn")
        assert typ == "OK", data
        typ, data = conn._untagged_response(typ, data, "METADATA")
        return None if data[0].endswith(b"NIL)") else data[0].decode()
    finally:
        conn.logout()
