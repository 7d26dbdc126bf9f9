"""Each accepted inbound SMS is logged once, by its ids: never its body or the sender's number."""

from __future__ import annotations

import logging
import secrets

import pytest

from tests.support.harness import Gateway

NUMBERS = [f"+1555999{i:04d}" for i in range(3)]


def _everything(record: logging.LogRecord) -> str:
    """A record's message and every attribute (structured fields included), as text."""
    return record.getMessage() + " " + repr(vars(record))


async def test_each_accepted_inbound_sms_is_logged_once_with_its_sid_and_org(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    canary = "canary-" + secrets.token_hex(8)
    sent = [await gw.inbound_sms(f"{canary} reply {i}", frm=phone) for i, phone in enumerate(NUMBERS)]
    resent = await gw.post_signed("/webhooks/twilio/sms", sent[0])  # Twilio retrying the first one
    assert resent.status == 200
    await gw.drain()
    for params in sent:
        records = [r for r in caplog.records if r.levelno >= logging.INFO and params["MessageSid"] in _everything(r)]
        assert len(records) == 1, [r.getMessage() for r in records]
        [record] = records
        assert record.levelno == logging.INFO
        fields = getattr(record, "fields", {})
        assert fields.get("message_sid") == params["MessageSid"] and fields.get("org_id") == gw.org.id
    for record in caplog.records:
        text = _everything(record)
        assert canary not in text
        for phone in NUMBERS:
            assert phone not in text and phone[2:] not in text, record.getMessage()
