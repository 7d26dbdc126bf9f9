"""Email replies end to end, with real SMTP both ways.

The gateway sends a notification through the real SmtpEmailSender to the test sink; the test
reads its Reply-To and answers through the gateway's own SMTP listener (aiosmtplib on loopback)
with the shapes real clients produce (tests/fixtures/email/mime, re-addressed), then checks
what the API, the database (as raw BSON), the staff side and the next outbound mail show.
"""

from __future__ import annotations

import base64
import re
import uuid
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
import bson
import pytest

from gateway.security.tokens import token_hash
from tests.portal.test_staff_support import Browser, audit_entries, make_staff, signed_in
from tests.support.harness import (
    CLIENT_EMAIL,
    LINK_RE,
    ORG_EMAIL,
    REPLY_DOMAIN,
    REPLY_RE,
    Gateway,
)

MIME = Path(__file__).resolve().parent.parent / "fixtures" / "email" / "mime"
OTHER_EMAIL = "blake@client.test"
NOTICE = "Your appointment is confirmed."
ORG_NAME = "Riverside Clinic"
ACK_SUBJECT = f"{ORG_NAME} received your reply"

# fixture -> (the stripped reply the API must show, a phrase of the quoted history or signature
# that must be gone, a phrase of the reply that must never be stored in clear)
CLIENT_SHAPES: dict[str, tuple[str, str, str]] = {
    "gmail_reply.eml": (
        "Tuesday at 10 works for me. I'll bring the signed form.\n\nThanks,\nBob",
        "Reply to confirm", "bring the signed form"),
    "outlook_desktop_reply.eml": (
        "Hi,\n\nPlease move my appointment to Thursday if possible.\n\nKind regards,\nCarol Example",
        "Sent: Monday", "move my appointment to Thursday"),
    "outlook_web_reply.eml": (
        "Yes, I'll be there. Could you send me the address again?\n\nDana",
        "Résidence Rivière", "send me the address again"),
    "apple_mail_reply.eml": (
        "Hi,\n\nThat time suits me well. I will bring the insurance card and the letter from my doctor."
        "\n\nBest,\nErin",
        "Your appointment is on Tuesday", "bring the insurance card"),
    "thunderbird_reply.eml": (
        "Could we make it 11:00 instead? The morning train gets in at 10:30 and I would rather not rush."
        "\n\nThanks –\nFrank",
        "Ferry Road", "morning train gets in"),
    "iphone_reply.eml": ("Confirmed, see you Tuesday \N{THUMBS UP SIGN}", "Hello Grace", "Confirmed, see you"),
    "html_only_reply.eml": (
        "Please call me on my mobile instead – the landline is out of order.\n\nHelen",
        "we tried to call you", "landline is out of order"),
    "latin1_reply.eml": (
        "Bonjour,\n\nTrès bien, je serai là mardi à 10 h. Merci beaucoup !\n\nAmélie Müller",
        "Votre rendez-vous est", "je serai là mardi"),
    "windows1252_reply.eml": (
        "Hi – I’ve paid the €20 deposit online.\nCould you confirm it arrived? “Reference 4471”\n\nIvan",
        "Please pay the deposit", "deposit online"),
    "iso2022jp_reply.eml": (
        "承知しました。火曜日の10時に伺います。\n\nよろしくお願いいたします。\n山田",
        "山田様", "火曜日の10時に伺います"),
    "shift_jis_reply.eml": ("了解です。①番の窓口に行きます。", "ご予約は火曜日です", "番の窓口に行きます"),
    "forwarded.eml": (
        "Forwarding this as asked. My lab sent it yesterday.", "LAB-99812", "My lab sent it yesterday"),
    "attachment_reply.eml": ("Here is the signed consent form.\n\nJack", "Please sign and return",
                             "Here is the signed consent form"),
}


# -- helpers --------------------------------------------------------------------------------------


def fixture(name: str) -> bytes:
    return (MIME / name).read_bytes()


def readdress(raw: bytes, *, to: str, frm: str | None = CLIENT_EMAIL, message_id: str | None = None,
              in_reply_to: str | None = None, add: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The same bytes with To (and From's address, Message-ID, In-Reply-To) replaced at the header
    level, so bodies and their encodings stay exactly as the client wrote them."""
    sep = re.search(rb"\r?\n\r?\n", raw)
    assert sep is not None
    head, body = raw[: sep.start()], raw[sep.start():]
    nl = b"\r\n" if b"\r\n" in head else b"\n"
    fields = re.split(rb"\r?\n(?![ \t])", head)
    out: list[bytes] = []
    for f in fields:
        name = f.split(b":", 1)[0].strip().lower()
        if name == b"to":
            f = b"To: " + ORG_NAME.encode() + b" <" + to.encode() + b">"
        elif name == b"from" and frm is not None:
            f = re.sub(rb"<[^<>]*>\s*$", b"<" + frm.encode() + b">", f) if b"<" in f else b"From: " + frm.encode()
        elif name == b"message-id" and message_id is not None:
            f = b"Message-ID: " + message_id.encode()
        elif name == b"in-reply-to" and in_reply_to is not None:
            f = b"In-Reply-To: " + in_reply_to.encode()
        out.append(f)
    out += [f"{k}: {v}".encode() for k, v in add]
    return nl.join(out) + body


def simple_reply(rcpt: str, body: str, *, frm: str = CLIENT_EMAIL, message_id: str | None = None,
                 headers: dict[str, str] | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Alex <{frm}>"
    msg["To"] = f"{ORG_NAME} <{rcpt}>"
    msg["Subject"] = "Re: New secure message"
    msg["Message-ID"] = message_id or make_msgid(domain="client.test")
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    return msg


async def smtp_client(port: int) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    await smtp.connect()
    await smtp.ehlo()
    return smtp


async def deliver(port: int, rcpt: str | list[str], message: bytes | EmailMessage, *,
                  mail_from: str = CLIENT_EMAIL) -> str:
    """One SMTP session through the gateway's listener; returns the reply text to DATA."""
    data = message.as_bytes() if isinstance(message, EmailMessage) else message
    smtp = await smtp_client(port)
    try:
        errors, response = await smtp.sendmail(mail_from, [rcpt] if isinstance(rcpt, str) else rcpt, data)
    finally:
        await smtp.quit()
    assert errors == {}, errors
    return response


def reply_token_of(mail: EmailMessage) -> str:
    found = REPLY_RE.search(str(mail["Reply-To"]))
    assert found, mail["Reply-To"]
    return found.group(1)


def reply_address(token: str) -> str:
    return f"reply+{token}@{REPLY_DOMAIN}"


def text_parts(mail: EmailMessage) -> list[str]:
    return [p.get_content() for p in mail.walk() if p.get_content_maintype() == "text"]


async def email_thread(gw: Gateway, *, to: str = CLIENT_EMAIL, secure: bool = True,
                       body: str = NOTICE) -> tuple[dict[str, Any], EmailMessage]:
    """An API email send, delivered to the sink; returns (API answer, the mail the client got)."""
    before = len(gw.mail_to(to))
    data = await gw.api_send(channel="email", to={"email": to}, body=body, secure=secure)
    await gw.drain()
    mails = gw.mail_to(to)
    assert len(mails) == before + 1
    return data, mails[-1]


async def thread_messages(gw: Gateway, thread_id: str) -> list[dict[str, Any]]:
    resp = await gw.client.get(f"/api/v1/threads/{thread_id}/messages", headers=gw.auth())
    assert resp.status == 200
    return list((await resp.json())["messages"])


async def api_message(gw: Gateway, message_id: str) -> dict[str, Any]:
    resp = await gw.client.get(f"/api/v1/messages/{message_id}", headers=gw.auth())
    assert resp.status == 200
    data: dict[str, Any] = await resp.json()
    return data


def clear_forms(secret: str) -> list[bytes]:
    """How a plaintext could sit in a document: UTF-8, UTF-16, base64."""
    utf8 = secret.encode("utf-8")
    b64 = base64.b64encode(utf8)
    return [utf8, secret.encode("utf-16-le"), b64[: len(b64) - 4]]


async def bson_of(gw: Gateway, *collections: str) -> list[tuple[str, bytes]]:
    names = collections or tuple(await gw.store.collection_names())
    return [(name, bson.encode(doc)) for name in names async for doc in gw.store.collection(name).find({})]


async def assert_not_in_clear(gw: Gateway, secrets: list[str], *collections: str) -> None:
    for name, raw in await bson_of(gw, *collections):
        for secret in secrets:
            for form in clear_forms(secret):
                assert form not in raw, (secret, name)


def assert_link_only_ack(ack: EmailMessage, *, reply_mid: str, previous_token: str, reply_phrase: str) -> str:
    """The answer to a reply: neutral, a link and nothing else; returns its fresh reply token."""
    assert str(ack["Subject"]) == ACK_SUBJECT
    assert str(ack["Auto-Submitted"]) == "auto-replied"
    assert str(ack["In-Reply-To"]) == reply_mid
    assert str(ack["X-Auto-Response-Suppress"]) == "All"
    parts = text_parts(ack)
    assert parts and all(LINK_RE.search(p) for p in parts)
    raw = ack.as_string()
    assert reply_phrase not in raw
    for p in parts:
        assert reply_phrase not in p
    token = reply_token_of(ack)
    assert token != previous_token
    return token


# -- 1. every client shape lands stripped, sealed, and is answered with a link ---------------------


@pytest.mark.parametrize("shape", sorted(CLIENT_SHAPES))
async def test_email_reply_in_each_client_shape_is_stripped_sealed_and_answered_with_a_link(gw, shape):
    expected, quoted, phrase = CLIENT_SHAPES[shape]
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)
    token = reply_token_of(notice)
    mid = f"<{uuid.uuid4().hex}@client.test>"
    raw = readdress(fixture(shape), to=reply_address(token), message_id=mid, in_reply_to=str(notice["Message-ID"]))
    assert (await deliver(port, reply_address(token), raw)).startswith("2.0.0")
    await gw.drain()

    messages = await thread_messages(gw, sent["thread_id"])
    inbound = [m for m in messages if m["direction"] == "inbound"]
    assert len(inbound) == 1, messages
    reply = inbound[0]
    assert reply["channel"] == "email" and reply["secure"] is True
    assert reply["body"] == expected
    assert quoted not in reply["body"]
    assert reply["flags"] == []  # From is the contact's address: no mismatch

    # Sealed: the phrase is nowhere in the clear (messages, the raw event, anything else).
    await assert_not_in_clear(gw, [phrase, expected])
    event = await gw.store.inbound_events.find_one({"kind": "email"})
    assert event["state"] == "done" and "raw" not in event and "payload" not in event

    # Exactly one answer, link-only.
    mails = gw.mail_to(CLIENT_EMAIL)
    assert len(mails) == 2
    new_token = assert_link_only_ack(mails[1], reply_mid=mid, previous_token=token, reply_phrase=phrase)
    scope = await gw.store.reply_tokens.find_one({"token_hash": token_hash(new_token)})
    assert scope["thread_id"] == sent["thread_id"]

    # Staff: one unread, a neutral preview.
    thread = await gw.store.threads.find_one({"_id": sent["thread_id"]})
    assert thread["unread_staff"] == 1 and thread["preview"] == "New reply" and thread["secure"] is True


async def test_the_ack_link_opens_the_thread_with_the_reply_and_staff_see_only_a_neutral_preview(gw):
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw, body="Your biopsy result is ready.")
    token = reply_token_of(notice)
    raw = readdress(fixture("gmail_reply.eml"), to=reply_address(token))
    await deliver(port, reply_address(token), raw)
    await gw.drain()
    ack = gw.mail_to()[-1]
    link = LINK_RE.search(text_parts(ack)[0])
    assert link
    assert (await gw.open_link(link.group(1))).status == 303
    page = await (await gw.client.get("/s/thread")).text()
    assert "Your biopsy result is ready." in page
    assert "bring the signed form" in page and "Reply to confirm" not in page

    browser, _ = await signed_in(gw)
    async with browser as b:
        inbox = await (await b.get("/staff/")).text()
        assert "New reply" in inbox and "bring the signed form" not in inbox
        page = await (await b.get(f"/staff/threads/{sent['thread_id']}")).text()
        assert "bring the signed form" in page
    entries = await audit_entries(gw, "message.received")
    assert entries[-1]["detail"]["channel"] == "email" and entries[-1]["thread_id"] == sent["thread_id"]


# -- 2. a standard thread ------------------------------------------------------------------------


async def test_standard_thread_plain_reply_is_stored_without_an_answer(gw):
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw, secure=False)
    assert NOTICE in text_parts(notice)[0]  # standard: the content travels
    rcpt = reply_address(reply_token_of(notice))
    await deliver(port, rcpt, simple_reply(rcpt, "Thanks, see you then."))
    await gw.drain()
    [reply] = [m for m in await thread_messages(gw, sent["thread_id"]) if m["direction"] == "inbound"]
    assert reply["body"] == "Thanks, see you then." and reply["secure"] is False and reply["channel"] == "email"
    assert len(gw.mail_to()) == 1  # no answer
    thread = await gw.store.threads.find_one({"_id": sent["thread_id"]})
    assert thread["secure"] is False and thread["unread_staff"] == 1


@pytest.mark.parametrize("sensitive", ["My SSN is 123-45-6789", "Card: 4111 1111 1111 1111, exp 12/29"])
async def test_standard_thread_reply_with_sensitive_data_makes_it_secure_and_is_answered_with_a_link(gw, sensitive):
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw, secure=False)
    token = reply_token_of(notice)
    rcpt = reply_address(token)
    mail = simple_reply(rcpt, sensitive)
    await deliver(port, rcpt, mail)
    await gw.drain()
    [reply] = [m for m in await thread_messages(gw, sent["thread_id"]) if m["direction"] == "inbound"]
    assert reply["body"] == sensitive and reply["secure"] is True
    assert "classified_sensitive" in reply["flags"]
    thread = await gw.store.threads.find_one({"_id": sent["thread_id"]})
    assert thread["secure"] is True
    mails = gw.mail_to()
    assert len(mails) == 2
    assert_link_only_ack(mails[1], reply_mid=str(mail["Message-ID"]), previous_token=token,
                         reply_phrase=sensitive.split()[-1])
    digits = re.sub(r"\D", "", sensitive)[:9]
    await assert_not_in_clear(gw, [sensitive, digits], "messages", "inbound_events", "outbox", "audit")


# -- 3. auto-replies and bounces --------------------------------------------------------------------


AUTO_HEADERS = {
    "auto-submitted": {"Auto-Submitted": "auto-replied"},
    "auto-generated": {"Auto-Submitted": "auto-generated"},
    "x-autoreply": {"X-Autoreply": "yes"},
    "x-autorespond": {"X-Autorespond": "Out of office"},
    "precedence-bulk": {"Precedence": "bulk"},
    "precedence-junk": {"Precedence": "junk"},
    "list-id": {"List-Id": "News <news.lists.example.com>"},
}


async def assert_stored_as_auto_reply_only(gw: Gateway, thread_id: str, mails_before: int) -> None:
    inbound = [m for m in await thread_messages(gw, thread_id) if m["direction"] == "inbound"]
    assert len(inbound) == 1
    assert "auto_reply" in inbound[0]["flags"]
    assert len(gw.mail_to()) == mails_before  # never answered
    assert await gw.store.outbox.count_documents({"template": "inbound_ack"}) == 0


@pytest.mark.parametrize("kind", sorted(AUTO_HEADERS))
async def test_auto_replies_are_stored_flagged_and_never_answered(gw, kind):
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    # Even one that looks sensitive: an auto-reply is never answered.
    await deliver(port, rcpt, simple_reply(rcpt, "I am away. Urgent: SSN 123-45-6789", headers=AUTO_HEADERS[kind]))
    await gw.drain()
    await assert_stored_as_auto_reply_only(gw, sent["thread_id"], 1)


@pytest.mark.parametrize("shape", ["out_of_office.eml", "list_bulk.eml"])
async def test_auto_reply_fixtures_are_stored_flagged_and_never_answered(gw, shape):
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    await deliver(port, rcpt, readdress(fixture(shape), to=rcpt))
    await gw.drain()
    await assert_stored_as_auto_reply_only(gw, sent["thread_id"], 1)


def dsn_for(original_message_id: str, rcpt: str, status: str = "5.1.1") -> bytes:
    """A Postfix-shaped delivery status notification for the gateway's notification."""
    raw = fixture("dsn_bounce.eml")
    raw = raw.replace(b"<notice.51@hushlink.example.org>", original_message_id.encode())
    raw = raw.replace(b"Status: 5.1.1", b"Status: " + status.encode())
    return readdress(raw, to=rcpt, frm=None)


async def test_bounce_marks_the_original_notification_failed_with_the_dsn_status(gw):
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)
    assert (await api_message(gw, sent["id"]))["status"] == "sent"
    rcpt = reply_address(reply_token_of(notice))
    # Relays send bounces to the envelope sender: it is the reply address, so they come back here.
    assert gw.mail.messages[-1]["mail_from"] == rcpt
    await deliver(port, rcpt, dsn_for(str(notice["Message-ID"]), rcpt, "5.1.1"), mail_from="")
    await gw.drain()
    data = await api_message(gw, sent["id"])
    assert data["status"] == "failed" and data["error_code"] == "5.1.1"
    last = data["status_history"][-1]
    assert (last["status"], last["error_code"]) == ("failed", "5.1.1")
    assert [m["direction"] for m in await thread_messages(gw, sent["thread_id"])] == ["outbound"]  # nothing stored
    assert len(gw.mail_to()) == 1  # nothing answered
    assert "message.bounced" in await gw.audit_actions()


async def test_with_return_path_from_the_envelope_sender_is_the_from_address(gw):
    """For relays that accept only their verified senders (config smtp.return_path = "from")."""
    from dataclasses import replace

    from gateway.runtime.app import build_dispatcher

    cfg = gw.services.config
    services = replace(gw.services, config=replace(cfg, smtp=replace(cfg.smtp, return_path="from")))
    dispatcher = build_dispatcher(services, gw.runtime.sms, gw.runtime.email, owner="from-relay")
    await gw.api_send(channel="email", to={"email": CLIENT_EMAIL}, body=NOTICE)
    assert await dispatcher.run_once() == 1
    got = gw.mail.messages[-1]
    assert got["mail_from"] == got["message"]["From"].addresses[0].addr_spec == ORG_EMAIL
    assert REPLY_RE.search(str(got["message"]["Reply-To"]))  # replies still come back by the reply address


async def test_mail_from_the_null_sender_is_never_answered_even_when_it_is_no_report(gw):
    """A qmail-style plain-text bounce: no report to read, but MAIL FROM:<> says it is automatic.
    Answering it would mail a dead address, whose bounce would come back here to be answered."""
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    bounce = simple_reply(rcpt, "Hi. This is the qmail-send program. I'm afraid I wasn't able to deliver your "
                                "message to the following addresses.", frm="MAILER-DAEMON@mx.client.test")
    assert (await deliver(port, rcpt, bounce, mail_from="")).startswith("2.0.0")
    await gw.drain()
    inbound = [m for m in await thread_messages(gw, sent["thread_id"]) if m["direction"] == "inbound"]
    assert len(inbound) == 1 and "auto_reply" in inbound[0]["flags"]
    assert len(gw.mail_to()) == 1  # nothing answered


async def test_an_exchange_style_bounce_with_the_original_attached_also_marks_it_failed(gw):
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    raw = fixture("dsn_bounce_rfc822.eml").replace(b"<notice.52@hushlink.example.org>",
                                                   str(notice["Message-ID"]).encode())
    await deliver(port, rcpt, readdress(raw, to=rcpt, frm=None), mail_from="")
    await gw.drain()
    data = await api_message(gw, sent["id"])
    assert data["status"] == "failed" and data["error_code"] == "5.1.10"


async def test_an_unmatched_bounce_changes_nothing(gw):
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    before = await api_message(gw, sent["id"])
    await deliver(port, rcpt, dsn_for("<unknown.1@elsewhere.example>", rcpt), mail_from="")
    await gw.drain()
    assert await api_message(gw, sent["id"]) == before
    assert [m["direction"] for m in await thread_messages(gw, sent["thread_id"])] == ["outbound"]
    assert len(gw.mail_to()) == 1
    event = await gw.store.inbound_events.find_one({"kind": "email"})
    assert event["state"] == "bounce_unmatched"
    assert "message.bounced" not in await gw.audit_actions()


async def test_a_bounce_cannot_fail_another_contacts_message(gw):
    """A DSN on contact A's reply address naming contact B's notification changes nothing."""
    port = await gw.start_smtp()
    _, notice_a = await email_thread(gw)
    sent_b, notice_b = await email_thread(gw, to=OTHER_EMAIL)
    rcpt = reply_address(reply_token_of(notice_a))
    await deliver(port, rcpt, dsn_for(str(notice_b["Message-ID"]), rcpt), mail_from="")
    await gw.drain()
    assert (await api_message(gw, sent_b["id"]))["status"] == "sent"


# -- 4 and 7. forged senders ------------------------------------------------------------------------


async def test_spoofed_from_on_a_valid_token_lands_only_in_that_thread_flagged_and_sealed(gw):
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)
    token = reply_token_of(notice)
    rcpt = reply_address(token)
    body = "Please send my records to this new address. SPOOF-7731"
    await deliver(port, rcpt, simple_reply(rcpt, body, frm="mallory@attacker.test"), mail_from="mallory@attacker.test")
    await gw.drain()
    [reply] = [m for m in await thread_messages(gw, sent["thread_id"]) if m["direction"] == "inbound"]
    assert reply["body"] == body and "sender_mismatch" in reply["flags"] and reply["secure"] is True
    assert await gw.store.threads.count_documents({}) == 1
    assert await gw.store.messages.count_documents({}) == 2
    await assert_not_in_clear(gw, ["SPOOF-7731", "mallory@attacker.test"])
    # The answer goes to the contact's address on file, never to the forged From.
    assert gw.mail_to("mallory@attacker.test") == []
    assert len(gw.mail_to()) == 2
    entries = await audit_entries(gw, "message.received")
    assert entries[-1]["detail"]["sender_mismatch"] is True
    browser, _ = await signed_in(gw)
    async with browser as b:
        resp = await b.get(f"/staff/threads/{sent['thread_id']}")
        page = await resp.text()
    assert resp.status == 200, (resp.status, resp.headers.get("Location"), page[:300])
    assert "sender_mismatch" in page


async def test_reply_token_of_contact_a_with_from_of_contact_b_stays_in_as_thread(gw):
    port = await gw.start_smtp()
    sent_a, notice_a = await email_thread(gw)
    sent_b, _ = await email_thread(gw, to=OTHER_EMAIL)
    assert sent_a["thread_id"] != sent_b["thread_id"]
    thread_b_before = await gw.store.threads.find_one({"_id": sent_b["thread_id"]})
    rcpt = reply_address(reply_token_of(notice_a))
    await deliver(port, rcpt, simple_reply(rcpt, "From B, on A's address", frm=OTHER_EMAIL), mail_from=OTHER_EMAIL)
    await gw.drain()
    [reply] = [m for m in await thread_messages(gw, sent_a["thread_id"]) if m["direction"] == "inbound"]
    assert reply["body"] == "From B, on A's address" and "sender_mismatch" in reply["flags"]
    assert [m["direction"] for m in await thread_messages(gw, sent_b["thread_id"])] == ["outbound"]
    assert await gw.store.threads.find_one({"_id": sent_b["thread_id"]}) == thread_b_before
    # The answer goes to A (the thread's contact), B gets nothing new.
    assert len(gw.mail_to(CLIENT_EMAIL)) == 2 and len(gw.mail_to(OTHER_EMAIL)) == 1


# -- 5. duplicates ------------------------------------------------------------------------------------


async def test_the_same_message_id_delivered_twice_is_one_message_and_one_answer(gw):
    port = await gw.start_smtp()
    sent, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    mail = simple_reply(rcpt, "Yes, Tuesday works.")
    for _ in range(2):
        assert (await deliver(port, rcpt, mail)).startswith("2.0.0")
        await gw.drain()
    inbound = [m for m in await thread_messages(gw, sent["thread_id"]) if m["direction"] == "inbound"]
    assert len(inbound) == 1
    assert len(gw.mail_to()) == 2  # the notice and one answer


async def test_the_same_reply_sent_to_two_reply_addresses_of_one_thread_is_one_message(gw):
    """Reply-all to two notices of one thread: one message, one answer."""
    port = await gw.start_smtp()
    sent, first = await email_thread(gw)
    _, second = await email_thread(gw, body="A second note.")
    rcpts = [reply_address(reply_token_of(first)), reply_address(reply_token_of(second))]
    mail = simple_reply(rcpts[0], "Got both, thanks.")
    await deliver(port, rcpts, mail)
    await gw.drain()
    inbound = [m for m in await thread_messages(gw, sent["thread_id"]) if m["direction"] == "inbound"]
    assert len(inbound) == 1
    assert len(gw.mail_to()) == 3


# -- 6. attachments ------------------------------------------------------------------------------------


def with_attachments(rcpt: str, files: list[tuple[str, str, bytes]], body: str = "Files attached.") -> EmailMessage:
    msg = simple_reply(rcpt, body)
    for filename, ctype, data in files:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg


async def reply_with(gw: Gateway, port: int, message_factory: Any, *, to: str = CLIENT_EMAIL
                     ) -> tuple[dict[str, Any], str]:
    """A secure email thread with a reply from the client; returns (API send, the ack's link token)."""
    sent, notice = await email_thread(gw, to=to)
    rcpt = reply_address(reply_token_of(notice))
    await deliver(port, rcpt, message_factory(rcpt), mail_from=to)
    await gw.drain()
    ack = gw.mail_to(to)[-1]
    link = LINK_RE.search(text_parts(ack)[0])
    assert link
    return sent, link.group(1)


async def attachments_of(gw: Gateway, thread_id: str) -> list[dict[str, Any]]:
    return [d async for d in gw.store.attachments.find({"thread_id": thread_id}).sort("_id", 1)]


async def test_attachment_is_sealed_and_the_inline_logo_is_not_an_attachment(gw):
    port = await gw.start_smtp()
    sent, _ = await reply_with(gw, port, lambda rcpt: readdress(fixture("attachment_reply.eml"), to=rcpt))
    [att] = await attachments_of(gw, sent["thread_id"])
    assert att["org_id"] == gw.org.id and att["content_type"] == "application/pdf" and att["size"] == 131
    [reply] = [m for m in await thread_messages(gw, sent["thread_id"]) if m["direction"] == "inbound"]
    assert att["message_id"] == reply["id"]
    pdf = base64.b64decode(b"JVBERi0xLjQKJeLjz9MKMSAwIG9iajw8L1R5cGUvQ2F0YWxvZy9QYWdlcyAyIDAgUj4+ZW5kb2Jq")
    for _, raw in await bson_of(gw):
        assert b"%PDF-1.4" not in raw and pdf[:40] not in raw and b"JVBERi0xLjQK" not in raw
        assert "Einverständnis".encode() not in raw
    opened = await gw.services.vault.open_bytes(gw.org.id, "attachments", att["_id"], "data", att["data"])
    assert opened.startswith(b"%PDF-1.4") and len(opened) == 131


async def test_attachments_over_the_count_cap_are_dropped_and_the_message_flagged(gw):
    port = await gw.start_smtp()
    files = [(f"scan-{n}.png", "image/png", b"\x89PNG-" + bytes([n]) * 50) for n in range(12)]
    sent, _ = await reply_with(gw, port, lambda rcpt: with_attachments(rcpt, files))
    stored = await attachments_of(gw, sent["thread_id"])
    assert len(stored) == 10
    [reply] = [m for m in await thread_messages(gw, sent["thread_id"]) if m["direction"] == "inbound"]
    assert "attachments_dropped:2" in reply["flags"]


async def test_an_attachment_over_the_size_cap_is_dropped_and_the_message_flagged(gw, monkeypatch):
    import inbound.email_reply as email_reply

    monkeypatch.setattr(email_reply, "MAX_ATTACHMENT_BYTES", 1000)
    port = await gw.start_smtp()
    files = [("small.pdf", "application/pdf", b"%PDF-small" * 10), ("big.pdf", "application/pdf", b"B" * 1001)]
    sent, _ = await reply_with(gw, port, lambda rcpt: with_attachments(rcpt, files))
    stored = await attachments_of(gw, sent["thread_id"])
    assert [a["size"] for a in stored] == [100]
    [reply] = [m for m in await thread_messages(gw, sent["thread_id"]) if m["direction"] == "inbound"]
    assert "attachments_dropped:1" in reply["flags"]


SERVED_AS = [
    ("scan.png", "image/png", b"\x89PNG\r\n\x1a\n-png-bytes", "image/png"),
    ("photo.jpg", "image/jpeg", b"\xff\xd8\xff-jpeg-bytes", "image/jpeg"),
    ("letter.pdf", "application/pdf", b"%PDF-1.4 letter", "application/pdf"),
    ("page.html", "text/html", b"<script>alert(1)</script>", "application/octet-stream"),
    ("logo.svg", "image/svg+xml", b"<svg onload='alert(1)'/>", "application/octet-stream"),
    ("notes.txt", "text/plain", b"plain notes", "application/octet-stream"),
    ("run.exe", "application/x-msdownload", b"MZ-exe", "application/octet-stream"),
]


def assert_download(resp: Any, body: bytes, data: bytes, served_as: str) -> None:
    assert resp.status == 200
    assert body == data
    assert resp.headers["Content-Type"].split(";")[0] == served_as
    assert resp.headers["Content-Disposition"].startswith("attachment;")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-store"
    assert "sandbox" in resp.headers["Content-Security-Policy"]


async def test_client_downloads_attachments_of_their_own_thread_only(gw):
    port = await gw.start_smtp()
    files = [(name, ctype, data) for name, ctype, data, _ in SERVED_AS]
    sent, link = await reply_with(gw, port, lambda rcpt: with_attachments(rcpt, files))
    other, _ = await reply_with(gw, port, lambda rcpt: with_attachments(rcpt, [("b.pdf", "application/pdf", b"%B")]),
                                to=OTHER_EMAIL)
    [foreign] = await attachments_of(gw, other["thread_id"])
    stored = await attachments_of(gw, sent["thread_id"])
    assert len(stored) == len(SERVED_AS)

    # No session: nothing.
    assert (await gw.client.get(f"/s/attachments/{stored[0]['_id']}")).status in (401, 404)

    assert (await gw.open_link(link)).status == 303
    page = await (await gw.client.get("/s/thread")).text()
    for att, (name, _, data, served_as) in zip(stored, SERVED_AS, strict=True):
        assert f'href="/s/attachments/{att["_id"]}"' in page and name in page
        resp = await gw.client.get(f"/s/attachments/{att['_id']}")
        assert_download(resp, await resp.read(), data, served_as)
    # Another client's attachment, a made-up id, a malformed one: 404 alike.
    for aid in (foreign["_id"], stored[0]["_id"].split(":")[0] + ":99", "nope", "0" * 24):
        assert (await gw.client.get(f"/s/attachments/{aid}")).status == 404, aid
    viewed = await audit_entries(gw, "attachment.viewed")
    assert len(viewed) == len(SERVED_AS)
    assert {e["actor"]["kind"] for e in viewed} == {"client"}
    assert all(e["thread_id"] == sent["thread_id"] for e in viewed)


async def test_non_ascii_attachment_names_are_sent_safely(gw):
    port = await gw.start_smtp()
    sent, link = await reply_with(gw, port, lambda rcpt: readdress(fixture("attachment_reply.eml"), to=rcpt))
    [att] = await attachments_of(gw, sent["thread_id"])
    assert (await gw.open_link(link)).status == 303
    resp = await gw.client.get(f"/s/attachments/{att['_id']}")
    assert resp.status == 200
    disposition = resp.headers["Content-Disposition"]
    assert disposition.isascii() and "\r" not in disposition and "\n" not in disposition
    assert "filename*=UTF-8''Einverst%C3%A4ndnis%20signed.pdf" in disposition


async def test_staff_view_attachments_of_the_thread_org_scoped_and_audited(gw):
    port = await gw.start_smtp()
    files = [(name, ctype, data) for name, ctype, data, _ in SERVED_AS[:4]]
    sent, _ = await reply_with(gw, port, lambda rcpt: with_attachments(rcpt, files))
    other, _ = await reply_with(gw, port, lambda rcpt: with_attachments(rcpt, [("b.pdf", "application/pdf", b"%B")]),
                                to=OTHER_EMAIL)
    stored = await attachments_of(gw, sent["thread_id"])
    [foreign] = await attachments_of(gw, other["thread_id"])
    tid = sent["thread_id"]

    # Signed out: sent to the sign-in page, nothing served.
    async with Browser(gw) as anon:
        resp = await anon.get(f"/staff/threads/{tid}/attachments/{stored[0]['_id']}")
        assert resp.status == 303 and resp.headers["Location"].startswith("/staff/login")

    browser, member = await signed_in(gw)
    async with browser as b:
        page = await (await b.get(f"/staff/threads/{tid}")).text()
        for att, (name, _, data, served_as) in zip(stored, SERVED_AS[:4], strict=True):
            assert f'href="/staff/threads/{tid}/attachments/{att["_id"]}"' in page and name in page
            resp = await b.get(f"/staff/threads/{tid}/attachments/{att['_id']}")
            assert_download(resp, await resp.read(), data, served_as)
        # Another thread's attachment through this thread's URL, unknown and malformed ids: 404, audited.
        denied_before = len(await audit_entries(gw, "authz.deny"))
        for aid in (foreign["_id"], stored[0]["_id"].split(":")[0] + ":99", "nope"):
            assert (await b.get(f"/staff/threads/{tid}/attachments/{aid}")).status == 404, aid
        assert len(await audit_entries(gw, "authz.deny")) == denied_before + 3
        # The other thread's attachment through its own thread works (same org).
        resp = await b.get(f"/staff/threads/{other['thread_id']}/attachments/{foreign['_id']}")
        assert resp.status == 200
    viewed = [e for e in await audit_entries(gw, "attachment.viewed") if e["actor"]["kind"] == "staff"]
    assert len(viewed) == len(stored) + 1 and all(e["actor"]["id"] == member.id for e in viewed)


async def test_staff_of_another_org_cannot_view_an_attachment(gw):
    port = await gw.start_smtp()
    sent, _ = await reply_with(gw, port, lambda rcpt: with_attachments(rcpt, [("a.pdf", "application/pdf", b"%A")]))
    [att] = await attachments_of(gw, sent["thread_id"])
    other_org = await gw.services.orgs.create("Lakeside Dental", "+15005550007")
    member = await make_staff(gw, "outsider@lakeside.test", "admin", org_id=other_org.id)
    async with Browser(gw) as b:
        await b.login(member.email)
        resp = await b.get(f"/staff/threads/{sent['thread_id']}/attachments/{att['_id']}")
        assert resp.status == 404
        assert b"%A" not in await resp.read()
    assert await audit_entries(gw, "attachment.viewed") == []


async def test_hostile_attachment_names_render_escaped_in_both_portals(gw):
    hostile = '<img src=x onerror="alert(1)">.png'
    port = await gw.start_smtp()
    sent, link = await reply_with(gw, port, lambda rcpt: with_attachments(rcpt, [(hostile, "image/png", b"\x89PNG")]))
    [att] = await attachments_of(gw, sent["thread_id"])
    assert (await gw.open_link(link)).status == 303
    client_page = await (await gw.client.get("/s/thread")).text()
    browser, _ = await signed_in(gw)
    async with browser as b:
        staff_page = await (await b.get(f"/staff/threads/{sent['thread_id']}")).text()
        resp = await b.get(f"/staff/threads/{sent['thread_id']}/attachments/{att['_id']}")
    for page in (client_page, staff_page):
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;.png" in page
        assert "<img" not in page
    disposition = resp.headers["Content-Disposition"]
    assert '"' not in disposition.split('filename="', 1)[1].split('";', 1)[0]
    assert "%3Cimg%20src%3Dx%20onerror%3D%22alert%281%29%22%3E.png" in disposition


# -- 8. the database goes down during DATA -------------------------------------------------------------


async def test_database_down_at_data_gives_451_so_the_sender_retries(outage_gw):
    gw, server = outage_gw
    port = await gw.start_smtp()
    _, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    smtp = await smtp_client(port)
    assert (await smtp.mail(CLIENT_EMAIL)).code == 250
    assert (await smtp.rcpt(rcpt)).code == 250
    server.stop()
    with pytest.raises(aiosmtplib.SMTPDataError) as err:
        await smtp.data(simple_reply(rcpt, "During the outage").as_bytes())
    assert err.value.code == 451 and "4.3.0" in err.value.message
    # A new recipient check now is a transient refusal too: the sender keeps the mail and retries.
    await smtp.rset()
    await smtp.mail(CLIENT_EMAIL)
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await smtp.rcpt(rcpt)
    assert refused.value.code == 451
    await smtp.quit()


# -- 9. outbound ---------------------------------------------------------------------------------------


async def test_secure_email_to_a_contact_who_opted_out_of_email_is_refused(gw):
    await email_thread(gw)
    contact = await gw.services.contacts.by_email(gw.org.id, CLIENT_EMAIL)
    assert await gw.services.contacts.set_consent(gw.org.id, contact.id, "email", "opted_out", "test")
    data = await gw.api_send(channel="email", to={"email": CLIENT_EMAIL}, body="Secure note", secure=True, expect=422)
    assert data["error"]["code"] == "opted_out"
    await gw.drain()
    assert len(gw.mail_to()) == 1
    assert await gw.store.messages.count_documents({}) == 1


async def test_opt_out_between_queueing_and_sending_fails_the_message_without_mail(gw):
    data = await gw.api_send(channel="email", to={"email": CLIENT_EMAIL}, body="Secure note", secure=True)
    contact = await gw.services.contacts.by_email(gw.org.id, CLIENT_EMAIL)
    await gw.services.contacts.set_consent(gw.org.id, contact.id, "email", "opted_out", "test")
    await gw.drain()
    assert gw.mail_to() == []
    message = await api_message(gw, data["id"])
    assert message["status"] == "failed" and message["error_code"] == "opted_out"


@pytest.mark.parametrize("stage", ["RCPT", "DATA"])
async def test_transient_relay_failure_is_retried_after_backoff_and_delivered_once(gw, stage):
    gw.mail.reject_next(451, "4.3.0 try again later", stage=stage)
    data = await gw.api_send(channel="email", to={"email": CLIENT_EMAIL}, body="Secure note", secure=True)
    await gw.drain()
    assert gw.mail_to() == []
    job = await gw.store.outbox.find_one({"message_id": data["id"]})
    assert job["state"] == "pending" and job["last_error"]["code"] == "smtp_4xx" and job["attempts"] == 1
    assert (await api_message(gw, data["id"]))["status"] == "queued"
    await gw.drain()  # not due yet: nothing happens
    assert gw.mail_to() == []
    gw.clock.advance((job["next_attempt_at"] - gw.clock.now()).total_seconds() + 0.001)
    await gw.drain()
    [mail] = gw.mail_to()
    # The retry is the same mail: its Message-ID was fixed when the job was queued.
    assert str(mail["Message-ID"]).startswith("<" + job["mail_key"] + "@")
    job = await gw.store.outbox.find_one({"_id": job["_id"]})
    assert job["state"] == "sent" and job["attempts"] == 2
    assert (await api_message(gw, data["id"]))["status"] == "sent"
    gw.clock.advance(3600)
    await gw.drain()
    assert len(gw.mail_to()) == 1


async def test_permanent_relay_refusal_fails_the_message_visibly(gw):
    gw.mail.reject_next(550, f"5.1.1 <{CLIENT_EMAIL}>: user unknown", stage="RCPT")
    data = await gw.api_send(channel="email", to={"email": CLIENT_EMAIL}, body="Secure note", secure=True)
    await gw.drain()
    gw.clock.advance(3600)
    await gw.drain()
    assert gw.mail_to() == []
    message = await api_message(gw, data["id"])
    assert message["status"] == "failed" and message["error_code"] == "smtp_5xx"
    job = await gw.store.outbox.find_one({"message_id": data["id"]})
    assert job["state"] == "failed" and "link_token" not in job and "reply_token" not in job
    thread = await gw.store.threads.find_one({"_id": data["thread_id"]})
    assert thread["delivery_problem"]["reason_code"] == "bounced"
    await assert_not_in_clear(gw, [CLIENT_EMAIL], "outbox", "messages", "audit")
