from tests.support.harness import CLIENT_PHONE


async def test_secure_message_sends_only_a_link(gw):
    data = await gw.api_send(body="Your biopsy result is benign.", secure=True)
    assert data["secure"] is True and data["status"] == "queued"
    await gw.drain()
    sms = gw.sms_to(CLIENT_PHONE)
    assert len(sms) == 1
    assert "biopsy" not in sms[0]["body"]
    assert "/s/" in sms[0]["body"]
