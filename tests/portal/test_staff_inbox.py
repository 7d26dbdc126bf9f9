"""The staff inbox: neutral previews, filters, search, paging (issue 3)."""

from __future__ import annotations

import re

from gateway.security.audit import SYSTEM
from tests.portal.test_staff_support import signed_in

CANARY = "canary-91c2 your HIV test result is negative"


def thread_ids(html: str) -> list[str]:
    return re.findall(r'data-thread="([0-9a-f]{24})"', html)


async def send(gw, phone: str, body: str = "Your appointment is confirmed.", *, secure: bool = True,
               name: str | None = None) -> str:
    sent = await gw.services.conversations.send(gw.org, channel="sms", body=body, actor=SYSTEM, to_phone=phone,
                                                name=name, secure=secure, allow_sensitive=True)
    return str(sent.thread["_id"])


async def test_inbox_never_shows_message_content(gw):
    await gw.api_send(body=CANARY)  # secure (org default)
    await gw.api_send(to={"phone": "+15551230002"}, body=CANARY + " standard", secure=False, allow_sensitive=True)
    await gw.inbound_sms(CANARY + " reply")
    await gw.drain()
    browser, _ = await signed_in(gw)
    async with browser as b:
        page = await b.get("/staff/")
        html = await page.text()
    assert page.status == 200
    assert "canary-91c2" not in html and "HIV" not in html
    assert len(thread_ids(html)) == 2
    assert "New reply" in html and "Message sent" in html
    assert "Secure" in html and "Standard" in html


async def test_unread_counts_and_filter(gw):
    await gw.api_send(body="hello")
    await gw.inbound_sms("a reply")
    await gw.drain()
    quiet = await send(gw, "+15551230002")
    browser, _ = await signed_in(gw)
    async with browser as b:
        html = await (await b.get("/staff/")).text()
        assert 'id="unread-badge"' in html and "1 unread" in html
        unread_only = thread_ids(await (await b.get("/staff/?unread=1")).text())
        assert quiet not in unread_only and len(unread_only) == 1
        # Opening the thread resets its unread counter.
        await b.get(f"/staff/threads/{unread_only[0]}")
        assert thread_ids(await (await b.get("/staff/?unread=1")).text()) == []


async def test_filters_assigned_to_me_unassigned_secure_standard(gw):
    secure = await send(gw, "+15551230002", secure=True)
    standard = await send(gw, "+15551230003", secure=False)
    browser, me = await signed_in(gw)
    await gw.services.conversations.assign(gw.org.id, secure, me.id, SYSTEM)
    async with browser as b:
        async def ids(q: str) -> set[str]:
            resp = await b.get("/staff/?" + q)
            assert resp.status == 200
            return set(thread_ids(await resp.text()))

        assert await ids("view=mine") == {secure}
        assert await ids("view=unassigned") == {standard}
        assert await ids("view=all") == {secure, standard}
        assert await ids("kind=secure") == {secure}
        assert await ids("kind=standard") == {standard}
        await gw.services.conversations.set_status(gw.org.id, standard, "closed", SYSTEM)
        assert await ids("status=closed") == {standard}
        assert await ids("status=open") == {secure}


async def test_search_by_exact_phone_and_by_name(gw):
    alice = await send(gw, "+15551230002", name="Alice Liddell")
    bob = await send(gw, "+15551230003", name="Bob Builder")
    browser, _ = await signed_in(gw)
    async with browser as b:
        async def ids(q: str) -> list[str]:
            return thread_ids(await (await b.get("/staff/?" + q)).text())

        assert await ids("q=%2B1%20555%20123%200003") == [bob]
        assert await ids("q=%2B15559999999") == []
        assert await ids("q=liddell") == [alice]
        assert await ids("q=nobody") == []
        html = await (await b.get("/staff/?q=liddell")).text()
        assert "Names are encrypted" in html


async def test_paging_by_cursor_is_stable_and_newest_first(gw):
    made = []
    for i in range(55):
        made.append(await send(gw, f"+1555123{i:04d}"))
        gw.clock.advance(1)
    browser, _ = await signed_in(gw)
    async with browser as b:
        first = await (await b.get("/staff/")).text()
        page1 = thread_ids(first)
        assert page1 == list(reversed(made))[:50]
        nxt = re.search(r'href="(/staff/\?[^"]*cursor=[^"]+)" rel="next"', first)
        assert nxt
        page2 = thread_ids(await (await b.get(nxt.group(1).replace("&amp;", "&"))).text())
        assert page2 == list(reversed(made))[50:]
        bad = await b.get("/staff/?cursor=junk")
        assert bad.status == 422
