"""Fixtures for the relaybox end-to-end suite.

`relay` (module scope) starts `relaybox dev` on a spare loopback address (127.0.0.X) with a
spare port offset, waits for `all listeners up` on stderr, and stops it at teardown (SIGTERM,
then SIGKILL). When a test of the module failed, or the relay died, its stdout/stderr logs are
kept in test-artifacts/.

Environment:
  RELAYBOX_BIN            the relaybox binary (default: <repo>/target/release/relaybox)
  RELAYBOX_ARTIFACTS      where logs and measurements go (default: <repo>/test-artifacts)
  DELTACHAT_RPC_SERVER    the deltachat-rpc-server binary (default: the one beside this Python)
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mailhelpers  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = mailhelpers.ARTIFACTS
artifacts_dir = mailhelpers.artifacts_dir
RELAYBOX_BIN = Path(os.environ.get("RELAYBOX_BIN", REPO / "target" / "release" / "relaybox"))
READY_LINE = "all listeners up"
START_TIMEOUT = 60

# service name -> standard port; every one is shifted by the offset
PORTS = {
    "smtp": 25,
    "http": 80,
    "imap": 143,
    "https": 443,
    "submissions": 465,
    "submission": 587,
    "imaps": 993,
    "metrics": 9464,
}


def _ports_free(ip: str, offset: int) -> bool:
    for port in PORTS.values():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((ip, port + offset))
        except OSError:
            return False
        finally:
            s.close()
    return True


_used_ips: set[str] = set()


def pick_address() -> tuple[str, int]:
    """A loopback address 127.0.0.X (X in 2..250, not used by this run yet) and an offset N such
    that every service port + N is free there."""
    rng = random.Random()
    for _ in range(200):
        ip = f"127.0.0.{rng.randint(2, 250)}"
        if ip in _used_ips:
            continue
        # the highest port (metrics, 9464) + offset must stay below 65536
        offset = rng.randrange(20000, 56000, 10)
        if _ports_free(ip, offset):
            _used_ips.add(ip)
            return ip, offset
    raise RuntimeError("no free loopback address/port offset found")


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "?"


class Relay:
    """One running `relaybox dev` instance."""

    def __init__(self, name: str, workdir: Path, ip: str | None = None, offset: int | None = None):
        if ip is None or offset is None:
            ip, offset = pick_address()
        self.name = name
        self.ip = ip
        self.offset = offset
        self.domain = f"[{ip}]"
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.stderr_path = workdir / "relay.stderr.log"
        self.stdout_path = workdir / "relay.stdout.log"
        self.proc: subprocess.Popen | None = None
        self.died: str | None = None

    # --- addresses -------------------------------------------------------------------------

    def port(self, service: str) -> int:
        return PORTS[service] + self.offset

    def addr(self, localpart: str) -> str:
        return f"{localpart}@{self.domain}"

    def new_credentials(self) -> tuple[str, str]:
        return self.addr(mailhelpers.random_localpart()), mailhelpers.random_password(16)

    def dclogin_url(self, addr: str, password: str) -> str:
        """A dclogin: URL for Delta Chat, the form the chatmail test harnesses use for IP relays."""
        quoted_addr = urllib.parse.quote(addr, safe="@[]")
        return (
            f"dclogin:{quoted_addr}?p={urllib.parse.quote(password, safe='')}&v=1"
            f"&ih={self.ip}&ip={self.port('imaps')}&is=ssl"
            f"&sh={self.ip}&sp={self.port('submissions')}&ss=ssl&ic=3"
        )

    # --- observation -----------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """The metrics endpoint's samples by their exposition name (labels included as printed)."""
        with urllib.request.urlopen(f"http://{self.ip}:{self.port('metrics')}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    # --- process ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            str(RELAYBOX_BIN),
            "dev",
            "--ip",
            self.ip,
            "--data",
            str(self.data_dir),
            "--port-offset",
            str(self.offset),
        ]

    def start(self) -> None:
        if not RELAYBOX_BIN.exists():
            pytest.fail(
                f"relaybox binary not found at {RELAYBOX_BIN} "
                "(build it with `cargo build --release -p relaybox` or set RELAYBOX_BIN)",
                pytrace=False,
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")  # plain log files
        env.setdefault("RUST_BACKTRACE", "1")
        out = open(self.stdout_path, "wb")
        err = open(self.stderr_path, "wb")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )
        finally:
            out.close()
            err.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if READY_LINE in self.stderr():
                break
            rc = self.proc.poll()
            if rc is not None:
                self.died = f"exited with code {rc} during start-up"
                pytest.fail(
                    f"relay {self.name} ({' '.join(self.command())}) exited with code {rc} before "
                    f"`{READY_LINE}`\n--- stderr ---\n{self.stderr()[-8000:]}\n--- stdout ---\n{self.stdout()[-2000:]}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                self.stop()
                self.died = "did not come up"
                pytest.fail(
                    f"relay {self.name} did not print `{READY_LINE}` within {START_TIMEOUT}s "
                    f"(load {_loadavg()})\n--- stderr ---\n{self.stderr()[-8000:]}",
                    pytrace=False,
                )
            time.sleep(0.05)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def printed_dclogin(self, timeout: float = 10) -> str:
        """The `dclogin:` line the relay printed on stdout at start-up."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.stdout().splitlines():
                m = re.search(r"dclogin:\S+", line)
                if line.strip().startswith("dclogin:") and m:
                    return m.group(0)
            if time.monotonic() > deadline:
                raise AssertionError(f"relay printed no line starting with `dclogin:`; stdout:\n{self.stdout()[-3000:]}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None and not self.died:
            self.died = f"exit code {self.proc.returncode}"
            raise AssertionError(
                f"relay {self.name} died with exit code {self.proc.returncode}\n"
                f"--- stderr (tail) ---\n{self.stderr()[-6000:]}"
            )

    def stop(self) -> int | None:
        """SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                with open(self.stderr_path, "a") as f:
                    f.write("\n[test harness] relay ignored SIGTERM for 10 s; killed\n")
        return self.proc.returncode

    def keep_logs(self, tag: str) -> Path:
        dest = artifacts_dir() / f"relay-{tag}"
        dest.mkdir(parents=True, exist_ok=True)
        for p in (self.stderr_path, self.stdout_path):
            if p.exists():
                shutil.copy(p, dest / p.name)
        (dest / "command.txt").write_text(" ".join(self.command()) + "\n")
        return dest


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@pytest.fixture(scope="module")
def relay(request, tmp_path_factory):
    """A `relaybox dev` instance of its own for each test module."""
    yield from _module_relay(request, tmp_path_factory, _safe(request.module.__name__))


@pytest.fixture(scope="module")
def refusals_relay(request, tmp_path_factory):
    """A second instance for tests that fail many logins on purpose: the login throttle counts
    failures per client address (all tests connect from 127.0.0.1), so on the module's main
    relay they would slow down and then refuse every later login of the module."""
    yield from _module_relay(request, tmp_path_factory, _safe(request.module.__name__) + "-refusals")


def _module_relay(request, tmp_path_factory, name):
    r = Relay(name, tmp_path_factory.mktemp(f"relay-{name}"))
    failed_before = request.session.testsfailed
    try:
        r.start()
    except BaseException:
        r.keep_logs(name)
        raise
    yield r
    died = r.proc is not None and r.proc.poll() is not None
    already_reported = bool(r.died)
    rc = r.stop()
    if died or request.session.testsfailed > failed_before:
        where = r.keep_logs(name)
        sys.stderr.write(f"\n[relaybox tests] relay logs of {name} kept in {where}\n")
    if died and not already_reported:
        pytest.fail(
            f"relay {name} died during the tests (exit code {rc})\n--- stderr (tail) ---\n{r.stderr()[-6000:]}",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _relay_still_alive(request):
    """After each test that used a relay, make sure it is still running (a crash is a bug)."""
    yield
    if "relay" in request.fixturenames:
        r = request.getfixturevalue("relay")
        r.assert_alive()


def pytest_report_header(config):
    return [
        f"relaybox binary: {RELAYBOX_BIN} ({'present' if RELAYBOX_BIN.exists() else 'MISSING'})",
        f"artifacts: {ARTIFACTS}",
        f"load average: {_loadavg()}",
        f"test mail shape: {'encrypted' if mailhelpers.REQUIRE_ENCRYPTION else 'plain'}",
    ]


# ------------------------------------------------------------------------------------------------
# Delta Chat (real core through deltachat-rpc-server)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dc(request, tmp_path_factory):
    """One deltachat-rpc-server per test module; its stderr is kept on failure."""
    from deltachat_rpc_client import DeltaChat

    import dchelpers

    name = _safe(request.module.__name__)
    workdir = tmp_path_factory.mktemp(f"dc-{name}")
    stderr_path = workdir / "deltachat-rpc-server.stderr.log"
    failed_before = request.session.testsfailed
    rpc, stderr = dchelpers.start_rpc(workdir / "accounts", stderr_path)
    try:
        yield DeltaChat(rpc)
    finally:
        try:
            rpc.close()
        finally:
            stderr.close()
            if request.session.testsfailed > failed_before and stderr_path.exists():
                shutil.copy(stderr_path, artifacts_dir() / f"{name}-deltachat-rpc-server.stderr.log")


@pytest.fixture
def dc_events():
    import dchelpers

    return dchelpers.Events()


@pytest.fixture
def acmaker(dc, relay, dc_events):
    """`acmaker.new_accounts(["alice", "bob"])` -> configured, online Delta Chat profiles."""
    import dchelpers

    maker = dchelpers.AccountMaker(dc, relay, dc_events)
    yield maker
    maker.close()
