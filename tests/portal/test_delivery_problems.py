"""Failed deliveries are visible to staff: the inbox marks a thread whose last send failed, with the
reason in plain words; the thread page says it and offers "Dismiss" (audited); a link whose
notice never arrived is not shown as sent."""

from __future__ import annotations

import re

from tests.inbound.test_email_replies import deliver, dsn_for, email_thread, reply_address, reply_token_of
from tests.portal.test_staff_support import audit_entries, csrf_of, signed_in
from tests.support.harness import CLIENT_PHONE, Gateway

OTHER_PHONE = "+15551230002"


def inbox_row(html: str, thread_id: str) -> str:
    found = re.search(rf'<tr[^>]*data-thread="{thread_id}">(.*?)</tr>', html, re.S)
    assert found, html
    return found.group(1)


async def test_inbox_marks_only_the_thread_whose_send_failed_with_the_reason_in_words(gw: Gateway) -> None:
    fine = await gw.api_send(to={"phone": OTHER_PHONE}, body="Reminder", secure=False)
    await gw.drain()
    gw.twilio.fail_next(400, code=21614, message="not a mobile number")
    failed = await gw.api_send(body="Reminder", secure=False)
    await gw.drain()
    browser, _ = await signed_in(gw)
    async with browser as b:
        html = await (await b.get("/staff/")).text()
    assert "Not delivered: number cannot receive SMS" in inbox_row(html, failed["thread_id"])
    assert "Not delivered" not in inbox_row(html, fine["thread_id"])


async def test_a_client_who_opted_out_at_the_carrier_reads_as_opted_out(gw: Gateway) -> None:
    gw.twilio.opted_out.add(CLIENT_PHONE)
    sent = await gw.api_send(body="Reminder", secure=False)
    await gw.drain()
    browser, _ = await signed_in(gw)
    async with browser as b:
        html = await (await b.get("/staff/")).text()
    assert "Not delivered: client opted out" in inbox_row(html, sent["thread_id"])


async def test_a_bounce_for_an_unknown_mailbox_reads_as_such(gw: Gateway) -> None:
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    await deliver(port, rcpt, dsn_for(str(notice["Message-ID"]), rcpt, "5.1.1"), mail_from="")
    await gw.drain()
    browser, _ = await signed_in(gw)
    async with browser as b:
        html = await (await b.get("/staff/")).text()
    assert "Not delivered: mail bounced: mailbox unknown" in inbox_row(html, sent["thread_id"])


async def test_staff_dismiss_the_mark_from_the_thread_page_and_it_is_audited(gw: Gateway) -> None:
    gw.twilio.fail_next(400, code=21211, message="invalid")
    sent = await gw.api_send(body="Reminder", secure=False)
    await gw.drain()
    page = f"/staff/threads/{sent['thread_id']}"
    browser, member = await signed_in(gw)
    async with browser as b:
        html = await (await b.get(page)).text()
        assert "The last send to this contact was not delivered: number cannot receive SMS." in html
        assert "Failed (error 21211) — number cannot receive SMS" in html  # the message's timeline
        refused = await b.post(page + "/delivery-problem/dismiss", csrf="not-the-token")
        assert refused.status == 403
        assert "delivery_problem" in await gw.store.threads.find_one({"_id": sent["thread_id"]})
        done = await b.post(page + "/delivery-problem/dismiss", csrf_from=page)
        assert done.status == 303 and done.headers["Location"] == page
        html = await (await b.get(page)).text()
        assert "was not delivered" not in html and "Delivery problem dismissed" in html
        inbox = await (await b.get("/staff/")).text()
    assert "Not delivered" not in inbox_row(inbox, sent["thread_id"])
    [entry] = await audit_entries(gw, "thread.delivery_problem_dismissed")
    assert entry["thread_id"] == sent["thread_id"] and entry["actor"]["id"] == member.id
    assert entry["detail"]["reason"] == "cannot_receive_sms"


async def test_another_orgs_thread_cannot_be_dismissed(gw: Gateway) -> None:
    other = await gw.services.orgs.create("Lakeside Dental", "+15005550007")
    contact, _ = await gw.services.contacts.find_or_create(other.id, phone=OTHER_PHONE)
    thread = await gw.services.conversations.thread_for(other.id, contact.id, "sms")
    await gw.store.threads.update_one({"_id": thread["_id"]}, {"$set": {"delivery_problem": {
        "reason_code": "bounced", "at": gw.clock.now(), "since": gw.clock.now()}}})
    browser, _ = await signed_in(gw)
    async with browser as b:
        resp = await b.post(f"/staff/threads/{thread['_id']}/delivery-problem/dismiss", csrf_from="/staff/")
    assert resp.status == 404
    assert "delivery_problem" in await gw.store.threads.find_one({"_id": thread["_id"]})
    assert [e["detail"]["object"] for e in await audit_entries(gw, "authz.deny")] == ["thread"]


async def test_a_link_whose_notice_failed_is_shown_as_not_delivered_not_sent(gw: Gateway) -> None:
    sent = await gw.api_send(body="Your results are ready", secure=True)
    await gw.drain()
    gw.twilio.opted_out.add(CLIENT_PHONE)
    await gw.inbound_sms("Thanks")
    await gw.drain()
    browser, _ = await signed_in(gw)
    async with browser as b:
        html = await (await b.get(f"/staff/threads/{sent['thread_id']}")).text()
    links = html[html.index('id="links"'):]
    assert links.count("not delivered</span> client opted out; issued") == 1  # the answer's link
    assert links.count("sent ") == 1  # the first link did arrive
    assert "New link not delivered (client opted out)" in html
    assert csrf_of(html)
