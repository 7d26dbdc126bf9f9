"""The canary, email edition: secure content, link and reply tokens, and the client's address exist
only sealed or hashed, and each mail carries nothing but what it must.

One full loop with real SMTP both ways: an API secure send by email (canary body and name), the
notification through the real SmtpEmailSender to the sink, the client opening its link, the client
replying through the gateway's SMTP listener (canary reply, quoting the notification, with a canary
attachment), the link-only answer, the client opening that and downloading the attachment. Then a
scan of every outbound mail as raw bytes (all headers, all parts decoded), every log line (the
production pipeline: RedactingFilter + JsonFormatter, and caplog after it; our own loggers even
before redaction), and every document of every collection as raw BSON.
"""

from __future__ import annotations

import email
import email.policy
import re
import uuid
from email.message import EmailMessage
from typing import Any

from gateway.messaging.phone import mask_email
from tests.inbound.test_email_replies import (
    deliver,
    reply_address,
    reply_token_of,
    simple_reply,
    text_parts,
)
from tests.support.harness import CLIENT_EMAIL, LINK_RE, REPLY_RE, Gateway
from tests.test_canary import (  # noqa: F401 - logs is a fixture
    assert_database_holds_none,
    assert_logs_hold_none,
    logs,
)


def decoded_views(data: bytes) -> list[str]:
    """Every way a reader (or a relay) sees a raw mail: the bytes, each header decoded, each part decoded."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    views = [data.decode("utf-8", "replace")]
    for part in msg.walk():
        views += [f"{k}: {v}" for k, v in part.items()]
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                views.append(payload.decode("utf-8", "replace"))
    return views


def header_text(msg: EmailMessage) -> str:
    return "\n".join(f"{k}: {v}" for k, v in msg.items())


async def test_email_loop_leaks_no_content_token_or_address(gw: Gateway, logs: dict[str, Any]):  # noqa: F811
    tag = uuid.uuid4().hex[:12]
    canary_api = f"CANARY-MAIL-API-{tag} biopsy result benign"
    canary_reply = f"CANARY-MAIL-REPLY-{tag} my DOB is 1980-02-03"
    canary_name = f"Canarymailname{tag}"
    canary_file = f"CANARY-MAIL-FILE-{tag} lab scan"
    canary_filename = f"canaryscan{tag}.txt"
    canaries = [canary_api, canary_reply, canary_name, canary_file, canary_filename]
    port = await gw.start_smtp()

    # 1. Secure message by API, by email: a link-only notification.
    sent = await gw.api_send(channel="email", to={"email": CLIENT_EMAIL, "name": canary_name}, body=canary_api,
                             secure=True)
    await gw.drain()
    [notice] = gw.mail_to()
    link1 = LINK_RE.search(text_parts(notice)[0])
    assert link1
    token1, reply1 = link1.group(1), reply_token_of(notice)
    assert (await gw.client.get(f"/s/{token1}")).status == 200  # a scanner's GET
    assert (await gw.open_link(token1)).status == 303
    session1 = gw.client.session.cookie_jar.filter_cookies(gw.client.make_url("/"))["hl_client"].value
    assert canary_api in await (await gw.client.get("/s/thread")).text()

    # 2. The client hits Reply: quoted notification (with its link) below, a file attached.
    rcpt = reply_address(reply1)
    quoted = "\n".join("> " + line for line in text_parts(notice)[0].splitlines())
    reply = simple_reply(rcpt, f"{canary_reply}\n\nOn Mon, Riverside Clinic <{rcpt}> wrote:\n{quoted}\n")
    reply.add_attachment(canary_file.encode(), maintype="text", subtype="plain", filename=canary_filename)
    assert (await deliver(port, rcpt, reply)).startswith("2.0.0")
    await gw.drain()

    # 3. The link-only answer; the client opens it and downloads the file.
    mails = gw.mail_to()
    assert len(mails) == 2
    ack = mails[1]
    link2 = LINK_RE.search(text_parts(ack)[0])
    assert link2
    token2, reply2 = link2.group(1), reply_token_of(ack)
    assert len({token1, token2, reply1, reply2}) == 4
    assert (await gw.open_link(token2)).status == 303
    session2 = gw.client.session.cookie_jar.filter_cookies(gw.client.make_url("/"))["hl_client"].value
    page = await (await gw.client.get("/s/thread")).text()
    assert canary_api in page and canary_reply in page and canary_filename in page
    attachment = await gw.store.attachments.find_one({})
    download = await gw.client.get(f"/s/attachments/{attachment['_id']}")
    assert await download.read() == canary_file.encode()

    # Everything is stored: the API opens it.
    api = await gw.client.get(f"/api/v1/threads/{sent['thread_id']}/messages", headers=gw.auth())
    bodies = [(m["channel"], m["body"]) for m in (await api.json())["messages"]]
    assert bodies == [("email", canary_api), ("email", canary_reply)]
    contact = await gw.services.contacts.by_email(gw.org.id, CLIENT_EMAIL)
    assert contact is not None
    revealed = await gw.services.contacts.reveal(contact)
    assert (revealed["email"], revealed["name"]) == (CLIENT_EMAIL, canary_name)

    link_tokens = {token1: 0, token2: 1}  # token -> index of the only mail that may carry it
    reply_tokens = {reply1: 0, reply2: 1}
    sessions = [session1, session2]

    # (a) Every outbound mail, raw: no canary anywhere; a link token only in the body of its
    # mail; a reply token only in its mail's Reply-To; neutral subjects.
    raws = list(gw.mail.messages)
    assert [m["rcpt_tos"] for m in raws] == [[CLIENT_EMAIL], [CLIENT_EMAIL]]
    for i, m in enumerate(raws):
        data: bytes = m["data"]
        msg = m["message"]
        views = decoded_views(data)
        for secret in [*canaries, *sessions]:
            for view in views:
                assert secret not in view, (secret, i)
        headers = header_text(msg)
        body_views = text_parts(msg)
        for token, owner in link_tokens.items():
            assert token not in headers, (token, i)
            if owner == i:
                assert all(token in part for part in body_views), i
            else:
                assert all(token not in view for view in views), (token, i)
        for token, owner in reply_tokens.items():
            if owner == i:
                assert REPLY_RE.search(str(msg["Reply-To"])).group(1) == token
                others = headers.replace(f"Reply-To: {msg['Reply-To']}", "")
                assert token not in others and all(token not in part for part in body_views), i
            else:
                assert all(token not in view for view in views), (token, i)
        assert canary_name not in str(msg["To"]) and "biopsy" not in str(msg["Subject"])
    assert str(raws[0]["message"]["Subject"]) == "New secure message from Riverside Clinic"
    assert str(raws[1]["message"]["Subject"]) == "Riverside Clinic received your reply"

    secrets = [*canaries, *link_tokens, *reply_tokens, *sessions, CLIENT_EMAIL, CLIENT_EMAIL.upper()]

    # (b) Logs: the production pipeline and caplog after it show none of them.
    raw_text = assert_logs_hold_none(logs, secrets, never_even_raw=canaries)
    # Third-party lines did carry a link path and a reply address, so the redaction above was tested.
    assert token1 in raw_text and reply1 in raw_text

    # (c) The database as raw BSON: none of them, and the address only sealed (a masked hint).
    docs = await assert_database_holds_none(gw, secrets, {
        "messages", "contacts", "links", "outbox", "inbound_events", "audit", "sessions", "reply_tokens",
        "attachments", "keys"})
    for name, doc, raw_bson in docs:
        assert re.search(rb"alex@client\.test", raw_bson, re.IGNORECASE) is None, (name, doc.get("_id"))
    [contact_doc] = [doc for name, doc, _ in docs if name == "contacts"]
    assert contact_doc["email_hint"] == mask_email(CLIENT_EMAIL) and isinstance(contact_doc["email"], bytes)
    event = next(doc for name, doc, _ in docs if name == "inbound_events")
    assert event["state"] == "done" and "raw" not in event and "payload" not in event
    for job in (doc for name, doc, _ in docs if name == "outbox"):
        assert job["state"] == "sent" and "link_token" not in job and "reply_token" not in job
