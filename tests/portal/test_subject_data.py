"""A data subject's data: the complete export (GDPR Art. 15, 20) and the legal hold that stops
erasure (Art. 17(3)); docs/security-model.md, 'Subject export'."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema

from gateway.messaging.consent import StaffConsent
from gateway.security.audit import Actor
from tests.inbound.test_mms import send_mms
from tests.portal.test_client_portal import WRONG, csrf_of, post_open, send_secure
from tests.portal.test_staff_support import audit_entries, signed_in
from tests.support.harness import CLIENT_PHONE, Gateway, point_cli_at, run_cli

SCHEMA = Path(__file__).resolve().parents[2] / "gateway" / "data" / "subject-export.schema.json"
A_SECRET = "canary-a41c your biopsy results are ready"
A_REPLY = "canary-a9d2 thanks, can I call tomorrow"
B_SECRET = "canary-b7e3 your prescription is ready"
B_PHONE = "+15557770042"
PHOTO = b"\xff\xd8\xff\xe0 canary-a0f5 photo of my insurance card"


def validate_export(data: dict[str, Any]) -> None:
    """Against the published schema (gateway/data/subject-export.schema.json), times included."""
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
    assert errors == []
    for when in [data["exported_at"], *(m["created_at"] for m in data["messages"])]:
        datetime.fromisoformat(when)  # (the format checker leaves date-time to an optional package)


async def two_subjects(gw: Gateway) -> dict[str, Any]:
    """Contact A (secure thread, a reply with a photo, a STOP and START, a staff view) and contact B."""
    a = await gw.api_send(to={"phone": CLIENT_PHONE, "name": "Alex Example"}, body=A_SECRET, secure=True)
    b = await gw.api_send(to={"phone": B_PHONE, "name": "Blair Other"}, body=B_SECRET, secure=True)
    await gw.drain()
    await send_mms(gw, A_REPLY, [("image/jpeg", PHOTO)])
    await gw.inbound_sms("STOP")
    await gw.inbound_sms("START")
    await gw.inbound_sms("canary-b0b0 see you", frm=B_PHONE)
    await gw.drain()
    contact_a = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    contact_b = await gw.services.contacts.by_phone(gw.org.id, B_PHONE)
    assert contact_a is not None and contact_b is not None
    return {"a": contact_a.id, "b": contact_b.id, "a_thread": a["thread_id"], "b_thread": b["thread_id"]}


async def export_as_admin(gw: Gateway, contact_id: str) -> tuple[dict[str, Any], Any]:
    browser, admin = await signed_in(gw, role="admin")
    async with browser as b:
        page = f"/staff/contacts/{contact_id}"
        await b.get(f"/staff/threads/{(await gw.store.threads.find_one({'contact_id': contact_id}))['_id']}")
        resp = await b.post(page + "/export", {}, csrf_from=page)
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Disposition"] == f'attachment; filename="contact-{contact_id}.json"'
        assert "no-store" in resp.headers["Cache-Control"]
        return json.loads(await resp.text()), admin


async def test_the_export_holds_everything_about_the_subject_and_nothing_else(gw: Gateway) -> None:
    ids = await two_subjects(gw)
    data, admin = await export_as_admin(gw, ids["a"])

    assert data["format"] == "hushlink.subject-export/1" and data["organization"]["id"] == gw.org.id
    validate_export(data)
    contact = data["contact"]
    assert (contact["id"], contact["name"], contact["phone"]) == (ids["a"], "Alex Example", CLIENT_PHONE)
    assert contact["consent"]["sms"]["state"] == "opted_in"
    assert [(e["channel"], e["state"]) for e in contact["consent_history"]][-2:] == [
        ("sms", "opted_out"), ("sms", "opted_in")]
    # Every message of theirs, opened, in order: the record counts match the database.
    stored = await gw.store.messages.count_documents({"org_id": gw.org.id, "contact_id": ids["a"]})
    assert len(data["messages"]) == stored >= 4
    bodies = [m["body"] for m in data["messages"]]
    assert bodies[0] == A_SECRET and A_REPLY in bodies and "STOP" in bodies
    assert [t["id"] for t in data["threads"]] == [ids["a_thread"]]
    assert all(m["thread_id"] == ids["a_thread"] for m in data["messages"])
    # The photo they sent, byte for byte.
    (photo,) = data["attachments"]
    assert base64.b64decode(photo["data_base64"]) == PHOTO and photo["content_type"] == "image/jpeg"
    # The links sent to them, never a token or its hash.
    links = await gw.store.links.count_documents({"org_id": gw.org.id, "contact_id": ids["a"]})
    assert len(data["links"]) == links >= 2
    # Audit entries about them: their consent changes, the staff member reading their thread.
    actions = [e["action"] for e in data["audit"]]
    assert {"consent.opt_out", "consent.opt_in", "message.received", "thread.read"} <= set(actions)
    assert [e["seq"] for e in data["audit"]] == sorted({e["seq"] for e in data["audit"]})

    # Nothing of contact B, and no secret of the gateway's.
    text = json.dumps(data)
    for other in (ids["b"], ids["b_thread"], B_PHONE, B_SECRET, "canary-b0b0", "Blair"):
        assert other not in text, other
    for link in await gw.store.links.find({"contact_id": ids["a"]}).to_list(None):
        assert link["token_hash"] not in text
    assert "mac" not in {k for e in data["audit"] for k in e}

    exported = await audit_entries(gw, "contact.exported")
    assert [(e["actor"]["id"], e["contact_id"]) for e in exported] == [(admin.id, ids["a"])]
    assert await gw.services.audit.verify(gw.org.id) is None


async def test_only_admins_export_or_hold_and_only_by_post_with_csrf(gw: Gateway) -> None:
    ids = await two_subjects(gw)
    page = f"/staff/contacts/{ids['a']}"
    browser, _ = await signed_in(gw, role="agent")
    async with browser as b:
        assert "/export" not in await (await b.get(page)).text()
        assert (await b.post(page + "/export", {}, csrf_from=page)).status == 403
        assert (await b.post(page + "/hold", {"action": "place"}, csrf_from=page)).status == 403
    admin_browser, _ = await signed_in(gw, role="admin")
    async with admin_browser as b:
        assert (await b.get(page + "/export")).status == 405  # a link or a prefetch cannot start one
        assert (await b.post(page + "/export", {}, csrf="forged")).status == 403
    assert await audit_entries(gw, "contact.exported") == []
    assert (await gw.store.contacts.find_one({"_id": ids["a"]})).get("legal_hold") is None


async def test_a_legal_hold_blocks_erasure_until_it_is_released(gw: Gateway) -> None:
    ids = await two_subjects(gw)
    page = f"/staff/contacts/{ids['a']}"
    browser, admin = await signed_in(gw, role="admin")
    async with browser as b:
        assert (await b.post(page + "/hold", {"action": "place"}, csrf_from=page)).status == 303
        assert "Under a legal hold since" in await (await b.get(page)).text()
        refused = await b.post(page + "/erase", {"confirm": "ERASE"}, csrf_from=page)
        assert refused.status == 422 and "legal hold" in await refused.text()
        # Nothing was erased: the contact and their messages still open.
        doc = await gw.store.contacts.find_one({"_id": ids["a"]})
        assert doc.get("erased_at") is None and doc.get("name")
        first = await gw.store.messages.find_one({"thread_id": ids["a_thread"]}, sort=[("_id", 1)])
        assert await gw.services.conversations.open_body(first) == A_SECRET
        denied = await audit_entries(gw, "contact.erase_refused")
        assert [(e["outcome"], e["contact_id"], e["detail"]) for e in denied] == [
            ("denied", ids["a"], {"reason": "legal_hold"})]

        assert (await b.post(page + "/hold", {"action": "release"}, csrf_from=page)).status == 303
        erased = await b.post(page + "/erase", {"confirm": "ERASE"}, csrf_from=page)
        assert erased.status == 303
    assert (await gw.store.contacts.find_one({"_id": ids["a"]}))["erased_at"] is not None
    trail = await gw.store.audit.find({"contact_id": ids["a"]}).sort("seq", 1).to_list(None)
    assert [e["action"] for e in trail if e["action"].startswith(("contact.legal_hold", "contact.erase"))] == [
        "contact.legal_hold_placed", "contact.erase_refused", "contact.legal_hold_released", "contact.erased"]
    # Contact B was never touched.
    assert (await gw.store.contacts.find_one({"_id": ids["b"]})).get("erased_at") is None


async def test_an_erased_subject_exports_what_is_left_and_nothing_opens(gw: Gateway) -> None:
    ids = await two_subjects(gw)
    assert await gw.services.contacts.erase(gw.org.id, ids["a"])

    data = await gw.services.subject_data.export_contact(gw.org.id, ids["a"])
    validate_export(data)
    assert data["contact"]["erased_at"] and data["contact"]["name"] is None and data["contact"]["phone"] is None
    assert data["messages"] and all(m["body"] is None for m in data["messages"])
    assert all(a["data_base64"] is None and a["filename"] is None for a in data["attachments"])
    assert A_SECRET not in json.dumps(data)


async def test_the_cli_writes_the_export_to_a_file_only_its_owner_can_read(gw: Gateway, tmp_path: Path,
                                                                           monkeypatch: Any, mongo_uri: str) -> None:
    ids = await two_subjects(gw)
    out = tmp_path / "export.json"
    point_cli_at(gw, monkeypatch, mongo_uri, tmp_path)
    code = await run_cli(["admin", "export-contact", "--org", gw.org.id, "--contact", ids["a"], "--output", str(out)])
    assert code == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    data = json.loads(out.read_text())
    assert data["contact"]["id"] == ids["a"] and data["messages"][0]["body"] == A_SECRET
    assert [e["actor"] for e in await audit_entries(gw, "contact.exported")] == [{"kind": "system", "id": "cli"}]
    assert await run_cli(["admin", "export-contact", "--org", gw.org.id, "--contact", "0" * 24]) == 1



CONSENT_NOTE = "canary-c3n0 client phoned from the hospital, asked to pause texts"


async def guessed_and_noted(gw: Gateway) -> dict[str, Any]:
    """Contact A: a secure message whose link took two wrong PINs, and a staff opt-out with a note;
    contact B: a wrong PIN on a link of their own."""
    a, token_a = await send_secure(gw)
    b, _ = await send_secure(gw, to={"phone": B_PHONE})
    token_b = gw.last_link_token(B_PHONE)
    for token, tries in ((token_a, 2), (token_b, 1)):
        csrf = csrf_of(await (await gw.client.get(f"/s/{token}")).text())
        for _ in range(tries):
            assert (await post_open(gw, token, csrf, pin=WRONG)).status == 401
    s = gw.services
    contact_a = await s.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    contact_b = await s.contacts.by_phone(gw.org.id, B_PHONE)
    assert contact_a is not None and contact_b is not None
    consent = StaffConsent(gw.store, s.vault, s.contacts, s.audit, s.clock)
    assert await consent.change(contact_a, channel="sms", state="opted_out", reason="other", note=CONSENT_NOTE,
                                actor=Actor("staff", "a" * 24))
    return {"a": contact_a.id, "b": contact_b.id, "a_thread": a["thread_id"], "b_thread": b["thread_id"]}


async def test_the_export_shows_the_pin_guard_counters_and_the_staff_consent_notes(gw: Gateway) -> None:
    ids = await guessed_and_noted(gw)
    data = await gw.services.subject_data.export_contact(gw.org.id, ids["a"])
    validate_export(data)
    assert data["link_guards"] == [{"thread_id": ids["a_thread"], "pin_failures": 2, "locked_at": None,
                                    "renewals": 0, "renewals_since": None}]
    (note,) = data["contact"]["consent_notes"]
    assert (note["channel"], note["state"], note["reason"], note["by"], note["note"]) == (
        "sms", "opted_out", "other", "a" * 24, CONSENT_NOTE)
    assert ids["b_thread"] not in json.dumps(data)


async def test_erasure_deletes_the_contacts_pin_guards_and_the_notes_no_longer_open(gw: Gateway) -> None:
    ids = await guessed_and_noted(gw)
    assert await gw.store.link_guards.count_documents({"org_id": gw.org.id, "contact_id": ids["a"]}) == 1
    assert await gw.services.contacts.erase(gw.org.id, ids["a"])

    assert await gw.store.link_guards.count_documents({"contact_id": ids["a"]}) == 0
    # The other contact's guard still counts their wrong PIN.
    (other,) = await gw.store.link_guards.find({"contact_id": ids["b"]}).to_list(None)
    assert other["failures"] == 1
    data = await gw.services.subject_data.export_contact(gw.org.id, ids["a"])
    validate_export(data)
    assert data["link_guards"] == []
    (note,) = data["contact"]["consent_notes"]
    assert note["note"] is None and note["reason"] == "other"
    assert CONSENT_NOTE not in json.dumps(data)
