"""Delivery rules (gateway/messaging/delivery.py): plain reasons for provider codes, and the thread's failure
mark, set by a failed send and cleared by a later one that went out — through the real Twilio
webhook, the dispatcher and the SMTP listener."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.messaging.delivery import Delivery, reason_code, reason_text
from gateway.security.audit import Actor
from tests.inbound.test_email_replies import deliver, dsn_for, email_thread, reply_address, reply_token_of
from tests.support.harness import CLIENT_PHONE, Gateway


@pytest.mark.parametrize(("code", "words"), [
    ("21614", "number cannot receive SMS"),  # not a mobile number
    ("30006", "number cannot receive SMS"),  # landline or unreachable carrier
    ("21211", "number cannot receive SMS"),  # invalid To
    ("21610", "client opted out"),  # the number texted STOP
    ("opted_out", "client opted out"),  # our own consent record
    ("5.1.1", "mail bounced: mailbox unknown"),
    ("5.2.2", "mail bounced"),  # mailbox full
    ("smtp_5xx", "mail bounced"),
    ("bounce", "mail bounced"),
    ("30008", "message could not be delivered"),
    (None, "message could not be delivered"),
])
def test_provider_codes_read_as_plain_reasons(code: str | None, words: str) -> None:
    assert reason_text(reason_code(code)) == words


async def _thread(gw: Gateway, thread_id: str) -> dict[str, Any]:
    found = await gw.store.threads.find_one({"_id": thread_id})
    assert found is not None
    return found


async def _sid(gw: Gateway, message_id: str) -> str:
    found = await gw.store.messages.find_one({"_id": message_id})
    assert found is not None and found["provider_id"]
    return str(found["provider_id"])


async def test_undelivered_sms_marks_the_thread_and_a_later_send_that_arrives_clears_it(gw: Gateway) -> None:
    first = await gw.api_send(body="Reminder one", secure=False)
    await gw.drain()
    assert await gw.status(await _sid(gw, first["id"]), "undelivered", error_code="30006") == 200
    mark = (await _thread(gw, first["thread_id"]))["delivery_problem"]
    assert mark["reason_code"] == "cannot_receive_sms" and mark["message_id"] == first["id"]
    assert (await gw.store.messages.find_one({"_id": first["id"]}))["status"] == "undelivered"

    gw.clock.advance(60)
    second = await gw.api_send(body="Reminder two", secure=False)
    await gw.drain()
    assert "delivery_problem" in await _thread(gw, first["thread_id"])  # accepted is not arrived
    assert await gw.status(await _sid(gw, second["id"]), "delivered") == 200
    assert "delivery_problem" not in await _thread(gw, first["thread_id"])


async def test_a_late_success_of_an_older_send_does_not_clear_a_newer_failure(gw: Gateway) -> None:
    older = await gw.api_send(body="Reminder one", secure=False)
    await gw.drain()
    gw.clock.advance(60)
    newer = await gw.api_send(body="Reminder two", secure=False)
    await gw.drain()
    assert await gw.status(await _sid(gw, newer["id"]), "failed", error_code="21614") == 200
    assert await gw.status(await _sid(gw, older["id"]), "delivered") == 200
    mark = (await _thread(gw, newer["thread_id"]))["delivery_problem"]
    assert mark["message_id"] == newer["id"] and mark["reason_code"] == "cannot_receive_sms"


async def test_a_refused_send_marks_the_thread_and_staff_can_dismiss_it_audited(gw: Gateway) -> None:
    gw.twilio.fail_next(400, code=21614, message="not a mobile number")
    sent = await gw.api_send(body="Reminder", secure=False)
    await gw.drain()
    assert (await _thread(gw, sent["thread_id"]))["delivery_problem"]["reason_code"] == "cannot_receive_sms"
    delivery = Delivery(gw.store, gw.services.contacts, gw.services.audit, gw.clock,
                        keep_done_days=gw.services.config.outbox.keep_done_days)
    staff = Actor("staff", "a" * 24)
    assert await delivery.dismiss(gw.org.id, sent["thread_id"], staff) is True
    assert "delivery_problem" not in await _thread(gw, sent["thread_id"])
    assert await delivery.dismiss(gw.org.id, sent["thread_id"], staff) is False  # nothing left to dismiss
    assert (await gw.audit_actions()).count("thread.delivery_problem_dismissed") == 1


async def test_a_link_notice_that_fails_marks_its_link_undelivered_not_sent(gw: Gateway) -> None:
    sent = await gw.api_send(body="Your results are ready", secure=True)
    await gw.drain()
    gw.twilio.opted_out.add(CLIENT_PHONE)  # the phone texted STOP at the carrier meanwhile
    await gw.inbound_sms("Thanks, will read")
    await gw.drain()
    job = await gw.store.outbox.find_one({"template": "inbound_ack"})
    assert job is not None and job["state"] == "failed"
    link = await gw.store.links.find_one({"_id": job["link_id"]})
    assert link is not None and link["undelivered"]["reason_code"] == "opted_out"
    entries = [e async for e in gw.store.audit.find({"org_id": gw.org.id, "action": "link.undelivered"})]
    assert len(entries) == 1 and entries[0]["link_id"] == job["link_id"] and entries[0]["message_id"]
    mark = (await _thread(gw, sent["thread_id"]))["delivery_problem"]
    assert mark["reason_code"] == "opted_out" and mark["link_id"] == job["link_id"] and mark["message_id"] is None


@pytest.mark.parametrize(("status", "reason"), [("5.1.1", "mailbox_unknown"), ("5.2.2", "bounced")])
async def test_a_bounce_marks_the_thread_with_what_the_report_says(gw: Gateway, status: str, reason: str) -> None:
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    await deliver(port, rcpt, dsn_for(str(notice["Message-ID"]), rcpt, status), mail_from="")
    await gw.drain()
    mark = (await _thread(gw, sent["thread_id"]))["delivery_problem"]
    assert mark["reason_code"] == reason and mark["message_id"] == sent["id"] and mark["channel"] == "email"


async def test_mail_the_relay_takes_later_clears_an_earlier_bounce(gw: Gateway) -> None:
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    await deliver(port, rcpt, dsn_for(str(notice["Message-ID"]), rcpt), mail_from="")
    await gw.drain()
    assert "delivery_problem" in await _thread(gw, sent["thread_id"])
    gw.clock.advance(60)
    await email_thread(gw, body="A second note")
    assert "delivery_problem" not in await _thread(gw, sent["thread_id"])
