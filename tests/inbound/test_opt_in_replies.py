"""START/YES: a confirmation only for a contact who was opted out; otherwise an ordinary reply."""

from __future__ import annotations

from gateway.messaging.contacts import OPTED_IN, OPTED_OUT
from tests.inbound.test_inbound_sms import (
    contact,
    start_secure_thread,
    start_standard_thread,
    thread,
    thread_api,
)
from tests.support.harness import Gateway

CONFIRMATION = "Riverside Clinic: you are subscribed to messages again. Reply STOP to opt out."


async def test_a_yes_answering_a_question_is_an_ordinary_reply_without_a_confirmation(gw: Gateway) -> None:
    await start_standard_thread(gw)  # "See you Tuesday at 3pm." -- the client answers:
    await gw.inbound_sms("Yes")
    await gw.drain()
    assert [str(m["body"]) for m in gw.sms_to()] == ["See you Tuesday at 3pm."]  # nothing more sent
    c = await contact(gw)
    assert "sms" not in c.consent  # no consent change recorded
    assert "consent.opt_in" not in await gw.audit_actions()
    inbound = [m for m in await thread_api(gw, (await thread(gw))["_id"]) if m["direction"] == "inbound"]
    assert [m["body"] for m in inbound] == ["Yes"]


async def test_a_yes_on_a_secure_thread_gets_the_usual_link_only_acknowledgement(gw: Gateway) -> None:
    await start_secure_thread(gw)
    await gw.inbound_sms("YES")
    await gw.drain()
    sms = [str(m["body"]) for m in gw.sms_to()]
    assert len(sms) == 2 and CONFIRMATION not in sms
    assert "/s/" in sms[-1]  # the link-only answer every secure reply gets


async def test_start_after_stop_is_confirmed_once(gw: Gateway) -> None:
    await start_standard_thread(gw)
    await gw.inbound_sms("STOP")
    await gw.drain()
    assert (await contact(gw)).opted_out("sms")
    await gw.inbound_sms("Yes")
    await gw.drain()
    assert [str(m["body"]) for m in gw.sms_to()][1:] == [CONFIRMATION]
    c = await contact(gw)
    assert c.consent["sms"]["state"] == OPTED_IN
    log = [e["state"] for e in (await gw.store.contacts.find_one({"_id": c.id}))["consent_log"]]
    assert log == [OPTED_OUT, OPTED_IN]
    # Once subscribed, a further "yes" is a plain answer again.
    await gw.inbound_sms("yes")
    await gw.drain()
    assert [str(m["body"]) for m in gw.sms_to()][1:] == [CONFIRMATION]
