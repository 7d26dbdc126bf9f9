"""A process that does not run the workers (`--role web`) keeps no in-memory queue of work for them:
what it stores is found by the sweep of the process that runs them (gateway/storage/leases.py)."""

from __future__ import annotations

from gateway.runtime.app import build_runtime, create_app
from gateway.runtime.services import Services
from outbound.twilio_sms import TwilioSmsSender
from tests.support.harness import CLIENT_PHONE, ORG_NUMBER, PUBLIC_URL
from tests.support.twilio_standin import TwilioStandIn, inbound_sms_params, new_sid, sign


async def test_a_web_only_process_queues_nothing_in_memory_however_much_it_takes(
        services: Services, twilio: TwilioStandIn, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    from gateway.security.api_keys import ApiKeys

    sender = TwilioSmsSender(twilio.account_sid, twilio.auth_token, api_base=twilio.base_url, timeout=3)
    try:
        rt = build_runtime(services, sms=sender)
        client = await aiohttp_client(create_app(rt, role="web"))
        org = await services.orgs.create("Riverside Clinic", ORG_NUMBER)
        key, _ = await ApiKeys(services.store, services.clock).create(org.id, "tests")
        for i in range(200):
            resp = await client.post("/api/v1/messages", headers={"Authorization": f"Bearer {key}"}, json={
                "channel": "sms", "to": {"phone": f"+1555123{i:04d}"}, "body": "Your appointment is confirmed.",
                "secure": False})
            assert resp.status == 201, await resp.text()
        for _ in range(50):
            params = inbound_sms_params(frm=CLIENT_PHONE, to=ORG_NUMBER, body="Hello", account_sid=twilio.account_sid,
                                        sid=new_sid("SM"))
            resp = await client.post("/webhooks/twilio/sms", data=params, headers={
                "X-Twilio-Signature": sign(PUBLIC_URL + "/webhooks/twilio/sms", params, twilio.auth_token)})
            assert resp.status == 200
        for worker in (rt.dispatcher.worker, rt.processor.worker):
            assert worker._ready.qsize() == 0 and not worker._queued and not worker._known and not worker._owned
        # The work is stored, for whichever process runs the workers.
        assert await services.store.outbox.count_documents({"state": "pending"}) == 200
        assert await services.store.inbound_events.count_documents({"state": "pending"}) == 50
        assert twilio.messages == []
    finally:
        await sender.close()
