"""The canary: secure content, link tokens, PINs and phone numbers exist only sealed or hashed.

One full loop — API secure send with a PIN, the SMS with its link, the client opening it and
replying in the portal, a plain SMS reply on the secure thread, delivery callbacks — with unique
canary strings, then a scan of every log line, every document of every collection (as raw BSON
bytes) and everything sent to or received from the Twilio stand-in. The canaries must be found
only through the API (proving they were stored, sealed), never in the clear.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import bson
import pytest

from gateway.security.redact import JsonFormatter, RedactingFilter
from tests.support.harness import CLIENT_PHONE, Gateway

OWN_LOGGERS = ("gateway", "inbound", "outbound", "portal", "hushlink", "tests")
# A PIN with characters no hex digest, ObjectId or token alphabet produces by chance.
PIN = "Zq7!Wx9#kP"


class RawRecords(logging.Handler):
    """Records exactly as emitted, before any filter rewrote them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is still a record
            text = f"{record.msg!r} {record.args!r}"
        extra = {k: v for k, v in record.__dict__.items() if k == "fields"}
        self.lines.append((record.name, f"{text} {extra!r} {record.exc_text or ''}"))


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[dict[str, Any]]:
    """Root-logger capture: raw records, the production pipeline (filter + JSON), and caplog."""
    caplog.set_level(logging.DEBUG)
    root = logging.getLogger()
    raw = RawRecords()
    stream = io.StringIO()
    redacting = logging.StreamHandler(stream)
    redacting.setLevel(logging.DEBUG)
    redacting.addFilter(RedactingFilter())
    redacting.setFormatter(JsonFormatter())
    # First the raw copy, then the redacting handler (which rewrites the record for every
    # handler after it, as the installed one does), then pytest's own handlers.
    root.handlers.insert(0, redacting)
    root.handlers.insert(0, raw)
    try:
        yield {"raw": raw, "stream": stream, "caplog": caplog}
    finally:
        root.removeHandler(raw)
        root.removeHandler(redacting)


def encodings(secret: str) -> list[bytes]:
    """Ways a plaintext could sit in a document: UTF-8, UTF-16, base64 of the UTF-8 bytes."""
    utf8 = secret.encode("utf-8")
    b64 = base64.b64encode(utf8)
    return [utf8, secret.encode("utf-16-le"), b64[: len(b64) - 4]]


async def all_documents(gw: Gateway) -> list[tuple[str, dict[str, Any], bytes]]:
    out = []
    for name in await gw.store.collection_names():
        async for doc in gw.store.collection(name).find({}):
            out.append((name, doc, bson.encode(doc)))
    return out


def assert_logs_hold_none(logs: dict[str, Any], secrets: list[str], *, never_even_raw: list[str]) -> str:
    """No secret in what the log pipeline wrote (redacting filter + JSON) nor in caplog; our own
    loggers never log one even before redaction, and nobody logs `never_even_raw` (content).
    Third-party loggers (access log, HTTP clients) may, and the redacting handler is what stops
    them. Returns the raw (pre-redaction) text, for a test to show redaction had work to do."""
    out = logs["stream"].getvalue()
    assert out.count("\n") >= 5, "expected some log output from the loop"
    caplog_text = logs["caplog"].text
    for secret in secrets:
        assert secret not in out, secret
        assert secret not in caplog_text, secret
        for record in logs["caplog"].records:
            assert secret not in record.getMessage(), (secret, record.name)
    for name, line in logs["raw"].lines:
        if name.split(".")[0] in OWN_LOGGERS:
            for secret in secrets:
                assert secret not in line, (secret, name, line)
        for secret in never_even_raw:
            assert secret not in line, (secret, name)
    return "\n".join(line for _, line in logs["raw"].lines)


async def assert_database_holds_none(gw: Gateway, secrets: list[str], collections: set[str]
                                     ) -> list[tuple[str, dict[str, Any], bytes]]:
    """No secret, in any encoding, in the raw BSON of any document (at least `collections` exist).
    Returns the documents for further checks."""
    docs = await all_documents(gw)
    assert collections <= {name for name, _, _ in docs}
    for name, doc, raw_bson in docs:
        for secret in secrets:
            for form in encodings(secret):
                assert form not in raw_bson, (secret, name, doc.get("_id"))
    return docs


async def test_secure_content_tokens_pins_and_phones_never_leak(gw: Gateway, logs: dict[str, Any]):
    tag = uuid.uuid4().hex[:12]
    canary_api = f"CANARY-API-{tag} biopsy result benign"
    canary_portal = f"CANARY-PORTAL-{tag} thank you"
    canary_sms = f"CANARY-SMS-{tag} my DOB is 1980-02-03"
    canary_name = f"Canaryname{tag}"
    canaries = [canary_api, canary_portal, canary_sms, canary_name]
    phone_digits = CLIENT_PHONE.lstrip("+")

    # 1. Secure message by API, with a per-message PIN.
    sent = await gw.api_send(body=canary_api, secure=True, pin=PIN,
                             to={"phone": CLIENT_PHONE, "name": canary_name})
    await gw.drain()
    token1 = gw.last_link_token()

    # 2. The client opens it (GET is what a scanner does; then the PIN form) and replies.
    assert (await gw.client.get(f"/s/{token1}")).status == 200
    opened = await gw.open_link(token1, pin=PIN)
    assert opened.status == 303
    session_id = opened.cookies["hl_client"].value
    page = await gw.client.get("/s/thread")
    html = await page.text()
    assert canary_api in html
    csrf = re.search(r'name="csrf" value="([^"]+)"', html)
    assert csrf
    reply = await gw.client.post("/s/thread/reply", data={"csrf": csrf.group(1), "body": canary_portal},
                                 allow_redirects=False)
    assert reply.status == 303

    # 3. A plain SMS reply on the (secure) thread: sealed, answered with a link only.
    inbound = await gw.inbound_sms(canary_sms)
    await gw.drain()
    token2 = gw.last_link_token()
    assert token2 != token1
    assert (await gw.client.get(f"/s/{token2}")).status == 200

    # 4. Delivery callbacks for everything sent, one duplicated.
    for m in list(gw.twilio.messages):
        assert await gw.status(m["sid"], "sent") == 200
        assert await gw.status(m["sid"], "delivered") == 200
    assert await gw.status(gw.twilio.messages[0]["sid"], "delivered") == 200
    await gw.drain()

    # Every canary is stored: the API opens them.
    api = await gw.client.get(f"/api/v1/threads/{sent['thread_id']}/messages", headers=gw.auth())
    bodies = [m["body"] for m in (await api.json())["messages"]]
    assert bodies[:3] == [canary_api, canary_portal, canary_sms]
    contact = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    assert contact is not None
    assert (await gw.services.contacts.reveal(contact))["name"] == canary_name
    message = await gw.client.get(f"/api/v1/messages/{sent['id']}", headers=gw.auth())
    assert [h["status"] for h in (await message.json())["status_history"]][-1] == "delivered"

    tokens = sorted({t for m in gw.twilio.messages for t in re.findall(r"/s/([A-Za-z0-9_-]{43})", m["body"] or "")})
    assert token1 in tokens and token2 in tokens
    secrets = [*canaries, *tokens, PIN, session_id, CLIENT_PHONE, phone_digits]

    # (a) Logs. The production pipeline (redacting filter + JSON) and caplog after it: nothing.
    raw_text = assert_logs_hold_none(logs, secrets, never_even_raw=[*canaries, PIN])
    assert token1 in raw_text, "the access log saw the link path, so redaction above was tested"

    # (b) The database, as raw BSON: no canary, token, PIN, session id or full phone number.
    docs = await assert_database_holds_none(gw, secrets, {
        "messages", "contacts", "links", "outbox", "inbound_events", "audit", "sessions", "keys"})
    stored = [doc for name, doc, _ in docs if name == "messages"]
    assert len(stored) >= 3 and all(isinstance(d["body"], bytes) for d in stored)
    inbound_event = next(doc for name, doc, _ in docs if name == "inbound_events")
    # Processed: the sealed raw payload is dropped (one less copy of client content).
    assert inbound_event["state"] == "done" and "payload" not in inbound_event
    assert inbound_event["provider_id"] == inbound["MessageSid"]

    # (c) What the provider was asked to send: links and the org name only.
    assert len(gw.twilio.messages) == 2
    for m in gw.twilio.messages:
        assert m["to"] == CLIENT_PHONE
        for secret in [*canaries, PIN, session_id]:
            assert secret not in (m["body"] or ""), secret
        assert len(m["body"] or "") <= 160

    # (d) Every request the provider received and every callback it sent.
    wire = repr(gw.twilio.requests) + repr(gw.twilio.callbacks)
    for secret in [*canaries, PIN, session_id]:
        assert secret not in wire, secret
    for job in (doc for name, doc, _ in docs if name == "outbox"):
        assert "link_token" not in job or isinstance(job["link_token"], bytes)
        assert job["state"] == "sent"
