"""The `hushlink` command end to end: serve on the embedded database, admin commands, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HUSHLINK = str(Path(sys.executable).parent / "hushlink")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path):
    port = _free_port()
    e = {**os.environ, "HUSHLINK_SERVER__DATA_DIR": str(tmp_path / "data"), "HUSHLINK_SERVER__PORT": str(port),
         "HUSHLINK_SERVER__PUBLIC_URL": f"http://127.0.0.1:{port}", "HUSHLINK_INBOUND_SMTP__PORT": str(_free_port())}
    e.pop("HUSHLINK_CONFIG", None)
    return e


def _admin(env, *args, stdin=None):
    return subprocess.run([HUSHLINK, "admin", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120)


def _wait_ready(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "serve exited"
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("serve did not become ready")


def test_serve_runs_the_sandbox_loop_admin_commands_work_and_sigterm_exits_zero(env):
    url = env["HUSHLINK_SERVER__PUBLIC_URL"]
    proc = subprocess.Popen([HUSHLINK, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(url, proc)
        # Admin commands reach the running server's embedded database.
        created = _admin(env, "create-org", "--name", "Harbor Therapy", "--sms-number", "+15005550099", "--json")
        assert created.returncode == 0, created.stderr
        org_id = json.loads(created.stdout)["id"]
        key = json.loads(_admin(env, "create-api-key", "--org", org_id, "--name", "ehr", "--json").stdout)["key"]
        staff = _admin(env, "create-staff", "--org", org_id, "--email", "lee@harbor.test", "--role", "admin",
                       "--password-stdin", "--json", stdin="a long and unusual passphrase\n")
        assert staff.returncode == 0, staff.stderr
        weak = _admin(env, "create-staff", "--org", org_id, "--email", "kim@harbor.test", "--role", "agent",
                      "--password-stdin", stdin="short\n")
        assert weak.returncode == 2 and "password" in weak.stderr
        # The API key works against the running server, and the sandbox shows the link SMS.
        req = urllib.request.Request(url + "/api/v1/messages", method="POST", data=json.dumps(
            {"to": {"phone": "+15551230009"}, "body": "Canary-cli-7731"}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 201
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url + "/sandbox", timeout=5) as r:
                page = r.read().decode()
            if "+15551230009" in page:
                break
            time.sleep(0.3)
        assert "+15551230009" in page and "/s/" in page and "Canary-cli-7731" not in page
        verify = _admin(env, "verify-audit", "--org", org_id, "--json")
        assert verify.returncode == 0 and json.loads(verify.stdout)[org_id]["ok"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    out = proc.stdout.read() if proc.stdout else ""
    assert "Hushlink is running" in out and "/sandbox" in out
    assert "/staff/login as admin@demo.hushlink.test, password (shown once):" in out
    keyring = Path(env["HUSHLINK_SERVER__DATA_DIR"]) / "keyring.json"
    assert keyring.stat().st_mode & 0o777 == 0o600


def test_admin_commands_name_the_bad_argument(env):
    bad = _admin(env, "create-org", "--name", "X", "--sms-number", "555-1234")
    assert bad.returncode == 2 and "sms_number" in bad.stderr
