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

from tests.support.harness import point_cli_at, run_cli

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


# -- organization settings from the command line (issue 9), in-process against the test gateway --
SERVICE_SID = "MG" + "cd34" * 8


async def test_update_org_changes_details_prints_the_org_and_audits_the_field_names(gw, monkeypatch, mongo_uri,
                                                                                  tmp_path, capsys):
    point_cli_at(gw, monkeypatch, mongo_uri, tmp_path)
    code = await run_cli(["admin", "update-org", "--org", gw.org.id, "--name", "Riverside Family Clinic",
                          "--add-number", "+15005550007", "--add-number", "+15005550008",
                          "--messaging-service-sid", SERVICE_SID, "--send-from", "+15005550007",
                          "--email-from", "hello@riverside.test", "--reply-domain", "mail.riverside.test",
                          "--timezone", "Europe/Berlin", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    printed = json.loads(out.out)
    assert printed == {"id": gw.org.id, "name": "Riverside Family Clinic",
                       "sms_numbers": ["+15005550006", "+15005550007", "+15005550008"],
                       "messaging_service_sids": [SERVICE_SID], "send_from": "+15005550007",
                       "email_from": "hello@riverside.test", "reply_domain": "mail.riverside.test",
                       "timezone": "Europe/Berlin"}
    assert await run_cli(["admin", "update-org", "--org", gw.org.id, "--remove-number", "+15005550006",
                          "--remove-number", "+15005550007"]) == 0
    org = await gw.services.orgs.stored(gw.org.id)
    # The sender was removed: messages go from the first number left.
    assert org.sms_numbers == ("+15005550008",) and org.sms_sender == "+15005550008"
    entries = [d async for d in gw.store.audit.find({"org_id": gw.org.id, "action": "org.updated"}).sort("seq", 1)]
    assert [e["detail"]["changed"] for e in entries] == [
        "email_from,messaging_service_sids,name,reply_domain,send_from,sms_numbers,timezone", "send_from,sms_numbers"]
    assert entries[0]["actor"] == {"kind": "system", "id": "cli"}
    assert "+1500555" not in repr(entries) and "hello@" not in repr(entries)


async def test_update_org_exits_2_naming_the_bad_option(gw, monkeypatch, mongo_uri, tmp_path, capsys):
    other = await gw.services.orgs.create("Harbor Therapy", "+15005550009")
    point_cli_at(gw, monkeypatch, mongo_uri, tmp_path)
    for args, option in ((["--timezone", "Mars/Olympus_Mons"], "--timezone"),
                         (["--add-number", "555-1234"], "--add-number"),
                         (["--add-number", "+15005550009"], "--add-number"),  # another org's
                         (["--messaging-service-sid", "MG1"], "--messaging-service-sid"),
                         (["--remove-number", "+15005550001"], "--remove-number"),
                         (["--send-from", "+15005550001"], "--send-from"),
                         (["--email-from", "nobody"], "--email-from"),
                         (["--reply-domain", "not a domain"], "--reply-domain"),
                         (["--name", ""], "--name")):
        code = await run_cli(["admin", "update-org", "--org", gw.org.id, *args])
        err = capsys.readouterr().err
        assert code == 2 and f"hushlink: {option}: " in err, (args, err)
    assert (await gw.services.orgs.stored(other.id)).sms_numbers == ("+15005550009",)
    assert (await gw.services.orgs.stored(gw.org.id)).timezone == "UTC"


async def test_create_org_takes_a_time_zone_utc_by_default(gw, monkeypatch, mongo_uri, tmp_path, capsys):
    point_cli_at(gw, monkeypatch, mongo_uri, tmp_path)
    assert await run_cli(["admin", "create-org", "--name", "Lakeside", "--timezone", "America/Chicago",
                          "--json"]) == 0
    lakeside = json.loads(capsys.readouterr().out)["id"]
    assert await run_cli(["admin", "create-org", "--name", "Hillside", "--json"]) == 0
    hillside = json.loads(capsys.readouterr().out)["id"]
    assert (await gw.services.orgs.get(lakeside)).timezone == "America/Chicago"
    assert (await gw.services.orgs.get(hillside)).timezone == "UTC"
    assert await run_cli(["admin", "create-org", "--name", "Nowhere", "--timezone", "Nowhere/Land"]) == 2
    assert "timezone" in capsys.readouterr().err


async def test_set_policy_prints_the_effective_policy_and_names_a_bad_key(gw, monkeypatch, mongo_uri, tmp_path,
                                                                         capsys):
    point_cli_at(gw, monkeypatch, mongo_uri, tmp_path)
    code = await run_cli(["admin", "set-policy", "--org", gw.org.id, "--set", "lock_threshold=3",
                          "--set", "secure_default=false", "--set", "sensitive_terms=oncology,biopsy", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    policy = json.loads(out.out)
    assert policy["lock_threshold"] == 3 and policy["secure_default"] is False
    assert policy["sensitive_terms"] == ["oncology", "biopsy"] and policy["link_ttl_seconds"] == 86400
    assert (await gw.services.orgs.stored(gw.org.id)).policy.lock_threshold == 3
    for setting, name in (("no_such_key=1", "no_such_key"), ("lock_threshold=0", "lock_threshold"),
                          ("lock_threshold=many", "lock_threshold"), ("require_totp=maybe", "require_totp"),
                          ("agent_scope=everyone", "agent_scope"), ("lock_threshold", "--set")):
        code = await run_cli(["admin", "set-policy", "--org", gw.org.id, "--set", setting])
        err = capsys.readouterr().err
        assert code == 2 and f"hushlink: {name}: " in err, (setting, err)
    assert (await gw.services.orgs.stored(gw.org.id)).policy.lock_threshold == 3
    entries = [d async for d in gw.store.audit.find({"org_id": gw.org.id, "action": "org.policy_updated"})]
    assert [e["detail"]["changed"] for e in entries] == ["lock_threshold,secure_default,sensitive_terms"]


async def test_set_policy_require_totp_ends_the_sessions_of_members_without_one(gw, monkeypatch, mongo_uri,
                                                                               tmp_path, capsys):
    from tests.portal.test_staff_support import signed_in

    browser, member = await signed_in(gw, "agent")
    async with browser as b:
        assert (await b.get("/staff/")).status == 200
        point_cli_at(gw, monkeypatch, mongo_uri, tmp_path)
        assert await run_cli(["admin", "set-policy", "--org", gw.org.id, "--set", "require_totp=true"]) == 0
        assert json.loads(capsys.readouterr().out)["require_totp"] is True
        assert (await b.get("/staff/")).headers["Location"].startswith("/staff/login")
    ended = [d async for d in gw.store.audit.find({"org_id": gw.org.id, "action": "auth.sessions_ended"})]
    assert [(e["staff_id"], e["detail"]["sessions_ended"]) for e in ended] == [(member.id, 1)]
