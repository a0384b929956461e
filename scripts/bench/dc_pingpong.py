#!/usr/bin/env python3
"""The Delta Chat round trip of the benchmark (issue 8, row 6): two real Delta Chat cores.

    dc_pingpong.py --label relaybox --host 127.0.0.19 --domain '[127.0.0.19]' \
        --first-account 20000 --password P --count 20 --json out.json

Configures two profiles from dclogin: URLs (accounts bnch<5 digits>@<domain>, the same naming as
loadgen; relaybox creates them on first login, the reference stack has them pre-created), makes
alice and bob know each other's keys (alice writes first, bob accepts), then alice sends
"ping N" and bob answers "pong N" as soon as he sees it, COUNT times. One sample is the time
from alice's send_text call to the IncomingMsg of the pong on alice: two deliveries, each
SMTP submission → relay → IMAP IDLE → fetch, and bob's reaction in between — what a chat user
feels, and what `cmdeploy bench` of the reference measures.

Runs with the test suite's venv (scripts/test.sh setup installs deltachat-rpc-server/-client).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import dchelpers  # noqa: E402
from deltachat_rpc_client import DeltaChat  # noqa: E402


class Stack:
    """What dchelpers.AccountMaker needs of a relay: credentials and their dclogin: URL."""

    def __init__(self, args):
        self.args = args
        self.next = args.first_account

    def new_credentials(self) -> tuple[str, str]:
        addr = f"bnch{self.next:05d}@{self.args.domain}"
        self.next += 1
        return addr, self.args.password

    def dclogin_url(self, addr: str, password: str) -> str:
        a = self.args
        return (
            f"dclogin:{urllib.parse.quote(addr, safe='@[]')}?p={urllib.parse.quote(password, safe='')}&v=1"
            f"&ih={a.host}&ip={a.imap_port}&is=ssl&sh={a.host}&sp={a.smtp_port}&ss=ssl&ic=3"
        )

    def stderr(self) -> str:
        return ""


def pong_loop(events: dchelpers.Events, alice, bob, count: int, timeout: float, pause: float) -> list[float]:
    chat = alice.create_chat(bob)
    chat.send_text("hello")
    events.incoming_text(bob, "hello", timeout).chat.accept()
    bob_chat = None
    samples = []
    for i in range(count):
        # The core sends at most one message per second from an account (seen here: a ping
        # sent right after the pong leaves exactly 1.000 s after the previous ping), so rounds
        # back to back would measure that pacing, not the relay. A user does not chat that fast.
        time.sleep(pause)
        t0 = time.monotonic()
        chat.send_text(f"ping {i}")
        snap = events.incoming_text(bob, f"ping {i}", timeout)
        bob_chat = bob_chat or snap.chat
        bob_chat.send_text(f"pong {i}")
        events.incoming_text(alice, f"pong {i}", timeout)
        samples.append((time.monotonic() - t0) * 1000.0)
    return samples


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--domain", required=True)
    p.add_argument("--imap-port", type=int, default=993)
    p.add_argument("--smtp-port", type=int, default=465)
    p.add_argument("--first-account", type=int, required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--pause", type=float, default=1.2, help="seconds between rounds (default 1.2)")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="dc-pingpong-") as tmp:
        rpc, stderr = dchelpers.start_rpc(Path(tmp) / "accounts", Path(tmp) / "rpc.stderr.log")
        try:
            events = dchelpers.Events()
            maker = dchelpers.AccountMaker(DeltaChat(rpc), Stack(args), events)
            t0 = time.monotonic()
            alice, bob = maker.new_accounts(["alice", "bob"])
            configure_s = time.monotonic() - t0
            samples = pong_loop(events, alice, bob, args.count, args.timeout, args.pause)
            maker.close()
        finally:
            rpc.close()
            stderr.close()
    result = {
        "label": args.label,
        "count": len(samples),
        "samples_ms": [round(s, 1) for s in samples],
        "median_ms": round(statistics.median(samples), 1),
        "min_ms": round(min(samples), 1),
        "max_ms": round(max(samples), 1),
        "configure_two_profiles_s": round(configure_s, 2),
    }
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.label}: ping-pong median {result['median_ms']} ms over {len(samples)} "
          f"(min {result['min_ms']}, max {result['max_ms']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
