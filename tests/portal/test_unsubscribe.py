"""Email opt-out: every mail to a client carries a one-click List-Unsubscribe link (RFC 8058) that
opts the contact out of email without signing in; GET changes nothing; staff change consent by
hand with a reason (audited, the note sealed)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import bson

from gateway.security.tokens import token_hash
from tests.inbound.test_email_replies import email_thread
from tests.portal.test_staff_support import audit_entries, signed_in
from tests.support.harness import CLIENT_EMAIL, CLIENT_PHONE, PUBLIC_URL, Gateway

UNSUB_RE = re.compile(r"^<" + re.escape(PUBLIC_URL) + r"/u/([A-Za-z0-9_-]{43})>$")
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def unsubscribe_token(mail: Any) -> str:
    found = UNSUB_RE.match(str(mail["List-Unsubscribe"]).strip())
    assert found, mail["List-Unsubscribe"]
    assert str(mail["List-Unsubscribe-Post"]).strip() == "List-Unsubscribe=One-Click"
    return found.group(1)


async def consent(gw: Gateway, channel: str = "email") -> dict[str, Any]:
    contact = await gw.services.contacts.by_email(gw.org.id, CLIENT_EMAIL) if channel == "email" else \
        await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    assert contact is not None
    return dict(contact.consent.get(channel) or {})


async def one_click(gw: Gateway, token: str, data: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    """POST as a mail provider does (RFC 8058 3.2): no cookies, no CSRF token, no Origin."""
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gw.server_url + f"/u/{token}", data=data if data is not None else ONE_CLICK,
                                  allow_redirects=False)
        await resp.read()
        return resp


async def test_every_mail_to_a_client_carries_a_one_click_unsubscribe_link(gw: Gateway) -> None:
    _, secure_notice = await email_thread(gw, secure=True)
    gw.clock.advance(60)
    _, standard = await email_thread(gw, secure=False, body="See you on Tuesday.")
    tokens = {unsubscribe_token(secure_notice), unsubscribe_token(standard)}
    assert len(tokens) == 2  # one per mail
    # Only the SHA-256 is stored; the token is in no document (the outbox above all) in the clear.
    for token in tokens:
        assert await gw.store.reply_tokens.count_documents({"unsubscribe_hash": token_hash(token)}) == 1
        for name in await gw.store.collection_names():
            async for doc in gw.store.collection(name).find({}):
                assert token.encode() not in bson.encode(doc), name


async def test_one_click_post_opts_the_contact_out_of_email_without_signing_in(gw: Gateway) -> None:
    _, mail = await email_thread(gw)
    token = unsubscribe_token(mail)
    resp = await one_click(gw, token)
    assert resp.status == 200
    body = await resp.text()
    assert CLIENT_EMAIL not in body and "Riverside" not in body  # the answer names nobody
    state = await consent(gw)
    assert state["state"] == "opted_out" and state["source"] == "list_unsubscribe"
    [entry] = await audit_entries(gw, "consent.opt_out")
    assert entry["detail"] == {"channel": "email", "source": "list_unsubscribe"}
    assert entry["actor"]["kind"] == "client"
    # Repeating it (providers retry) changes nothing more.
    assert (await one_click(gw, token)).status == 200
    assert len(await audit_entries(gw, "consent.opt_out")) == 1
    # And no more mail goes out to them.
    refused = await gw.api_send(channel="email", to={"email": CLIENT_EMAIL}, body="Another note", expect=422)
    assert refused["error"]["code"] == "opted_out"


async def test_get_shows_a_button_and_changes_nothing(gw: Gateway) -> None:
    _, mail = await email_thread(gw)
    token = unsubscribe_token(mail)
    resp = await gw.client.get(f"/u/{token}")
    html = await resp.text()
    assert resp.status == 200
    assert f'action="/u/{token}"' in html and 'name="List-Unsubscribe" value="One-Click"' in html
    assert resp.headers["Referrer-Policy"] == "no-referrer" and resp.headers["Cache-Control"] == "no-store"
    assert "state" not in await consent(gw)
    assert await audit_entries(gw, "consent.opt_out") == []


async def test_a_post_without_the_one_click_body_or_with_an_unknown_token_changes_nothing(gw: Gateway) -> None:
    _, mail = await email_thread(gw)
    token = unsubscribe_token(mail)
    assert (await one_click(gw, token, {"List-Unsubscribe": "yes"})).status == 400
    assert (await one_click(gw, token, {})).status == 400
    unknown = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert (await one_click(gw, unknown)).status == 404
    assert (await one_click(gw, "not-a-token")).status == 404
    assert (await gw.client.get(f"/u/{unknown}")).status == 404
    assert "state" not in await consent(gw)


async def test_staff_alert_mail_carries_no_unsubscribe_link(gw: Gateway) -> None:
    from tests.outbound.test_staff_alert_mail import ADMINS, alert_mail, grant

    s = await grant(gw, admins=ADMINS[:1])
    await gw.drain()
    [mail] = alert_mail(gw, s["before"])
    assert mail["message"]["List-Unsubscribe"] is None and mail["message"]["List-Unsubscribe-Post"] is None
    # (the client's own notice, sent before, did carry one)
    assert gw.mail.messages[s["before"] - 1]["message"]["List-Unsubscribe"] is not None


async def test_staff_change_consent_by_hand_with_a_reason_audited_and_the_note_sealed(gw: Gateway) -> None:
    await gw.api_send(body="Reminder", secure=False)
    contact = await gw.services.contacts.by_phone(gw.org.id, CLIENT_PHONE)
    assert contact is not None
    page = f"/staff/contacts/{contact.id}"
    note = "Called on 3 Dec, asked for no more texts about her therapy"
    browser, member = await signed_in(gw)
    async with browser as b:
        missing = await b.post(page + "/consent", {"channel": "sms", "state": "opted_out", "reason": ""},
                               csrf_from=page)
        assert missing.status == 422 and "choose why consent changes" in await missing.text()
        other = await b.post(page + "/consent", {"channel": "sms", "state": "opted_out", "reason": "other"},
                             csrf_from=page)
        assert other.status == 422
        assert "state" not in await consent(gw, "sms")
        done = await b.post(page + "/consent", {"channel": "sms", "state": "opted_out", "reason": "client_asked",
                                                "note": note}, csrf_from=page)
        assert done.status == 303
        html = await (await b.get(page)).text()
    assert note in html  # shown, opened, to staff on the contact page
    state = await consent(gw, "sms")
    assert state["state"] == "opted_out" and state["source"] == "staff:client_asked"
    [entry] = await audit_entries(gw, "consent.opt_out")
    assert entry["actor"]["id"] == member.id
    assert entry["detail"] == {"channel": "sms", "source": "staff", "reason": "client_asked", "note": True}
    for name in await gw.store.collection_names():  # the note is sealed wherever it is kept
        async for doc in gw.store.collection(name).find({}):
            assert b"therapy" not in bson.encode(doc), name
    refused = await gw.api_send(body="Another reminder", secure=False, expect=422)
    assert refused["error"]["code"] == "opted_out"
