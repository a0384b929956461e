"""The Delta Chat client example in README.md runs as printed (issue 16 item 6): it is taken from
the README, pointed at this module's relay, and run with the pinned deltachat-rpc-client/-server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("A Delta Chat client in Python")
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert m, "no python block after 'A Delta Chat client in Python'"
    return m.group(1)


def test_readme_client_example_sends_and_receives(relay, tmp_path):
    code = readme_example()
    assert "add_transport_from_qr" in code and "set_config_from_qr" not in code
    assert 'RELAY = "https://127.0.0.1:10443"' in code
    code = code.replace("https://127.0.0.1:10443", f"https://{relay.ip}:{relay.port('https')}")
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    r = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr[-3000:]}"
    assert re.search(r"^bob is \S+@\[" + re.escape(relay.ip) + r"\]$", r.stdout, re.M), r.stdout
    assert "bob got: hello bob" in r.stdout, r.stdout
