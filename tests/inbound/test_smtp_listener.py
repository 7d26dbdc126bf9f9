"""The SMTP listener's reply codes (RFC 5321), driven by a real SMTP client on loopback."""

from __future__ import annotations

import aiosmtplib

from tests.support.harness import CLIENT_EMAIL, REPLY_DOMAIN, REPLY_RE
from tests.support.smtp_sink import make_self_signed_cert

SIMPLE_REPLY = (
    "From: Alex <alex@client.test>\r\nTo: {rcpt}\r\nSubject: Re: your message\r\n"
    "Message-ID: <{mid}@client.test>\r\n\r\nThanks, see you Tuesday.\r\n"
)


async def _reply_address(gw) -> str:
    await gw.api_send(channel="email", to={"email": CLIENT_EMAIL}, body="Your appointment is confirmed.")
    await gw.drain()
    [mail] = gw.mail_to(CLIENT_EMAIL)
    token = REPLY_RE.search(str(mail["Reply-To"])).group(1)
    return f"reply+{token}@{REPLY_DOMAIN}"


async def _client(port: int) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    await smtp.connect()
    await smtp.ehlo()
    return smtp


async def test_rcpt_refuses_unknown_and_forged_reply_addresses(gw):
    port = await gw.start_smtp()
    good = await _reply_address(gw)
    smtp = await _client(port)
    assert (await smtp.execute_command(b"MAIL", b"FROM:<alex@client.test>")).code == 250
    forged_token = "A" * 43
    for rcpt in (f"reply+{forged_token}@{REPLY_DOMAIN}", "reply+short@" + REPLY_DOMAIN, "postmaster@" + REPLY_DOMAIN,
                 good.replace(REPLY_DOMAIN, "other.example")):
        resp = await smtp.execute_command(b"RCPT", f"TO:<{rcpt}>".encode())
        assert resp.code == 550 and "5.1.1" in resp.message, (rcpt, resp)
    assert (await smtp.execute_command(b"RCPT", f"TO:<{good}>".encode())).code == 250
    await smtp.quit()
    assert await gw.store.inbound_events.count_documents({}) == 0


async def test_data_is_acknowledged_only_after_it_is_stored_once_per_message_id(gw):
    port = await gw.start_smtp()
    rcpt = await _reply_address(gw)
    raw = SIMPLE_REPLY.format(rcpt=rcpt, mid="m1")
    for _ in range(2):  # the sender retries the same message
        smtp = await _client(port)
        errors, response = await smtp.sendmail("alex@client.test", [rcpt], raw)
        assert errors == {} and response.startswith("2.0.0")
        await smtp.quit()
    events = [e async for e in gw.store.inbound_events.find({"kind": "email"})]
    assert len(events) == 1
    assert b"see you Tuesday" not in bytes(events[0]["raw"])  # stored sealed


async def test_message_over_the_size_limit_gets_552_and_nothing_is_stored(gw):
    port = await gw.start_smtp(max_message_bytes=20_000)
    rcpt = await _reply_address(gw)
    smtp = await _client(port)
    await smtp.execute_command(b"MAIL", b"FROM:<alex@client.test>")
    await smtp.execute_command(b"RCPT", f"TO:<{rcpt}>".encode())
    assert (await smtp.execute_command(b"DATA")).code == 354
    big = SIMPLE_REPLY.format(rcpt=rcpt, mid="big") + ("x" * 998 + "\r\n") * 30
    smtp.transport.write(big.encode() + b".\r\n")  # raw DATA: we want to read the reply code
    resp = await smtp.protocol.read_response(timeout=10)
    assert resp.code == 552
    assert await gw.store.inbound_events.count_documents({}) == 0


async def test_a_peer_sending_too_fast_is_told_to_slow_down_with_a_transient_code(gw):
    port = await gw.start_smtp()
    smtp = await _client(port)
    codes = []
    for _ in range(65):
        codes.append((await smtp.execute_command(b"MAIL", b"FROM:<alex@client.test>")).code)
        await smtp.execute_command(b"RSET")
    assert codes[:60] == [250] * 60
    assert set(codes[60:]) == {451}


async def test_starttls_is_required_when_configured(gw, tmp_path):
    cert, key = make_self_signed_cert(tmp_path)
    port = await gw.start_smtp(tls_cert_file=str(cert), tls_key_file=str(key), require_starttls=True)
    smtp = await _client(port)
    assert "starttls" in smtp.esmtp_extensions
    resp = await smtp.execute_command(b"MAIL", b"FROM:<alex@client.test>")
    assert resp.code == 530


# -- routing by In-Reply-To / References when the reply address has expired ---------------------

REPLY_TO_NOTICE = (
    "From: Alex <alex@client.test>\r\nTo: {rcpt}\r\nSubject: Re: New secure message\r\n"
    "Message-ID: <{mid}@client.test>\r\n{refs}\r\nYes, still the same number.\r\n"
)


async def _notice(gw) -> tuple[str, str, str]:
    """(reply address, the notice's Message-ID, its thread) of a secure email notice."""
    sent = await gw.api_send(channel="email", to={"email": CLIENT_EMAIL}, body="Please confirm your number.")
    await gw.drain()
    mail = gw.mail_to(CLIENT_EMAIL)[-1]
    token = REPLY_RE.search(str(mail["Reply-To"])).group(1)
    return f"reply+{token}@{REPLY_DOMAIN}", str(mail["Message-ID"]), sent["thread_id"]


async def _expire_reply_tokens(gw) -> None:
    gw.clock.advance(days=401)  # reply addresses live 400 days (gateway/messaging/reply_tokens.py)


async def test_an_expired_reply_address_still_routes_a_reply_to_our_mail(gw):
    port = await gw.start_smtp()
    rcpt, notice_id, thread_id = await _notice(gw)
    await _expire_reply_tokens(gw)
    for refs in (f"In-Reply-To: {notice_id}\r\n", f"References: <other@client.test> {notice_id}\r\n"):
        smtp = await _client(port)
        mid = "r-" + refs[:5]
        errors, response = await smtp.sendmail("alex@client.test", [rcpt],
                                               REPLY_TO_NOTICE.format(rcpt=rcpt, mid=mid, refs=refs))
        await smtp.quit()
        assert errors == {} and response.startswith("2.0.0"), response
    await gw.drain()
    inbound = [m async for m in gw.store.messages.find({"direction": "inbound", "channel": "email"})]
    assert len(inbound) == 2 and {m["thread_id"] for m in inbound} == {thread_id}


async def test_an_expired_reply_address_without_a_reference_to_our_mail_is_refused(gw):
    port = await gw.start_smtp()
    rcpt, _, _ = await _notice(gw)
    await _expire_reply_tokens(gw)
    # Another contact's notice: a reference, but not to a mail this contact received.
    other = await gw.api_send(channel="email", to={"email": "blake@client.test"}, body="Hello Blake.")
    await gw.drain()
    blakes = str(gw.mail_to("blake@client.test")[-1]["Message-ID"])
    assert other["thread_id"]
    for refs in ("", "In-Reply-To: <made-up@client.test>\r\n", f"In-Reply-To: {blakes}\r\n"):
        smtp = await _client(port)
        assert (await smtp.execute_command(b"MAIL", b"FROM:<alex@client.test>")).code == 250
        assert (await smtp.execute_command(b"RCPT", f"TO:<{rcpt}>".encode())).code == 250
        resp = None
        try:
            await smtp.data(REPLY_TO_NOTICE.format(rcpt=rcpt, mid="x" + str(len(refs)), refs=refs))
        except aiosmtplib.SMTPDataError as err:
            resp = err
        assert resp is not None and resp.code == 550 and "5.1.1" in resp.message, refs
        await smtp.quit()
    assert await gw.store.inbound_events.count_documents({"kind": "email"}) == 0


async def test_a_revoked_reply_address_is_refused_at_rcpt_even_with_a_reference(gw):
    port = await gw.start_smtp()
    rcpt, _, _ = await _notice(gw)
    await gw.store.reply_tokens.update_many({}, {"$set": {"revoked_at": gw.clock.now()}})
    smtp = await _client(port)
    assert (await smtp.execute_command(b"MAIL", b"FROM:<alex@client.test>")).code == 250
    resp = await smtp.execute_command(b"RCPT", f"TO:<{rcpt}>".encode())
    assert resp.code == 550 and "5.1.1" in resp.message
    await smtp.quit()
