"""Inbound mail limits (issue 9): per-conversation daily quotas, and sessions that guess addresses."""

from __future__ import annotations

import asyncio

import aiosmtplib
import pytest

from gateway.errors import ConfigError
from gateway.runtime.config import load_config
from tests.inbound.test_email_replies import deliver, email_thread, reply_address, reply_token_of, simple_reply
from tests.support.harness import CLIENT_EMAIL, REPLY_DOMAIN, Gateway


async def _stored(gw: Gateway) -> int:
    return await gw.store.inbound_events.count_documents({"kind": "email"})


async def test_a_conversation_over_its_daily_message_quota_is_deferred_at_rcpt(gw: Gateway) -> None:
    port = await gw.start_smtp(thread_messages_per_day=2)
    _, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    for n in range(2):
        assert (await deliver(port, rcpt, simple_reply(rcpt, f"Reply {n}"))).startswith("2.0.0")
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await deliver(port, rcpt, simple_reply(rcpt, "One too many"))
    [recipient] = refused.value.recipients
    assert recipient.code == 452 and recipient.message.startswith("4.2.2")
    assert await _stored(gw) == 2  # nothing stored for the refused one
    # The quota is per day: tomorrow the sender's retry goes through.
    gw.clock.advance(86_400)
    assert (await deliver(port, rcpt, simple_reply(rcpt, "One too many"))).startswith("2.0.0")
    assert await _stored(gw) == 3


async def test_a_conversation_over_its_daily_byte_quota_is_deferred_at_data(gw: Gateway) -> None:
    port = await gw.start_smtp(thread_bytes_per_day=30_000)
    _, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    big = "x" * 12_000
    for n in range(2):  # ~24 KB of the 30 KB
        assert (await deliver(port, rcpt, simple_reply(rcpt, f"Scan {n}\n{big}"))).startswith("2.0.0")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await deliver(port, rcpt, simple_reply(rcpt, f"Scan 3\n{big}"))
    assert refused.value.code == 452 and refused.value.message.startswith("4.2.2")
    assert await _stored(gw) == 2
    # A small message still fits today.
    assert (await deliver(port, rcpt, simple_reply(rcpt, "Thanks"))).startswith("2.0.0")


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One (possibly multi-line) SMTP reply."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), 5)
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return b"".join(lines)


async def test_a_session_is_closed_at_its_fifth_unknown_recipient(gw: Gateway) -> None:
    port = await gw.start_smtp()
    _, notice = await email_thread(gw)
    good = reply_address(reply_token_of(notice))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await _answer(reader)).startswith(b"220")
        for command in (b"EHLO client.test", f"MAIL FROM:<{CLIENT_EMAIL}>".encode()):
            writer.write(command + b"\r\n")
            assert (await _answer(reader)).startswith(b"250")
        answers = []
        for n in range(5):
            guess = f"reply+{'A' * 42}{n}@{REPLY_DOMAIN}"
            writer.write(f"RCPT TO:<{guess}>\r\n".encode())
            answers.append(await _answer(reader))
        assert all(a.startswith(b"550 5.1.1") for a in answers[:4]), answers
        assert answers[4].startswith(b"421 4.7.0"), answers
        # The server closed the connection: a known address gets no answer in this session.
        writer.write(f"RCPT TO:<{good}>\r\n".encode())
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    # A new session is served as usual.
    assert (await deliver(port, good, simple_reply(good, "Hello again"))).startswith("2.0.0")


def test_the_quota_settings_have_their_defaults_and_are_checked() -> None:
    ib = load_config(None, {}).inbound_smtp
    assert (ib.thread_messages_per_day, ib.thread_bytes_per_day) == (200, 20_000_000)
    with pytest.raises(ConfigError) as err:
        load_config(None, {"HUSHLINK_INBOUND_SMTP__THREAD_BYTES_PER_DAY": "1000"})
    assert "inbound_smtp.thread_bytes_per_day" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(None, {"HUSHLINK_INBOUND_SMTP__THREAD_MESSAGES_PER_DAY": "0"})
    assert "inbound_smtp.thread_messages_per_day" in str(err.value)
