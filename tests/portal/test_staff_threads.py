"""The staff thread page: decrypted and escaped content, timeline, reply, assign, links, PIN (issue 3)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from gateway.security.audit import SYSTEM
from tests.portal.test_staff_support import audit_entries, csrf_of, make_staff, signed_in
from tests.support.harness import CLIENT_PHONE, LINK_RE

SECRET_BODY = "canary-3e7d: your MRI shows a small lesion"
XSS = '<script>alert("x")</script><img src=x onerror="alert(1)"><a href="javascript:alert(2)">y</a>'
PIN = "482913"


class Tags(HTMLParser):
    """Every start tag with its attributes, for XSS checks."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


async def secure_thread(gw, body: str = SECRET_BODY) -> dict:
    data = await gw.api_send(body=body)
    await gw.drain()
    return data


async def test_thread_page_shows_the_conversation_decrypted_and_escaped(gw):
    await gw.api_send(to={"phone": CLIENT_PHONE, "name": XSS}, body=SECRET_BODY)
    await gw.inbound_sms(XSS)
    await gw.drain()
    thread = await gw.store.threads.find_one({"org_id": gw.org.id})
    browser, _ = await signed_in(gw)
    async with browser as b:
        resp = await b.get(f"/staff/threads/{thread['_id']}")
        html = await resp.text()
    assert resp.status == 200
    assert SECRET_BODY in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    tags = Tags(html).tags
    scripts = [a for t, a in tags if t == "script"]
    assert scripts and all(a.get("src") == "/static/staff.js" for a in scripts)
    assert not [t for t, a in tags if any(k.startswith("on") for k in a)]
    assert not [t for t, a in tags if any((v or "").strip().lower().startswith("javascript:") for v in a.values())]
    assert not [t for t, a in tags if t == "img"]


async def test_opening_a_thread_resets_unread_and_is_audited_as_a_staff_read(gw):
    data = await secure_thread(gw)
    await gw.inbound_sms("thanks, see you")
    await gw.drain()
    assert (await gw.store.threads.find_one({"_id": data["thread_id"]}))["unread_staff"] == 1
    browser, member = await signed_in(gw)
    async with browser as b:
        assert (await b.get(f"/staff/threads/{data['thread_id']}")).status == 200
    assert (await gw.store.threads.find_one({"_id": data["thread_id"]}))["unread_staff"] == 0
    reads = [e for e in await audit_entries(gw, "thread.read") if e["actor"]["kind"] == "staff"]
    assert len(reads) == 1
    assert reads[0]["actor"]["id"] == member.id and reads[0]["thread_id"] == data["thread_id"]
    assert SECRET_BODY not in repr(await gw.store.audit.find({}).to_list())


async def test_staff_reply_on_a_secure_thread_stays_secure_end_to_end(gw):
    data = await secure_thread(gw)
    before = len(gw.sms_to())
    reply = "canary-8a1f: biopsy booked for Tuesday 9am"
    browser, member = await signed_in(gw)
    async with browser as b:
        page = await b.get(f"/staff/threads/{data['thread_id']}")
        html = await page.text()
        assert re.search(rf'<form method="post" action="/staff/threads/{data["thread_id"]}"', html)
        assert re.search(r'<textarea[^>]*name="body"', html)
        resp = await b.post(f"/staff/threads/{data['thread_id']}", {"body": reply}, csrf=csrf_of(html))
        assert resp.status == 303
        assert resp.headers["Location"].startswith(f"/staff/threads/{data['thread_id']}")
    await gw.drain()
    sent = gw.sms_to()[before:]
    assert len(sent) == 1
    assert "canary-8a1f" not in sent[0]["body"] and "biopsy" not in sent[0]["body"]
    token = LINK_RE.search(sent[0]["body"]).group(1)
    stored = await gw.store.messages.find_one({"author.id": member.id})
    assert stored["secure"] is True and stored["direction"] == "outbound"
    assert "canary-8a1f" not in repr(stored) and "canary-8a1f" not in repr(await gw.store.outbox.find({}).to_list())
    # The client opens the new link and reads the reply.
    opened = await gw.open_link(token)
    assert opened.status == 303
    client_page = await gw.client.get("/s/thread")
    assert reply in await client_page.text()


async def test_standard_reply_that_looks_sensitive_needs_confirmation(gw):
    data = await gw.api_send(body="See you soon", secure=False)
    await gw.drain()
    browser, _ = await signed_in(gw)
    body = "Your SSN on file is 123-45-6789"
    async with browser as b:
        url = f"/staff/threads/{data['thread_id']}"
        warned = await b.post(url, {"body": body}, csrf_from=url)
        assert warned.status == 422
        html = await warned.text()
        assert "Social Security number" in html and 'name="confirm_sensitive"' in html
        assert await gw.store.messages.count_documents({"thread_id": data["thread_id"]}) == 1
        ok = await b.post(url, {"body": body, "confirm_sensitive": "1"}, csrf_from=url)
        assert ok.status == 303
    await gw.drain()
    assert body in gw.sms_to()[-1]["body"]  # standard: the content travels in the SMS


async def test_timeline_shows_delivery_pin_failures_lock_and_unlock_from_the_page(gw):
    browser, member = await signed_in(gw)
    data = await secure_thread(gw)
    sid = gw.sms_to()[-1]["sid"]
    assert await gw.status(sid, "delivered") == 200
    token = gw.last_link_token()
    async with browser as b:
        url = f"/staff/threads/{data['thread_id']}"
        # Staff sets the contact's PIN from the thread page; the link now asks for it.
        assert (await b.post(url + "/pin", {"action": "set", "pin": PIN}, csrf_from=url)).status == 303
        for _ in range(gw.org.policy.lock_threshold):
            await gw.open_link(token, pin="000000")
        assert (await gw.client.get(f"/s/{token}")).status == 404  # locked
        html = await (await b.get(url)).text()
        for label in ("Queued", "Accepted by the provider", "Delivered", "Wrong PIN entered", "Link locked"):
            assert label in html, label
        assert "Link locked" in await (await b.get("/staff/")).text()
        link = await gw.store.links.find_one({"message_id": data["id"]})
        assert f"/links/{link['_id']}/unlock" in html
        resp = await b.post(f"{url}/links/{link['_id']}/unlock", csrf=csrf_of(html))
        assert resp.status == 303
    assert (await gw.open_link(token, pin=PIN)).status == 303
    unlocked = await audit_entries(gw, "link.unlocked")
    assert [(e["actor"]["id"], e["link_id"]) for e in unlocked] == [(member.id, link["_id"])]
    assert (await gw.store.threads.find_one({"_id": data["thread_id"]})).get("attention") is None


async def test_failed_delivery_shows_the_provider_error(gw):
    data = await secure_thread(gw)
    await gw.status(gw.sms_to()[-1]["sid"], "undelivered", error_code=30003)
    browser, _ = await signed_in(gw)
    async with browser as b:
        html = await (await b.get(f"/staff/threads/{data['thread_id']}")).text()
    assert "Not delivered (error 30003)" in html


async def test_viewed_and_replied_appear_on_the_message(gw):
    data = await secure_thread(gw)
    await gw.open_link(gw.last_link_token())
    await gw.client.get("/s/thread")
    await gw.inbound_sms("got it")
    await gw.drain()
    browser, _ = await signed_in(gw)
    async with browser as b:
        html = await (await b.get(f"/staff/threads/{data['thread_id']}")).text()
    timeline = html.split(f'id="m-{data["id"]}"')[1].split("</details>")[0]
    for label in ("Link opened", "Viewed by the client", "Client replied"):
        assert label in timeline, label


async def test_assign_close_and_reopen(gw):
    data = await secure_thread(gw)
    colleague = await make_staff(gw, "colleague@riverside.test")
    browser, me = await signed_in(gw)
    async with browser as b:
        url = f"/staff/threads/{data['thread_id']}"
        assert (await b.post(url + "/assign", {"assignee": "me"}, csrf_from=url)).status == 303
        assert (await gw.store.threads.find_one({"_id": data["thread_id"]}))["assignee"] == me.id
        assert (await b.post(url + "/assign", {"assignee": colleague.id}, csrf_from=url)).status == 303
        assert (await gw.store.threads.find_one({"_id": data["thread_id"]}))["assignee"] == colleague.id
        assert (await b.post(url + "/assign", {"assignee": ""}, csrf_from=url)).status == 303
        assert (await gw.store.threads.find_one({"_id": data["thread_id"]}))["assignee"] is None
        assert (await b.post(url + "/status", {"status": "closed"}, csrf_from=url)).status == 303
        assert (await gw.store.threads.find_one({"_id": data["thread_id"]}))["status"] == "closed"
        assert "Reopen thread" in await (await b.get(url)).text()
        assert (await b.post(url + "/status", {"status": "open"}, csrf_from=url)).status == 303
        assert (await gw.store.threads.find_one({"_id": data["thread_id"]}))["status"] == "open"
        assert (await b.post(url + "/status", {"status": "deleted"}, csrf_from=url)).status == 422
    actions = await gw.audit_actions()
    assert actions.count("thread.assigned") == 3 and "thread.closed" in actions and "thread.reopened" in actions


async def test_revoke_and_reissue_a_link(gw):
    data = await secure_thread(gw)
    old = gw.last_link_token()
    link = await gw.store.links.find_one({"message_id": data["id"]})
    browser, _ = await signed_in(gw)
    async with browser as b:
        url = f"/staff/threads/{data['thread_id']}"
        assert (await b.post(f"{url}/links/{link['_id']}/revoke", csrf_from=url)).status == 303
        assert (await gw.client.get(f"/s/{old}")).status == 404
        before = len(gw.sms_to())
        assert (await b.post(f"{url}/links/{link['_id']}/reissue", csrf_from=url)).status == 303
    await gw.drain()
    assert len(gw.sms_to()) == before + 1
    new = gw.last_link_token()
    assert new != old and SECRET_BODY not in gw.sms_to()[-1]["body"]
    assert (await gw.open_link(new)).status == 303
    assert [e["detail"]["replaces"] for e in await audit_entries(gw, "link.reissued")] == [link["_id"]]


async def test_revoking_a_link_ends_the_client_sessions_it_opened(gw):
    data = await secure_thread(gw)
    token = gw.last_link_token()
    assert (await gw.open_link(token)).status == 303
    assert (await gw.client.get("/s/thread")).status == 200  # the client is reading
    link = await gw.store.links.find_one({"message_id": data["id"]})
    browser, _ = await signed_in(gw)
    async with browser as b:
        url = f"/staff/threads/{data['thread_id']}"
        assert (await b.post(f"{url}/links/{link['_id']}/revoke", csrf_from=url)).status == 303
    resp = await gw.client.get("/s/thread")
    assert resp.status == 401 and SECRET_BODY not in await resp.text()
    assert "link.revoked" in await gw.audit_actions()


async def test_link_of_another_thread_is_refused(gw):
    data = await secure_thread(gw)
    other = await gw.services.conversations.send(gw.org, channel="sms", body="x", actor=SYSTEM,
                                                 to_phone="+15551230002", secure=True)
    browser, _ = await signed_in(gw)
    async with browser as b:
        url = f"/staff/threads/{data['thread_id']}"
        resp = await b.post(f"{url}/links/{other.link_id}/revoke", csrf_from=url)
        assert resp.status == 404
    assert (await gw.store.links.find_one({"_id": other.link_id}))["revoked_at"] is None
    assert [d["detail"]["object"] for d in await audit_entries(gw, "authz.deny")] == ["link"]


async def test_generate_and_clear_the_contacts_pin(gw):
    data = await secure_thread(gw)
    browser, _ = await signed_in(gw)
    async with browser as b:
        url = f"/staff/threads/{data['thread_id']}"
        resp = await b.post(url + "/pin", {"action": "generate"}, csrf_from=url)
        assert resp.status == 200
        pin = re.search(r'<strong class="secret">(\d{6,})</strong>', await resp.text()).group(1)
        contact = await gw.store.contacts.find_one({"org_id": gw.org.id})
        assert contact["pin_hash"].startswith("$argon2id$")
        assert (await gw.open_link(gw.last_link_token(), pin=pin)).status == 303
        assert (await b.post(url + "/pin", {"action": "set", "pin": "123"}, csrf_from=url)).status == 422
        assert (await b.post(url + "/pin", {"action": "clear"}, csrf_from=url)).status == 303
        assert "pin_hash" not in await gw.store.contacts.find_one({"org_id": gw.org.id})
    dump = repr(await gw.store.audit.find({}).to_list())
    assert pin not in dump
    assert (await gw.audit_actions()).count("contact.pin_set") == 1


async def test_a_link_issued_after_the_thread_locked_shows_as_locked_with_unlock(gw):
    browser, _ = await signed_in(gw)
    data = await secure_thread(gw)
    token = gw.last_link_token()
    async with browser as b:
        url = f"/staff/threads/{data['thread_id']}"
        assert (await b.post(url + "/pin", {"action": "set", "pin": PIN}, csrf_from=url)).status == 303
        for _ in range(gw.org.policy.lock_threshold):
            await gw.open_link(token, pin="000000")
        # A later secure message gets a fresh link: the thread's PIN guard locks it too.
        later = await gw.api_send(body="second secure note")
        await gw.drain()
        assert later["thread_id"] == data["thread_id"]
        fresh = await gw.store.links.find_one({"message_id": later["id"]})
        assert fresh["locked_at"] is None
        assert (await gw.client.get(f"/s/{gw.last_link_token()}")).status == 404
        html = await (await b.get(url)).text()
    row = html.split(f"/links/{fresh['_id']}/reissue")[0].rsplit("<li ", 1)[1]
    assert 'class="link-locked"' in row and f"/links/{fresh['_id']}/unlock" in row
    assert "link-active" not in row


async def test_timeline_names_refused_link_opens_and_refused_renewals(gw):
    data = await secure_thread(gw)
    token = gw.last_link_token()
    await gw.services.orgs.update_policy(gw.org.id, pin_required=True)
    gw.clock.advance(10)
    await gw.open_link(token)  # a PIN-less link under pin_required: refused, audited
    assert len(await audit_entries(gw, "link.open_refused")) == 1
    link = await gw.store.links.find_one({"message_id": data["id"]})
    await gw.services.audit.append(gw.org.id, "link.renewal_refused", SYSTEM, outcome="denied",
                                   thread_id=data["thread_id"], link_id=link["_id"],
                                   contact_id=link["contact_id"], detail={"reason": "daily_limit"})
    browser, _ = await signed_in(gw)
    async with browser as b:
        html = await (await b.get(f"/staff/threads/{data['thread_id']}")).text()
    timeline = html.split(f'id="m-{data["id"]}"')[1].split("</details>")[0]
    assert "Link refused: a PIN is required and none is set" in timeline
    assert "New link refused (the day&#39;s new links are used up)" in html
