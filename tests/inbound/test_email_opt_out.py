"""A mail reply whose first word is STOP or UNSUBSCRIBE opts the contact out of email (issue 9)."""

from __future__ import annotations

import pytest

from gateway.messaging.contacts import OPTED_OUT
from gateway.rules.keywords import is_email_opt_out
from tests.inbound.test_email_replies import (
    deliver,
    email_thread,
    reply_address,
    reply_token_of,
    simple_reply,
    thread_messages,
)
from tests.support.harness import CLIENT_EMAIL, Gateway

QUOTED = "\n\nOn Mon, Jan 5, 2026 at 9:00 AM Riverside Clinic wrote:\n> Please reply STOP to stop.\n"


@pytest.mark.parametrize("body", ["STOP", "unsubscribe", "Stop.\n\nSent from my iPhone",
                                  "UNSUBSCRIBE me please" + QUOTED])
async def test_a_stop_reply_opts_out_of_email_and_no_more_mail_is_sent(gw: Gateway, body: str) -> None:
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)  # secure: an ordinary reply would get a link-only answer
    rcpt = reply_address(reply_token_of(notice))
    assert (await deliver(port, rcpt, simple_reply(rcpt, body))).startswith("2.0.0")
    await gw.drain()
    contact = await gw.services.contacts.by_email(gw.org.id, CLIENT_EMAIL)
    assert contact is not None and contact.opted_out("email")
    assert contact.consent["email"]["source"] == "email:reply"
    assert not contact.opted_out("sms")  # email only
    assert "consent.opt_out" in await gw.audit_actions()
    # The reply is in the conversation for staff; no answer and no confirmation went out.
    inbound = [m for m in await thread_messages(gw, sent["thread_id"]) if m["direction"] == "inbound"]
    assert len(inbound) == 1
    assert len(gw.mail_to()) == 1
    # Nothing more by email: the API refuses, and a notice queued before is never sent.
    data = await gw.api_send(channel="email", to={"email": CLIENT_EMAIL}, body="One more thing", secure=True,
                             expect=422)
    assert data["error"]["code"] == "opted_out"
    await gw.drain()
    assert len(gw.mail_to()) == 1


async def test_a_reply_that_only_mentions_stop_in_the_quote_or_later_is_an_ordinary_reply(gw: Gateway) -> None:
    port = await gw.start_smtp()
    _, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    await deliver(port, rcpt, simple_reply(rcpt, "Thanks, please don't stop the reminders." + QUOTED))
    await gw.drain()
    contact = await gw.services.contacts.by_email(gw.org.id, CLIENT_EMAIL)
    assert contact is not None and not contact.opted_out("email")
    assert len(gw.mail_to()) == 2  # the link-only answer


async def test_an_auto_reply_starting_with_stop_does_not_opt_out(gw: Gateway) -> None:
    port = await gw.start_smtp()
    _, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    auto = simple_reply(rcpt, "Stop by room 4 while I am away.", headers={"Auto-Submitted": "auto-replied"})
    await deliver(port, rcpt, auto)
    await gw.drain()
    contact = await gw.services.contacts.by_email(gw.org.id, CLIENT_EMAIL)
    assert contact is not None and not contact.opted_out("email")


async def test_replies_in_one_batch_keep_their_order_around_a_stop(gw: Gateway) -> None:
    # A plain reply, then STOP, then another plain reply, all waiting when the processor runs (one
    # batch): the STOP is handled one by one, in order; the contact ends opted out, sent nothing.
    port = await gw.start_smtp()
    _, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    for body in ("See you then.", "STOP", "Also, cancel Tuesday."):
        await deliver(port, rcpt, simple_reply(rcpt, body))
    await gw.drain()
    contact = await gw.services.contacts.by_email(gw.org.id, CLIENT_EMAIL)
    assert contact is not None and contact.consent["email"]["state"] == OPTED_OUT
    assert await gw.store.inbound_events.count_documents({"state": "done"}) == 3
    # The first reply's link-only answer was queued before the STOP; by the time it was due the
    # contact had opted out, so it failed unsent. The replies after the STOP queued nothing.
    assert len(gw.mail_to()) == 1
    acks = [j async for j in gw.store.outbox.find({"template": "inbound_ack"})]
    assert [(j["state"], j["last_error"]["code"]) for j in acks] == [("failed", "opted_out")]


def test_the_first_word_decides() -> None:
    assert is_email_opt_out("STOP")
    assert is_email_opt_out("  \u200bUnsubscribe!")
    assert is_email_opt_out("ＳＴＯＰ")  # full-width
    assert not is_email_opt_out("Stopped by yesterday")
    assert not is_email_opt_out("Please stop")
    assert not is_email_opt_out("")
