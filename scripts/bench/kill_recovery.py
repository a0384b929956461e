#!/usr/bin/env python3
"""Start-up time after kill -9 with a store filled over SMTP (issue 18 item 4, a row small enough
to fill through the relay itself, so that any binary can be measured on data it wrote).

Fills one `relaybox dev` with COUNT messages from `loadgen throughput` (CLIENTS senders), kills
it with SIGKILL right after the last 250, drops the page cache (root), and times the restart
until "all listeners up"; then a clean stop and a clean start for comparison. Loopback only;
bounded by COUNT and loadgen's timeouts. The data dir is removed at the end.

  python3 scripts/bench/kill_recovery.py --bin BIN --loadgen target/release/loadgen --count 50000
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "attack"))
from _relay import LOADGEN_SETTINGS, pick_address  # noqa: E402

# The loadgen settings, and a mailbox large enough for the whole fill.
SETTINGS = LOADGEN_SETTINGS + 'max_mailbox_size = "100G"\n'


def start(binary: str, ip: str, offset: int, data: Path, log: Path) -> tuple[subprocess.Popen, float]:
    log.write_bytes(b"")
    t0 = time.monotonic()
    proc = subprocess.Popen([binary, "dev", "--ip", ip, "--data", str(data), "--port-offset", str(offset)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                            env=dict(os.environ, RUST_LOG="warn,relaybox=info", NO_COLOR="1"),
                            start_new_session=True)
    while b"all listeners up" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() - t0 > 300:
            proc.kill()
            raise SystemExit("relay did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.01)
    return proc, time.monotonic() - t0


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        print("(not root: page cache not dropped)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--count", type=int, default=50000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--size", type=int, default=2048)
    args = ap.parse_args()
    ip, offset = pick_address()
    work = Path(tempfile.mkdtemp(prefix="relaybox-killrec-"))
    data, log = work / "data", work / "stderr.log"
    data.mkdir()
    (data / "settings.toml").write_text(SETTINGS)
    proc = None
    try:
        proc, _ = start(args.bin, ip, offset, data, log)
        base = [args.loadgen, "--host", ip, "--smtp-port", str(465 + offset), "--imap-port", str(993 + offset),
                "--domain", f"[{ip}]"]
        t0 = time.monotonic()
        subprocess.run(base + ["throughput", "--clients", str(args.clients), "--size", str(args.size),
                               "--duration", "3000", "--count", str(args.count), "--drain-timeout", "5"],
                       check=False, stdout=subprocess.DEVNULL, timeout=3600)
        fill = time.monotonic() - t0
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        size = sum(f.stat().st_size for f in data.rglob("index.*"))
        drop_caches()
        proc, after_kill = start(args.bin, ip, offset, data, log)
        replayed = "replayed the index log" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        drop_caches()
        proc, clean = start(args.bin, ip, offset, data, log)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        proc = None
        print(f"messages={args.count} fill_s={fill:.1f} index_files_MB={size / 1e6:.1f} "
              f"start_after_kill9_s={after_kill:.2f} (log replayed: {replayed}) clean_start_s={clean:.2f}")
    finally:
        if proc and proc.poll() is None:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
