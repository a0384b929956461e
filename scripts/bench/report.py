#!/usr/bin/env python3
"""Turns the per-step JSON files of scripts/bench/run.sh into one result file and a table."""
import json
import os
import platform
import sys
import time
from pathlib import Path

res, out, load, quick, idle_clients, disk_msgs = sys.argv[1:7]
res = Path(res)
idle_counts = [int(n) for n in idle_clients.split(",") if n]
disk_msgs = int(disk_msgs)


def load_json(name):
    p = res / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


stacks = ("relaybox", "reference")
raw = {s: {} for s in stacks}
for p in sorted(res.glob("*.json")):
    for s in stacks:
        if p.name.startswith(s + "-"):
            raw[s][p.stem[len(s) + 1:]] = json.loads(p.read_text())
cold = load_json("coldstart") or {}

rows = []  # (section, name, unit, relaybox, reference, lower_is_better)


def row(section, name, unit, f, lower=True):
    vals = []
    for s in stacks:
        try:
            vals.append(f(raw[s]))
        except (KeyError, TypeError, ZeroDivisionError):
            vals.append(None)
    rows.append((section, name, unit, vals[0], vals[1], lower))


for what in ("data_to_exists", "data_to_body", "data_to_250"):
    for q in ("p50", "p90", "p99", "max"):
        row("latency 4 KB", f"{what} {q}", "ms", lambda r, w=what, q=q: r["latency"][w][f"{q}_ms"])
for size in (4096, 102400):
    for c in (1, 8, 64):
        k = f"tp-{size}-{c}"
        row(f"throughput {size // 1024} KB", f"C={c} accepted", "msg/s",
            lambda r, k=k: r[k]["accepted_per_s"], lower=False)
        row(f"throughput {size // 1024} KB", f"C={c} delivered", "msg/s",
            lambda r, k=k: r[k]["delivered_per_s"], lower=False)
        row(f"throughput {size // 1024} KB", f"C={c} submit p99", "ms",
            lambda r, k=k: r[k]["submit_latency"]["p99_ms"])
def base(r, m, kind):
    """The memory the clients of row m are counted from: the stack just before they came
    (results since 2026-12-07), else the stack idle after its start (older results, which
    count the caches the rows before filled as the clients' cost)."""
    return r[m].get(f"before_{kind}_kib", r["mem-idle"][f"{kind}_kib"])


row("memory", "idle RSS (sum)", "MiB", lambda r: r["mem-idle"]["rss_kib"] / 1024)
row("memory", "idle PSS (sum)", "MiB", lambda r: r["mem-idle"]["pss_kib"] / 1024)
row("memory", "idle processes", "", lambda r: r["mem-idle"]["procs"])
for n in idle_counts:
    m, k = f"mem-clients-{n}", f"idle-{n}"
    row("memory", f"{n} IDLE: RSS (sum)", "MiB", lambda r, m=m: r[m]["settled_rss_kib"] / 1024)
    row("memory", f"{n} IDLE: PSS (sum)", "MiB", lambda r, m=m: r[m]["settled_pss_kib"] / 1024)
    row("memory", f"{n} IDLE: processes", "", lambda r, m=m: r[m]["settled_procs"])
    row("memory", f"{n} IDLE: PSS before settling", "MiB", lambda r, m=m: r[m]["pss_kib"] / 1024)
    row("memory", f"{n} IDLE: connections established", "", lambda r, k=k: r[k]["established"], lower=False)
    row("memory", f"{n} IDLE: RSS before the clients", "MiB",
        lambda r, m=m: base(r, m, "rss") / 1024)
    row("memory", f"{n} IDLE: PSS per connection", "KiB",
        lambda r, m=m, k=k: (r[m]["settled_pss_kib"] - base(r, m, "pss")) / r[k]["established"])
    row("memory", f"{n} IDLE: RSS per connection", "KiB",
        lambda r, m=m, k=k: (r[m]["settled_rss_kib"] - base(r, m, "rss")) / r[k]["established"])
for size in (4096, 102400):
    row("disk writes", f"{size // 1024} KB: write_bytes/msg", "KiB",
        lambda r, s=size: r[f"diskio-{s}"]["write_bytes"] / r[f"disk-{s}"]["delivered"] / 1024)
    row("disk writes", f"{size // 1024} KB: net of cancelled/msg", "KiB",
        lambda r, s=size: (r[f"diskio-{s}"]["write_bytes"] - r[f"diskio-{s}"]["cancelled_write_bytes"])
        / r[f"disk-{s}"]["delivered"] / 1024)
row("disk writes", "4.7 KB paced 1/s, C=1: write_bytes/msg", "KiB",
    lambda r: r["diskio-paced"]["write_bytes"] / r["disk-paced"]["delivered"] / 1024)
row("disk writes", "4.7 KB paced 1/s, C=1: net of cancelled/msg", "KiB",
    lambda r: (r["diskio-paced"]["write_bytes"] - r["diskio-paced"]["cancelled_write_bytes"])
    / r["disk-paced"]["delivered"] / 1024)
row("Delta Chat", "ping-pong round trip median", "ms", lambda r: r["dc"]["median_ms"])
row("Delta Chat", "ping-pong round trip max", "ms", lambda r: r["dc"]["max_ms"])
row("Delta Chat", "samples", "", lambda r: r["dc"]["count"], lower=False)
rows.append(("cold start", "start to all listeners", "s", cold.get("relaybox"), cold.get("reference"), True))


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


lines = ["| section | metric | unit | relaybox | reference | ratio (relaybox/reference) |",
         "|---|---|---|---:|---:|---:|"]
for sec, name, unit, a, b, lower in rows:
    ratio = f"{a / b:.3g}" if a is not None and b not in (None, 0) else "—"
    lines.append(f"| {sec} | {name} | {unit} | {fmt(a)} | {fmt(b)} | {ratio} |")
table = "\n".join(lines)
print(table)
doc = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "loadavg_at_end": load},
    "quick": quick == "1",
    "idle_clients": idle_counts,
    "disk_messages": disk_msgs,
    "rows": [dict(section=r[0], metric=r[1], unit=r[2], relaybox=r[3], reference=r[4]) for r in rows],
    "coldstart_s": cold,
    "raw": raw,
    "table_md": table,
}
Path(out).write_text(json.dumps(doc, indent=1) + "\n")
