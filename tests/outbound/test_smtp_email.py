"""SmtpEmailSender and the email composer, against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError, ProviderPermanent, ProviderTransient, ValidationError
from gateway.messaging.reply_address import parse_reply_address, reply_address
from gateway.ports import EmailSender, OutgoingEmail
from gateway.security.tokens import new_token
from outbound.compose_email import (
    LINK_TEMPLATES,
    clean_org_name,
    make_message_id,
    render_email,
)
from outbound.smtp_email import DkimSigner, SmtpEmailSender, build_message
from tests.support.smtp_sink import SmtpSink, make_self_signed_cert, trusting_context

FROM = "noreply@acme.example"
TO = "jane.doe@client.example"
REPLY_DOMAIN = "reply.acme.example"
LINK = "https://hushlink.example/s/" + "L" * 43
CANARY = "canary-7f3a diagnosis: hypertension, SSN 078-05-1120"


def notice(*, org: str = "Acme Clinic", template: str = "secure_notice", **changes: Any) -> OutgoingEmail:
    subject, text, html = render_email(template, org_name=org, url=LINK)
    mail = OutgoingEmail(
        from_address=FROM,
        from_name=org,
        to_address=TO,
        subject=subject,
        text=text,
        html=html,
        message_id=make_message_id("acme.example"),
        reply_to=reply_address(new_token(), REPLY_DOMAIN),
    )
    return replace(mail, **changes)


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    # A 7bit part keeps the wire's CRLF line ends; compare texts with "\n".
    return text.get_content().replace("\r\n", "\n"), html.get_content().replace("\r\n", "\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as server:
        yield server


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path)


@pytest.fixture
async def tls_sink(cert: tuple[Path, Path]) -> AsyncIterator[SmtpSink]:
    async with SmtpSink(tls_cert=cert, require_starttls=True) as server:
        yield server


def plain_sender(sink: SmtpSink, **kwargs: object) -> SmtpEmailSender:
    kwargs.setdefault("timeout", 5.0)
    return SmtpEmailSender(sink.host, sink.port, starttls=False, **kwargs)  # type: ignore[arg-type]


# -- a mail as it arrives ---------------------------------------------------------------------


async def test_secure_notice_arrives_with_every_header_and_both_parts(sink: SmtpSink) -> None:
    mail = notice()
    sender: EmailSender = plain_sender(sink)

    returned = await sender.send_email(mail)

    assert returned == mail.message_id
    [got] = sink.messages
    assert got["mail_from"] == FROM
    assert got["rcpt_tos"] == [TO]
    message: EmailMessage = got["message"]
    assert str(message["From"]) == f"Acme Clinic <{FROM}>"
    assert message["From"].addresses[0].addr_spec == FROM
    assert str(message["To"]) == TO
    assert str(message["Subject"]) == "New secure message from Acme Clinic"
    assert str(message["Message-ID"]) == mail.message_id
    assert re.fullmatch(r"<[0-9a-f]{32}@acme\.example>", mail.message_id)
    assert str(message["Reply-To"]) == mail.reply_to
    assert parse_reply_address(str(message["Reply-To"]), REPLY_DOMAIN) is not None
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Auto-Response-Suppress"] == "All"
    assert message["Date"].datetime.tzinfo is not None
    assert message.get_content_type() == "multipart/alternative"
    text, html = parts(message)
    assert LINK in text
    assert f'href="{LINK}"' in html
    assert "Acme Clinic" in text and "Acme Clinic" in html
    assert CANARY not in got["data"].decode("ascii")


@pytest.mark.parametrize("template", sorted(LINK_TEMPLATES))
async def test_link_notices_never_carry_content(sink: SmtpSink, template: str) -> None:
    # A11: a notice has no place for a body, so the content cannot reach it...
    with pytest.raises(ValueError, match="carries no content"):
        render_email(template, org_name="Acme Clinic", url=LINK, body=CANARY)
    # ...and what does go out holds the org name and the link, nothing that names the content.
    await plain_sender(sink).send_email(notice(template=template))
    [got] = sink.messages
    data = got["data"].decode("ascii")
    assert CANARY not in data
    text, html = parts(got["message"])
    assert LINK in text and LINK in html
    assert "Acme Clinic" in str(got["message"]["Subject"])


async def test_standard_message_carries_its_body_escaped_in_html(sink: SmtpSink) -> None:
    body = "Your appointment is on Monday at 10:00.\nBring <your card> & ID."
    subject, text, html = render_email("message", org_name="Acme Clinic", body=body)
    assert subject == "Message from Acme Clinic"
    assert body not in subject

    await plain_sender(sink).send_email(notice(subject=subject, text=text, html=html))

    got_text, got_html = parts(sink.messages[0]["message"])
    assert body in got_text
    assert "Bring &lt;your card&gt; &amp; ID." in got_html
    assert "<your card>" not in got_html


async def test_caller_headers_override_defaults_and_stay_single(sink: SmtpSink) -> None:
    mail = notice(
        template="inbound_ack",
        headers=(("auto-submitted", "auto-replied"), ("In-Reply-To", "<orig@client.example>")),
    )

    await plain_sender(sink).send_email(mail)

    message = sink.messages[0]["message"]
    assert message.get_all("Auto-Submitted") == ["auto-replied"]
    assert message["In-Reply-To"] == "<orig@client.example>"
    assert message["X-Auto-Response-Suppress"] == "All"


async def test_org_name_markup_is_escaped_in_html(sink: SmtpSink) -> None:
    org = "<script>alert(1)</script> Clinic"

    await plain_sender(sink).send_email(notice(org=org))

    message = sink.messages[0]["message"]
    text, html = parts(message)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Clinic" in html
    assert org in text  # text/plain is not HTML: the name is shown as written
    assert str(message["Subject"]) == f"New secure message from {org}"


# -- header injection (E7) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"from_name": "x\r\nBcc: evil@x"}, "from_name"),
        ({"from_name": "x\nBcc: evil@x"}, "from_name"),
        ({"subject": "Hello\r\nBcc: evil@x"}, "subject"),
        ({"to_address": f"{TO}\r\nBcc: evil@x"}, "to_address"),
        ({"to_address": f"{TO}, evil@x.example"}, "to_address"),
        ({"reply_to": "r@x.example\nBcc: evil@x"}, "reply_to"),
        ({"message_id": "<a@b>\r\nBcc: evil@x"}, "message_id"),
        ({"headers": (("Bcc", "evil@x"),)}, "headers"),
        ({"headers": (("References", "<a@b>\r\nBcc: evil@x"),)}, "headers"),
        ({"headers": (("Auto-Submitted", "no"), ("Auto-Submitted", "no"))}, "headers"),
    ],
)
async def test_header_injection_is_refused_before_any_connection(
    sink: SmtpSink, changes: dict[str, Any], field: str
) -> None:
    mail = notice(**changes)

    with pytest.raises(ProviderPermanent) as caught:
        await plain_sender(sink).send_email(mail)

    assert caught.value.code == "invalid_mail"
    assert isinstance(caught.value.__cause__, ValidationError)
    assert caught.value.__cause__.field == field
    assert "evil" not in str(caught.value)
    assert sink.messages == []


async def test_the_return_path_is_the_envelope_sender_and_the_from_header_stays(sink: SmtpSink) -> None:
    mail = notice()
    assert mail.reply_to is not None
    await plain_sender(sink).send_email(replace(mail, return_path=mail.reply_to))
    [got] = sink.messages
    assert got["mail_from"] == mail.reply_to
    assert got["message"]["From"].addresses[0].addr_spec == FROM


@pytest.mark.parametrize("bad", ["bounce@x.example\r\nRCPT TO:<evil@x.example>", "<evil@x.example>", "two words@x"])
async def test_a_return_path_that_is_not_one_plain_address_is_refused_before_any_connection(
        sink: SmtpSink, bad: str) -> None:
    with pytest.raises(ProviderPermanent) as caught:
        await plain_sender(sink).send_email(notice(return_path=bad))
    assert caught.value.code == "invalid_mail"
    assert sink.messages == []


@pytest.mark.parametrize(
    "name",
    ['x Bcc: evil@x, "Mallory" <evil@x.example>; ok', 'x Bcc: evil@x, "M" <evil@x.example>; Ünï'],
)
async def test_a_display_name_with_mail_syntax_stays_a_display_name(
    sink: SmtpSink, name: str
) -> None:
    await plain_sender(sink).send_email(notice(from_name=name))

    [got] = sink.messages
    assert got["rcpt_tos"] == [TO]
    message = got["message"]
    assert message["Bcc"] is None
    [sender] = message["From"].addresses
    assert sender.addr_spec == FROM
    # Quoted (ASCII) or RFC 2047-encoded (non-ASCII); the parser may put a space between
    # two adjacent encoded words, so compare without spaces.
    assert sender.display_name.replace(" ", "") == name.replace(" ", "")
    assert [a.addr_spec for a in message["To"].addresses] == [TO]


_HEADERS = {"from", "to", "subject", "date", "message-id", "reply-to", "auto-submitted",
            "x-auto-response-suppress", "mime-version", "content-type"}


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=60), subject=st.text(max_size=60))
def test_no_display_name_or_subject_adds_a_header_or_recipient(name: str, subject: str) -> None:
    mail = notice(from_name=name, subject=subject)
    try:
        message = build_message(mail, date=datetime.now(UTC))
    except ValidationError as err:
        assert err.field in {"from_name", "subject"}
        assert any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 or ch in "\u2028\u2029"
                   for ch in name + subject if ch != "\t")
        return
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert {key.lower() for key in parsed.keys()} == _HEADERS
    assert [a.addr_spec for a in parsed["From"].addresses] == [FROM]
    assert [a.addr_spec for a in parsed["To"].addresses] == [TO]


# -- failures, translated -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "code", "expected", "error_code"),
    [
        ("RCPT", 451, ProviderTransient, "smtp_4xx"),
        ("RCPT", 452, ProviderTransient, "smtp_4xx"),
        ("MAIL", 421, ProviderTransient, "smtp_4xx"),
        ("DATA", 451, ProviderTransient, "smtp_4xx"),
        ("RCPT", 550, ProviderPermanent, "smtp_5xx"),
        ("MAIL", 553, ProviderPermanent, "smtp_5xx"),
        ("DATA", 554, ProviderPermanent, "smtp_5xx"),
    ],
)
async def test_relay_replies_are_translated_without_their_text(
    sink: SmtpSink,
    caplog: pytest.LogCaptureFixture,
    stage: str,
    code: int,
    expected: type[Exception],
    error_code: str,
) -> None:
    sink.reject_next(code, f"5.1.1 <{TO}>: mailbox unavailable", stage=stage)  # type: ignore[arg-type]
    mail = notice()
    caplog.set_level(logging.DEBUG, logger="outbound.smtp_email")

    with pytest.raises(expected) as caught:
        await plain_sender(sink).send_email(mail)

    assert caught.value.code == error_code  # type: ignore[attr-defined]
    assert str(code) in str(caught.value)
    logged = " ".join(str(r.__dict__) for r in caplog.records)
    for secret in (TO, "jane.doe", mail.subject, LINK):
        assert secret not in str(caught.value)
        assert secret not in logged
    assert "j***@c***.example" in logged
    assert sink.messages == []


async def test_the_next_send_after_a_refusal_goes_through(sink: SmtpSink) -> None:
    sink.reject_next(451, "4.3.0 try later", stage="DATA")
    sender = plain_sender(sink)
    with pytest.raises(ProviderTransient):
        await sender.send_email(notice())

    await sender.send_email(notice())

    assert len(sink.messages) == 1


async def test_connection_refused_is_transient() -> None:
    sender = SmtpEmailSender("127.0.0.1", free_port(), starttls=False, timeout=2.0)

    with pytest.raises(ProviderTransient) as caught:
        await sender.send_email(notice())

    assert caught.value.code == "network"


async def test_slow_reply_times_out_as_transient(sink: SmtpSink) -> None:
    sink.delay_next(3.0, stage="DATA")
    sender = plain_sender(sink, timeout=0.3)

    started = time.monotonic()
    with pytest.raises(ProviderTransient) as caught:
        await sender.send_email(notice())

    assert time.monotonic() - started < 2.0
    assert caught.value.code == "network"
    assert sink.messages == []


async def test_a_server_that_never_greets_times_out_as_transient() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # say nothing; return once the client hangs up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = SmtpEmailSender("127.0.0.1", port, starttls=False, timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(ProviderTransient) as caught:
            await sender.send_email(notice())
        assert time.monotonic() - started < 2.0
        assert caught.value.code == "network"
    finally:
        server.close()
        await server.wait_closed()


# -- TLS (F5) and AUTH --------------------------------------------------------------------------


async def test_starttls_to_an_untrusted_certificate_fails_as_transient_tls(
    tls_sink: SmtpSink,
) -> None:
    # Transient on purpose (see outbound/smtp_email.py): the operator fixes the relay or the
    # trust store, and the mail is retried rather than dropped. Nothing goes out in clear.
    sender = SmtpEmailSender(tls_sink.host, tls_sink.port, timeout=5.0)

    with pytest.raises(ProviderTransient) as caught:
        await sender.send_email(notice())

    assert caught.value.code == "tls"
    assert tls_sink.messages == []


async def test_starttls_with_a_context_trusting_the_certificate_delivers(
    tls_sink: SmtpSink, cert: tuple[Path, Path]
) -> None:
    sender = SmtpEmailSender(
        tls_sink.host, tls_sink.port, timeout=5.0, tls_context=trusting_context(cert[0])
    )

    await sender.send_email(notice())

    [got] = tls_sink.messages
    assert got["tls"] is True
    assert got["rcpt_tos"] == [TO]


async def test_starttls_required_but_not_offered_sends_nothing(sink: SmtpSink) -> None:
    sender = SmtpEmailSender(sink.host, sink.port, starttls=True, timeout=5.0)

    with pytest.raises(ProviderTransient) as caught:
        await sender.send_email(notice())

    assert caught.value.code == "tls"
    assert sink.messages == []


async def test_auth_over_starttls_delivers_as_the_configured_user(
    cert: tuple[Path, Path],
) -> None:
    async with SmtpSink(tls_cert=cert, require_starttls=True, auth=("relay", "s3cret")) as sink:
        sender = SmtpEmailSender(
            sink.host, sink.port, username="relay", password="s3cret", timeout=5.0,
            tls_context=trusting_context(cert[0]),
        )

        await sender.send_email(notice())

        [got] = sink.messages
        assert got["login"] == "relay"
        assert got["tls"] is True
        assert sink.auth_attempts == [("relay", True)]


@pytest.mark.parametrize(("username", "password"), [("relay", "wrong"), ("", "")])
async def test_bad_or_missing_credentials_are_permanent(
    cert: tuple[Path, Path], username: str, password: str
) -> None:
    async with SmtpSink(tls_cert=cert, require_starttls=True, auth=("relay", "s3cret")) as sink:
        sender = SmtpEmailSender(
            sink.host, sink.port, username=username, password=password, timeout=5.0,
            tls_context=trusting_context(cert[0]),
        )

        with pytest.raises(ProviderPermanent) as caught:
            await sender.send_email(notice())

        assert caught.value.code == "smtp_5xx"  # 535 bad credentials, 530 auth required
        assert "s3cret" not in str(caught.value) and "wrong" not in str(caught.value)
        assert sink.messages == []


# -- DKIM ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def dns_for(key: rsa.RSAPrivateKey, name: bytes) -> object:
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    def dnsfunc(qname: bytes, timeout: int = 5) -> bytes | None:
        return record if qname == name else None

    return dnsfunc


async def test_dkim_signature_verifies_and_breaks_on_tampering(
    sink: SmtpSink, rsa_key: rsa.RSAPrivateKey
) -> None:
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    signer = DkimSigner("hl2025", "acme.example", pem)
    assert "PRIVATE" not in repr(signer)

    await plain_sender(sink, dkim=signer).send_email(notice())

    data: bytes = sink.messages[0]["data"]
    assert data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=acme.example;")
    dnsfunc = dns_for(rsa_key, b"hl2025._domainkey.acme.example.")
    assert dkim.verify(data, dnsfunc=dnsfunc) is True
    tampered = data.replace(b"Subject: New secure message", b"Subject: New secure massage")
    assert tampered != data
    assert dkim.verify(tampered, dnsfunc=dnsfunc) is False


async def test_dkim_signature_covers_the_one_click_unsubscribe_headers(
    sink: SmtpSink, rsa_key: rsa.RSAPrivateKey
) -> None:
    """RFC 8058 section 4: List-Unsubscribe and List-Unsubscribe-Post must be signed, or receivers
    ignore the one-click header (and a relay could change where it points)."""
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    url = "<https://gw.example/u/" + new_token() + ">"
    mail = notice(headers=(("List-Unsubscribe", url), ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")))
    await plain_sender(sink, dkim=DkimSigner("hl2025", "acme.example", pem)).send_email(mail)
    data: bytes = sink.messages[0]["data"]
    signed = re.search(rb"\bh=([^;]+);", data.split(b"\r\n\r\n")[0].replace(b"\r\n", b""))
    assert signed is not None
    names = [n.strip().lower() for n in signed.group(1).split(b":")]
    assert b"list-unsubscribe" in names and b"list-unsubscribe-post" in names
    dnsfunc = dns_for(rsa_key, b"hl2025._domainkey.acme.example.")
    assert dkim.verify(data, dnsfunc=dnsfunc) is True
    moved = data.replace(b"https://gw.example/u/", b"https://evil.example/u/")
    assert dkim.verify(moved, dnsfunc=dnsfunc) is False


def test_dkim_signer_refuses_a_bad_key_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        DkimSigner("sel", "acme.example", "-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END")
    assert caught.value.key == "smtp.dkim_private_key"
    assert "not-a-key" not in str(caught.value)


# -- composer helpers ---------------------------------------------------------------------------


def test_org_name_loses_line_breaks_and_controls_in_subject() -> None:
    subject, _, _ = render_email(
        "secure_notice", org_name="Acme\r\nBcc: evil@x\u202e\x00 Clinic", url=LINK
    )
    assert subject == "New secure message from Acme Bcc: evil@x Clinic"
    assert clean_org_name(" \r\n\t ") == "Secure messages"


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "https://x.example/s/a b", "https://x.example/\r\nX: y", ""]
)
def test_links_must_be_plain_web_urls(url: str) -> None:
    with pytest.raises(ValueError):
        render_email("secure_notice", org_name="Acme", url=url)


def test_message_template_needs_a_body_and_takes_no_link() -> None:
    with pytest.raises(ValueError):
        render_email("message", org_name="Acme")
    with pytest.raises(ValueError):
        render_email("message", org_name="Acme", body="hi", url=LINK)
    with pytest.raises(ValueError):
        render_email("nope", org_name="Acme", url=LINK)


def test_message_ids_are_random_and_well_formed() -> None:
    ids = {make_message_id("Acme.Example") for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"<[0-9a-f]{32}@acme\.example>", i) for i in ids)
    with pytest.raises(ValueError):
        make_message_id("acme.example>\r\nBcc: x")


def test_reply_address_round_trips_and_rejects_lookalikes() -> None:
    token = new_token()
    addr = reply_address(token, REPLY_DOMAIN)
    assert addr == f"reply+{token}@{REPLY_DOMAIN}"
    assert parse_reply_address(addr, REPLY_DOMAIN) == token
    assert parse_reply_address(f"reply+{token}@REPLY.Acme.Example", REPLY_DOMAIN) == token
    for other in (
        f"reply+{token}@{REPLY_DOMAIN}.evil.example",
        f"reply+{token}@evil-{REPLY_DOMAIN}",
        f"reply+{token[:-1]}@{REPLY_DOMAIN}",
        f"reply+{token}x@{REPLY_DOMAIN}",
        f"reply+{token[:-1]}=@{REPLY_DOMAIN}",
        f"noreply+{token}@{REPLY_DOMAIN}",
        f"reply-{token}@{REPLY_DOMAIN}",
        f"reply+{token}",
        "",
    ):
        assert parse_reply_address(other, REPLY_DOMAIN) is None, other
    with pytest.raises(ValueError):
        reply_address("short", REPLY_DOMAIN)
