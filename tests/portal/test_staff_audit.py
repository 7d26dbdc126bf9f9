"""The audit log view (admin): filters and JSON-lines export."""

from __future__ import annotations

import json

from tests.portal.test_staff_support import audit_entries, signed_in

BODY = "canary-aud1t: chemotherapy schedule"


async def test_export_returns_json_lines_of_the_chain_and_is_audited(gw):
    data = await gw.api_send(body=BODY)
    await gw.drain()
    browser, me = await signed_in(gw, "admin")
    async with browser as b:
        resp = await b.get("/staff/audit/export")
        text = await resp.text()
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    assert resp.headers["Content-Disposition"].startswith("attachment;")
    assert resp.headers["Cache-Control"] == "no-store"
    lines = [json.loads(line) for line in text.splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    assert {"message.send", "auth.login"} <= {e["action"] for e in lines}
    assert all(len(e["mac"]) == 64 and "prev" in e for e in lines)
    assert any(e.get("thread_id") == data["thread_id"] for e in lines)
    assert "canary-aud1t" not in text
    exports = await audit_entries(gw, "audit.export")
    assert [e["actor"]["id"] for e in exports] == [me.id]
    assert await gw.services.audit.verify(gw.org.id) is None


async def test_export_honours_the_filters(gw):
    data = await gw.api_send(body=BODY)
    await gw.api_send(to={"phone": "+15551230002"}, body="other")
    browser, me = await signed_in(gw, "admin")
    async with browser as b:
        by_thread = await (await b.get(f"/staff/audit/export?thread={data['thread_id']}")).text()
        by_action = await (await b.get("/staff/audit/export?action=auth.")).text()
        by_actor = await (await b.get(f"/staff/audit/export?actor={me.id}")).text()
        by_day = await (await b.get("/staff/audit/export?from=2026-01-06")).text()
    assert {json.loads(x)["thread_id"] for x in by_thread.splitlines()} == {data["thread_id"]}
    assert {json.loads(x)["action"] for x in by_action.splitlines()} == {"auth.login"}
    assert all(json.loads(x)["actor"]["id"] == me.id for x in by_actor.splitlines()) and by_actor
    assert by_day == ""  # the frozen clock is on 2026-01-05


async def test_audit_view_filters_and_rejects_bad_filters(gw):
    data = await gw.api_send(body=BODY)
    browser, _ = await signed_in(gw, "admin")
    async with browser as b:
        page = await b.get(f"/staff/audit?thread={data['thread_id']}&action=message.send")
        html = await page.text()
        assert page.status == 200 and "message.send" in html and "auth.login" not in html
        assert "canary-aud1t" not in html
        bad = await b.get("/staff/audit?thread=%24where&action=%7B%24gt")
        assert bad.status == 422
