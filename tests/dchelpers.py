"""Delta Chat (real core, via deltachat-rpc-server) helpers for the relaybox suite.

Every wait has a deadline: a missing event fails the test with the account's last events instead
of hanging CI.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import sys
import time
from pathlib import Path

from deltachat_rpc_client import Account, DeltaChat, Rpc
from deltachat_rpc_client._utils import AttrDict
from deltachat_rpc_client.rpc import JsonRpcError

log = logging.getLogger("relaybox.dc")

DEFAULT_TIMEOUT = 90.0
SELF_CONTACT_ID = 1


def self_addr(ac: Account) -> str:
    """The profile's own address (get_config("addr") is empty on multi-transport cores)."""
    return ac.self_contact.get_snapshot().address


def rpc_server_path() -> str:
    explicit = os.environ.get("DELTACHAT_RPC_SERVER")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "deltachat-rpc-server"
    if beside.exists():
        return str(beside)
    return "deltachat-rpc-server"


def start_rpc(accounts_dir: Path, stderr_path: Path) -> tuple[Rpc, object]:
    stderr = open(stderr_path, "wb")
    rpc = Rpc(accounts_dir=str(accounts_dir), rpc_server_path=rpc_server_path(), stderr=stderr)
    rpc.start()
    return rpc, stderr


def _summary(ev: AttrDict) -> str:
    parts = [ev.get("kind", "?")]
    for key in ("msg", "msg_id", "chat_id", "contact_id", "progress", "comment"):
        if key in ev and ev[key] not in (None, ""):
            val = ev[key]
            if isinstance(val, str) and len(val) > 300:
                val = val[:300] + "..."
            parts.append(f"{key}={val}")
    return " ".join(str(p) for p in parts)


class Events:
    """Reads each account's event queue with deadlines and remembers the recent events."""

    def __init__(self):
        self.recent: dict[int, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=60))
        self.names: dict[int, str] = {}

    def name(self, ac: Account) -> str:
        return self.names.get(ac.id, f"account{ac.id}")

    def get(self, ac: Account, timeout: float) -> AttrDict | None:
        q = ac._rpc.get_queue(ac.id)
        try:
            raw = q.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        ev = AttrDict(raw)
        line = _summary(ev)
        self.recent[ac.id].append(f"{time.strftime('%H:%M:%S')} {line}")
        level = logging.WARNING if ev.kind in ("Warning", "Error", "MsgFailed") else logging.DEBUG
        log.log(level, "[%s] %s", self.name(ac), line)
        return ev

    def wait(self, ac: Account, pred, what: str, timeout: float = DEFAULT_TIMEOUT) -> AttrDict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(self.timeout_text(ac, what, timeout))
            ev = self.get(ac, remaining)
            if ev is None:
                raise AssertionError(self.timeout_text(ac, what, timeout))
            if ev.kind == "MsgFailed":
                snap = ac.get_message_by_id(ev.msg_id).get_snapshot()
                raise AssertionError(
                    f"[{self.name(ac)}] message {ev.msg_id} failed while waiting for {what}: "
                    f"{snap.get('error')!r}\n" + self.recent_text(ac)
                )
            if pred(ev):
                return ev

    def recent_text(self, ac: Account) -> str:
        return f"last events of {self.name(ac)}:\n  " + "\n  ".join(self.recent[ac.id])

    def timeout_text(self, ac: Account, what: str, timeout: float) -> str:
        return f"[{self.name(ac)}] no {what} within {timeout:.0f}s\n" + self.recent_text(ac)

    # --- common waits -------------------------------------------------------------------------

    def incoming_text(self, ac: Account, text: str, timeout: float = DEFAULT_TIMEOUT) -> AttrDict:
        """Wait until a received message with text `text` shows up; return its snapshot.

        Core emits IncomingMsg for the first message of a contact request only; later ones in
        a not yet accepted chat come as MsgsChanged. Both count here (tests that measure
        notification timing accept the chat first and look at IncomingMsg themselves).
        """
        found: list[AttrDict] = []

        def pred(ev):
            if ev.kind not in ("IncomingMsg", "MsgsChanged") or not ev.get("msg_id"):
                return False
            snap = ac.get_message_by_id(ev.msg_id).get_snapshot()
            if snap.from_id == SELF_CONTACT_ID:
                return False
            if snap.text == text:
                found.append(snap)
                return True
            if ev.kind == "IncomingMsg":
                log.info("[%s] other incoming message %r", self.name(ac), snap.text[:80])
            return False

        self.wait(ac, pred, f"incoming message {text!r}", timeout)
        return found[0]

    def securejoin_done(self, ac: Account, kind: str, timeout: float = DEFAULT_TIMEOUT) -> AttrDict:
        return self.wait(ac, lambda e: e.kind == kind and e.get("progress") == 1000, f"{kind} 1000", timeout)


class AccountMaker:
    """Creates Delta Chat profiles configured from a dclogin: URL for the test relay."""

    def __init__(self, dc: DeltaChat, relay, events: Events):
        self.dc = dc
        self.relay = relay
        self.events = events
        self.created: list[Account] = []

    @staticmethod
    def configure_from_qr(ac: Account, url: str):
        """Return a future that configures `ac` from a dclogin: URL.

        Newer cores have add_transport_from_qr; older ones set_config_from_qr + configure.
        """
        fut = ac.add_transport_from_qr.future(url)

        def result():
            try:
                return fut()
            except JsonRpcError as e:
                if "method not found" not in str(e).lower():
                    raise
                ac.set_config_from_qr(url)
                return ac.configure()

        return result

    def new_accounts(self, names: list[str]) -> list[Account]:
        """Create, configure (in parallel) and bring online one profile per name."""
        accounts = []
        futures = []
        for name in names:
            ac = self.dc.add_account()
            self.events.names[ac.id] = name
            ac.set_config("displayname", name)
            addr, pw = self.relay.new_credentials()
            url = self.relay.dclogin_url(addr, pw)
            log.info("configuring %s as %s via %s", name, addr, url)
            futures.append((ac, name, url, self.configure_from_qr(ac, url)))
            accounts.append(ac)
            self.created.append(ac)
        for ac, name, url, fut in futures:
            try:
                fut()
            except JsonRpcError as e:
                raise AssertionError(
                    f"configuring {name} from {url} failed: {e}\n{self.events.recent_text(ac)}\n"
                    f"relay stderr (tail):\n{self.relay.stderr()[-3000:]}"
                ) from e
            assert ac.is_configured(), f"{name} not configured"
        for ac in accounts:
            ac.start_io()
        for ac in accounts:
            ac._rpc.wait_for_all_work_done(ac.id)
            # drain what was queued during configure/start; keep it in the recent-events log
            while self.events.get(ac, 0) is not None:
                pass
        return accounts

    def close(self):
        for ac in self.created:
            try:
                ac.stop_io()
            except Exception:
                pass
