"""The set-up wizard and admin pages in a real browser (issue 6).

`relaybox dev --wizard` behaves like a freshly booted appliance: a one-time setup code, the
wizard on plain HTTP, the admin pages on HTTPS once a password is set. tests/web/wizard.mjs
drives Debian's Chromium through playwright-core (installed by `scripts/test.sh setup` with
`npm ci` in tests/web) and prints what it saw; screenshots of every step go to
test-artifacts/wizard/.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, Relay, artifacts_dir

WEB = REPO / "tests" / "web"


class WizardRelay(Relay):
    def command(self) -> list[str]:
        return super().command() + ["--wizard"]


@pytest.fixture
def wizard_relay(tmp_path):
    r = WizardRelay("wizard", tmp_path / "relay")
    r.start()
    yield r
    if r.stop() not in (0, None, -15):
        r.keep_logs("wizard")


@pytest.fixture
def second_box(tmp_path):
    """A second new box, to move the first one's identity to."""
    r = WizardRelay("wizard2", tmp_path / "relay2")
    r.start()
    yield r
    if r.stop() not in (0, None, -15):
        r.keep_logs("wizard2")


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    pytest.skip("no Chromium installed (scripts/test.sh setup installs Debian's chromium)")


def test_lan_wizard_from_setup_code_to_invite_qr_and_admin_login(wizard_relay, second_box):
    chromium = _browser()
    if not (WEB / "node_modules" / "playwright-core").exists() or not shutil.which("node"):
        pytest.skip("playwright-core missing: run `scripts/test.sh setup` (npm ci in tests/web)")
    r = wizard_relay
    code_file = r.data_dir / "setup-code"
    code = code_file.read_text().strip()
    assert len(code) == 19 and code.count("-") == 3, code
    assert code in r.stderr(), "dev prints the setup code"
    shots = artifacts_dir() / "wizard"
    shutil.rmtree(shots, ignore_errors=True)
    args = {
        "http": f"http://{r.ip}:{r.port('http')}",
        "code": code,
        "password": "a long admin password",
        "delete_days": 15,
        "shots": str(shots),
        "chromium": chromium,
        "http2": f"http://{second_box.ip}:{second_box.port('http')}",
        "code2": (second_box.data_dir / "setup-code").read_text().strip(),
    }
    t0 = time.monotonic()
    out = subprocess.run(
        ["node", str(WEB / "wizard.mjs"), json.dumps(args)],
        cwd=WEB, capture_output=True, text=True, timeout=240,
    )
    elapsed = time.monotonic() - t0
    assert out.stdout.strip(), f"no result from the browser script\n{out.stderr[-3000:]}"
    res = json.loads(out.stdout.strip().splitlines()[-1])
    (artifacts_dir() / "wizard-result.json").write_text(json.dumps(res, indent=1))
    assert res["ok"], f"{res.get('error')}\nrelay stderr:\n{r.stderr()[-4000:]}"
    assert "wrong setup code" in res["wrong_code_error"]
    assert "wrong password" in res["wrong_password_error"]
    assert res["admin_url"].startswith(f"https://{r.ip}:{r.port('https')}/admin"), res["admin_url"]
    assert res["test_result"].startswith("Works"), res["test_result"]
    assert res["status_rows"] >= 5
    assert res["delete_days_shown"] == "15", "the setting survived the restart"
    assert res["code_after_setup_status"] == 404, res
    assert not code_file.exists(), "the setup code is gone after set-up"
    # The backup moved the relay's identity to the second box: its admin pages opened with the
    # first box's password, and the first box's DKIM key and admin files are there.
    assert res["backup_name"].startswith("relaybox-backup-") and res["backup_bytes"] > 500, res
    assert res["restored_admin_url"].startswith(f"https://{second_box.ip}:{second_box.port('https')}/admin"), res
    assert (second_box.data_dir / "admin" / "password").read_bytes() == (r.data_dir / "admin" / "password").read_bytes()
    assert not (second_box.data_dir / "setup-code").exists()
    # The restart really applied the setting: the public page says 15 days now.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://{r.ip}:{r.port('https')}/", context=ctx, timeout=20) as resp:
        page = resp.read().decode()
    assert 'id="delete-days">15<' in page, page[:3000]
    print(f"\n  wizard (LAN mode): first page to invite QR in {res['seconds_to_qr']:.1f} s "
          f"(browser run {elapsed:.1f} s); screenshots in {shots}")
    (artifacts_dir() / "wizard-time.txt").write_text(
        f"Set-up wizard (LAN mode, scripted browser): first page to invite QR in {res['seconds_to_qr']:.1f} s\n"
    )
    assert len(list(Path(shots).glob("*.png"))) >= 7
