"""Durability of the outbound queue (a.test -> b.test), with short retry delays
(queue_retry_initial 1s, queue_retry_max 3s):

* the receiver is stopped; 200 messages are submitted to a.test (each accepted with 250, so
  each must be on disk); a.test is killed with SIGKILL; both restart; every message arrives at
  b.test exactly once (counted by Message-ID over IMAP).
* the receiver stays down for much longer than the retry delays; once back it gets every
  queued message exactly once.

Both need the outbound queue; they fail with the submission reply or the missing Message-IDs
until it is there.
"""

from __future__ import annotations

import collections
import email
import time

import pytest

import fedhelpers as fh
from mailhelpers import build_message

A_IP, B_IP = "127.0.0.2", "127.0.0.3"
N_MESSAGES = 200
N_RECIPIENTS = 4


@pytest.fixture(scope="module")
def fed(request, tmp_path_factory):
    def build(f):
        f.offset = fh.pick_offset([A_IP, B_IP])
        extra = {
            "queue_retry_initial": "1s",
            "queue_retry_max": "3s",
            # 200 messages from one sender in a few seconds
            "max_user_send_per_minute": 100000,
            "max_user_send_burst_size": 100000,
        }
        f.add_named("a.test", A_IP, extra)
        f.add_named("b.test", B_IP, extra)

    yield from fh.federation_fixture(request, tmp_path_factory, build)


@pytest.fixture(autouse=True)
def _both_up(fed):
    """Each test starts and ends with both relays running."""
    for r in fed.relays.values():
        if not r.alive():
            r.start()
    yield
    for r in fed.relays.values():
        if not r.alive():
            r.start()


def _recipients(b, n):
    return [fh.new_account(b) for _ in range(n)]


def _submit_all(a, alice, alice_pw, rcpts, n, tag):
    """n encrypted-shaped messages, round-robin over rcpts; returns {Message-ID: rcpt addr}."""
    msgs, want = [], {}
    for i in range(n):
        to = rcpts[i % len(rcpts)][0]
        raw = build_message(alice, [to], body=f"{tag} {i}", subject=f"{tag} {i}")
        mid = email.message_from_bytes(raw)["Message-ID"].strip()
        want[mid] = to
        msgs.append((alice, [to], raw))
    t0 = time.monotonic()
    problems = fh.submit(a, alice, alice_pw, msgs, timeout=60)
    assert not problems, (
        f"a.test did not accept all {n} messages for b.test with 250 ({len(problems)} refused); first: "
        f"{problems[:3]}")
    return want, time.monotonic() - t0


def _wait_all_once(b, a, rcpts, want, timeout, settle=6.0):
    """Wait until every Message-ID of `want` is in its recipient's INBOX; then wait `settle`
    seconds more (longer than queue_retry_max) and check nothing arrived twice."""
    deadline = time.monotonic() + timeout
    counts: collections.Counter = collections.Counter()
    while True:
        counts = collections.Counter()
        err = None
        try:
            for addr, pw in rcpts:
                counts.update(fh.message_ids(fh.inbox_raw(b, addr, pw, headers_only=True)))
        except Exception as e:  # noqa: BLE001 - a relay coming up; retried until the deadline
            err = e
        missing = [m for m in want if counts[m] == 0]
        if not missing and err is None:
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(missing)} of {len(want)} messages did not arrive at b.test within {timeout:.0f}s "
                f"(first missing: {missing[:3]}; last IMAP error: {err})\n"
                f"--- a.test log tail ---\n{a.log_tail(4000)}\n--- b.test log tail ---\n{b.log_tail(2000)}")
        time.sleep(1.0)
    time.sleep(settle)
    counts = collections.Counter()
    for addr, pw in rcpts:
        counts.update(fh.message_ids(fh.inbox_raw(b, addr, pw, headers_only=True)))
    twice = {m: c for m, c in counts.items() if m in want and c > 1}
    assert not twice, f"{len(twice)} messages arrived more than once, e.g. {list(twice.items())[:5]}"
    stray = [m for m in counts if m not in want]
    assert not stray, f"unexpected messages at b.test: {stray[:5]}"
    return counts


@pytest.mark.timeout(300)
def test_kill9_with_200_queued_messages(fed, capsys):
    a, b = fed.relays["a.test"], fed.relays["b.test"]
    alice, alice_pw = fh.new_account(a)
    rcpts = _recipients(b, N_RECIPIENTS)
    b.stop()
    want, took = _submit_all(a, alice, alice_pw, rcpts, N_MESSAGES, "durable")
    a.kill9()
    b.start()
    a.start()
    t0 = time.monotonic()
    _wait_all_once(b, a, rcpts, want, timeout=120)
    with capsys.disabled():
        print(f"\n{N_MESSAGES} messages submitted in {took:.1f}s; all at b.test {time.monotonic() - t0:.1f}s "
              "after the restart, each once")


@pytest.mark.timeout(240)
def test_receiver_down_longer_than_retry_delays(fed):
    a, b = fed.relays["a.test"], fed.relays["b.test"]
    alice, alice_pw = fh.new_account(a)
    rcpts = _recipients(b, 2)
    b.stop()
    want, _ = _submit_all(a, alice, alice_pw, rcpts, 20, "patient")
    # several retries (1s, 2s, 3s, 3s, ...) fail while b.test is down
    time.sleep(15)
    assert a.alive(), f"a.test died while b.test was down\n{a.log_tail()}"
    b.start()
    _wait_all_once(b, a, rcpts, want, timeout=60)
