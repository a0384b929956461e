"""scripts/lib.sh: `ensure_cargo` holds the toolchain to the workspace's `rust-version` (issue 16
item 6). Runs the real functions with stand-in `cargo`, `rustc` and `rustup` on PATH."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "scripts" / "lib.sh"
RUST_VERSION = re.search(r'^rust-version *= *"([0-9.]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)


def _tool(bindir: Path, name: str, body: str):
    p = bindir / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(0o755)


def _ensure_cargo(tmp_path: Path, rustc: str, rustup_to: str | None = None):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    version_file = tmp_path / "rustc-version"
    version_file.write_text(rustc)
    _tool(bindir, "cargo", "exit 0")
    _tool(bindir, "rustc", f'echo "rustc $(cat {version_file}) (0000000 2026-01-01)"')
    if rustup_to is not None:
        _tool(bindir, "rustup", f'echo "rustup $*" >>{tmp_path}/rustup.log; echo {rustup_to} >{version_file}')
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(
        ["bash", "-c", f". {LIB}; ensure_cargo"], env=env, capture_output=True, text=True, timeout=30
    )


def _older(v: str) -> str:
    major, minor = (int(x) for x in v.split(".")[:2])
    return f"{major}.{minor - 1}.9"


def test_a_current_toolchain_is_left_alone(tmp_path):
    r = _ensure_cargo(tmp_path, f"{RUST_VERSION}.0", rustup_to="9.9.9")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "rustup.log").exists(), "rustup ran for a current toolchain"


def test_an_old_toolchain_without_rustup_is_refused_naming_both_versions(tmp_path):
    old = _older(RUST_VERSION)
    r = _ensure_cargo(tmp_path, old)
    assert r.returncode != 0, f"ensure_cargo accepted rustc {old} (rust-version {RUST_VERSION})"
    assert f"needs Rust {RUST_VERSION} or newer" in r.stderr, r.stderr
    assert old in r.stderr, r.stderr


def test_an_old_rustup_toolchain_is_updated(tmp_path):
    r = _ensure_cargo(tmp_path, _older(RUST_VERSION), rustup_to=f"{RUST_VERSION}.1")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rustup.log").read_text().strip() == "rustup update stable"


def test_rustup_that_cannot_reach_the_version_is_still_refused(tmp_path):
    old = _older(RUST_VERSION)
    r = _ensure_cargo(tmp_path, old, rustup_to=old)
    assert r.returncode != 0
    assert f"needs Rust {RUST_VERSION} or newer" in r.stderr, r.stderr
