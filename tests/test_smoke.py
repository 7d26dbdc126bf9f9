from tests.support.harness import CLIENT_PHONE


async def test_secure_message_sends_only_a_link(gw):
    data = await gw.api_send(body="Your biopsy result is benign.", secure=True)
    assert data["secure"] is True and data["status"] == "queued"
    await gw.drain()
    sms = gw.sms_to(CLIENT_PHONE)
    assert len(sms) == 1
    assert "biopsy" not in sms[0]["body"]
    assert "/s/" in sms[0]["body"]


async def test_secure_email_carries_only_a_link_and_a_reply_address(gw):
    from tests.support.harness import CLIENT_EMAIL, REPLY_RE

    data = await gw.api_send(channel="email", to={"email": CLIENT_EMAIL}, body="Your biopsy result is benign.")
    assert data["secure"] is True
    await gw.drain()
    [mail] = gw.mail_to(CLIENT_EMAIL)
    text = mail.get_body(("plain",)).get_content()
    assert "biopsy" not in text and "biopsy" not in str(mail["Subject"])
    assert "/s/" in text
    assert REPLY_RE.search(str(mail["Reply-To"]))


async def test_metrics_count_queued_work_without_ids_or_content(gw, aiohttp_client):
    from gateway.runtime.app import metrics_app

    internal = await aiohttp_client(metrics_app(gw.services))  # [server] metrics_port's listener
    await gw.api_send(body="Canary-metrics-5521")
    text = await (await internal.get("/metrics")).text()
    assert 'hushlink_outbox_jobs{state="pending"} 1' in text
    assert "Canary" not in text
