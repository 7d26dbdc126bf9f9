"""Retention (docs/security-model.md, 'Retention'): message content older than the org's retention_days is removed for
good; the records that messages were sent and received, and the audit chain, stay; a contact
under a legal hold keeps everything."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.errors import ValidationError
from gateway.messaging.incoming_files import IncomingFile, seal_attachments
from gateway.storage.recent import oid_at
from portal.strings import STRINGS
from tests.portal.test_staff_settings import POLICY_FORM
from tests.portal.test_staff_support import audit_entries, signed_in
from tests.support.harness import CLIENT_PHONE, Gateway, point_cli_at, run_cli

OLD_SECRET = "canary-r1a7 your results are ready"
OLD_REPLY = "canary-r2b8 thank you"
NEW_SECRET = "canary-r3c9 your appointment moved"
HELD_SECRET = "canary-r4d0 held for the lawsuit"
HELD_PHONE = "+15557770077"
PHOTO = b"\xff\xd8\xff\xe0 canary-r5e1 photo"


async def old_message(gw: Gateway, thread_id: str, phone: str, text: str, *, days: int, inbound: bool = False,
                      photo: bytes | None = None) -> str:
    """A message stored `days` ago (its id carries that time, as every message id does)."""
    contact = await gw.services.contacts.by_phone(gw.org.id, phone)
    assert contact is not None
    when = datetime.now(UTC) - timedelta(days=days)
    mid = oid_at(when)[:8] + os.urandom(8).hex()  # that second, and unique
    await gw.store.messages.insert_one({
        "_id": mid, "org_id": gw.org.id, "thread_id": thread_id, "contact_id": contact.id,
        "direction": "inbound" if inbound else "outbound", "channel": "sms", "secure": True,
        "author": {"kind": "contact" if inbound else "api", "id": contact.id if inbound else None},
        "body": await gw.services.vault.seal(contact.dek_id, gw.org.id, "messages", mid, "body", text),
        "status": "received" if inbound else "delivered", "created_at": when, "link_id": None,
        "status_history": [{"status": "received" if inbound else "delivered", "at": when}],
        "provider_id": None, "idempotency_key": "none:" + mid, "flags": [], "files": 1 if photo else 0})
    if photo:
        await seal_attachments(gw.store, gw.services.vault, org_id=gw.org.id, dek_id=contact.dek_id, message_id=mid,
                               thread_id=thread_id, contact_id=contact.id,
                               files=[IncomingFile("media-1.jpg", "image/jpeg", photo, 0)])
    return mid


async def aged_conversations(gw: Gateway) -> dict[str, Any]:
    """A conversation with a message and a reply (with a photo) 40 and 39 days old and one from
    today; another contact, under a legal hold, with a message 40 days old."""
    gw.clock.set(datetime.now(UTC))
    await gw.services.orgs.update_policy(gw.org.id, retention_days=30)
    new = await gw.api_send(to={"phone": CLIENT_PHONE}, body=NEW_SECRET, secure=True)
    held = await gw.api_send(to={"phone": HELD_PHONE}, body="canary-r6f2 held, today", secure=True)
    await gw.drain()
    await old_message(gw, new["thread_id"], CLIENT_PHONE, OLD_SECRET, days=40)
    await old_message(gw, new["thread_id"], CLIENT_PHONE, OLD_REPLY, days=39, inbound=True, photo=PHOTO)
    await old_message(gw, held["thread_id"], HELD_PHONE, HELD_SECRET, days=40)
    held_contact = await gw.services.contacts.by_phone(gw.org.id, HELD_PHONE)
    assert held_contact is not None
    await gw.services.contacts.set_legal_hold(gw.org.id, held_contact.id, True, "admin")
    return {"thread": new["thread_id"], "held_thread": held["thread_id"]}


async def bodies(gw: Gateway, thread_id: str) -> list[str | None]:
    resp = await gw.client.get(f"/api/v1/threads/{thread_id}/messages", headers=gw.auth())
    assert resp.status == 200
    return [m["body"] for m in (await resp.json())["messages"]]


async def test_content_past_retention_is_removed_and_the_records_stay(gw: Gateway) -> None:
    ids = await aged_conversations(gw)
    before = await gw.store.messages.count_documents({"org_id": gw.org.id})
    removed = await gw.services.retention.purge_org(await gw.services.orgs.get(gw.org.id))
    assert removed == {"messages": 2, "attachments": 1}

    # The old text and the photo are gone from the database; the newer message is intact.
    assert await bodies(gw, ids["thread"]) == [None, None, NEW_SECRET]
    assert await gw.store.attachments.count_documents({"org_id": gw.org.id, "thread_id": ids["thread"]}) == 0
    assert await gw.store.messages.count_documents({"org_id": gw.org.id}) == before  # the records stay
    old = await gw.store.messages.find({"thread_id": ids["thread"], "purged_at": {"$ne": None}}).to_list(None)
    assert len(old) == 2 and all("body" not in m and m["status_history"] for m in old)
    # A contact under a legal hold keeps everything.
    assert await bodies(gw, ids["held_thread"]) == [HELD_SECRET, "canary-r6f2 held, today"]

    # Both portals say the content is no longer kept, and show no trace of it.
    browser, _ = await signed_in(gw)
    async with browser as b:
        page = await (await b.get(f"/staff/threads/{ids['thread']}")).text()
    assert "Content no longer kept" in page and NEW_SECRET in page
    assert OLD_SECRET not in page and OLD_REPLY not in page and "None" not in page.split("<main", 1)[-1]
    assert (await gw.open_link(gw.last_link_token())).status == 303
    client_page = await (await gw.client.get("/s/thread")).text()
    assert STRINGS["content_removed"] in client_page and NEW_SECRET in client_page
    assert OLD_SECRET not in client_page and OLD_REPLY not in client_page

    # One audit entry, counts only; the chain still verifies.
    (entry,) = await audit_entries(gw, "retention.purged")
    assert entry["detail"]["messages"] == 2 and entry["detail"]["attachments"] == 1
    assert entry["detail"]["days"] == 30
    assert OLD_SECRET not in repr(entry)
    assert await gw.services.audit.verify(gw.org.id) is None


async def test_a_later_run_reads_only_what_aged_since(gw: Gateway) -> None:
    ids = await aged_conversations(gw)
    org = await gw.services.orgs.get(gw.org.id)
    await gw.services.retention.purge_org(org)
    mark = (await gw.store.threads.find_one({"_id": ids["thread"]}))["purged_before"]
    assert await gw.services.retention.purge_org(org) == {"messages": 0, "attachments": 0}
    assert len(await audit_entries(gw, "retention.purged")) == 1  # nothing removed: no entry
    # Another 40 days: today's message ages out too, and the thread's mark moves on.
    gw.clock.advance(days=40)
    assert await gw.services.retention.purge_org(org) == {"messages": 1, "attachments": 0}
    assert await bodies(gw, ids["thread"]) == [None, None, None]
    assert (await gw.store.threads.find_one({"_id": ids["thread"]}))["purged_before"] > mark
    assert await bodies(gw, ids["held_thread"]) == [HELD_SECRET, "canary-r6f2 held, today"]


async def test_a_send_still_queued_keeps_its_text(gw: Gateway) -> None:
    gw.clock.set(datetime.now(UTC))
    await gw.services.orgs.update_policy(gw.org.id, retention_days=30)
    sent = await gw.api_send(to={"phone": CLIENT_PHONE}, body=OLD_SECRET, secure=True)  # not drained: queued
    await asyncio.sleep(1.1)
    gw.clock.advance(days=40)
    assert await gw.services.retention.purge_org(await gw.services.orgs.get(gw.org.id)) == {
        "messages": 0, "attachments": 0}
    assert await bodies(gw, sent["thread_id"]) == [OLD_SECRET]


async def test_no_retention_keeps_everything(gw: Gateway) -> None:
    gw.clock.set(datetime.now(UTC))
    sent = await gw.api_send(to={"phone": CLIENT_PHONE}, body=OLD_SECRET, secure=True)
    await gw.drain()
    gw.clock.advance(days=4000)
    assert await gw.services.retention.purge_all() == {}
    assert await bodies(gw, sent["thread_id"]) == [OLD_SECRET]


def test_retention_days_is_zero_or_at_least_a_month() -> None:
    from gateway.tenancy.orgs import OrgPolicy

    assert OrgPolicy(retention_days=0).validate().retention_days == 0
    assert OrgPolicy(retention_days=30).validate().retention_days == 30
    for bad in (-1, 1, 29, 36501):
        with pytest.raises(ValidationError):
            OrgPolicy(retention_days=bad).validate()


async def test_admins_set_retention_in_settings(gw: Gateway) -> None:
    browser, _ = await signed_in(gw, role="admin")
    async with browser as b:
        assert 'name="retention_days"' in await (await b.get("/staff/settings")).text()
        resp = await b.post("/staff/settings/policy", {**POLICY_FORM, "retention_days": "90"},
                            csrf_from="/staff/settings")
        assert resp.status == 303, await resp.text()
        bad = await b.post("/staff/settings/policy", {**POLICY_FORM, "retention_days": "7"},
                           csrf_from="/staff/settings")
        assert bad.status == 422 and "retention_days" in await bad.text()
    assert (await gw.services.orgs.get(gw.org.id)).policy.retention_days == 90


async def test_the_cli_purges_once(gw: Gateway, tmp_path: Any, monkeypatch: Any, mongo_uri: str) -> None:
    """`hushlink admin purge-expired`, on the real clock."""
    ids = await aged_conversations(gw)
    point_cli_at(gw, monkeypatch, mongo_uri, tmp_path)
    assert await run_cli(["admin", "purge-expired", "--org", gw.org.id, "--json"]) == 0
    assert await bodies(gw, ids["thread"]) == [None, None, NEW_SECRET]
    assert len(await audit_entries(gw, "retention.purged")) == 1
