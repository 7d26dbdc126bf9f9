"""parse_message over hand-written client messages, charsets, attachments, auto-replies and
bounces; and that no input, however broken, makes it raise or run away."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inbound.mail import Attachment, Bounce, ParsedMail, extract_reply, html_to_text, parse_message
from inbound.mail.html_text import QUOTE_MARKER, _canonicalise

MIME = Path(__file__).resolve().parent.parent / "fixtures" / "email" / "mime"


def load(name: str) -> bytes:
    return (MIME / name).read_bytes()


def parse(name: str, **kwargs: Any) -> ParsedMail:
    return parse_message(load(name), **kwargs)


def html_part(name: str) -> str:
    msg = BytesParser(policy=policy.default).parsebytes(load(name))
    assert isinstance(msg, EmailMessage)
    body = msg.get_body(preferencelist=("html",))
    assert isinstance(body, EmailMessage)
    content = body.get_content()
    assert isinstance(content, str)
    return content


def assert_storable(mail: ParsedMail) -> None:
    """Every string encodes as UTF-8 (no lone surrogates from undecodable header bytes)."""

    def check(value: object) -> None:
        if isinstance(value, str):
            value.encode("utf-8")
        elif isinstance(value, tuple):
            for item in value:
                check(item)
        elif isinstance(value, Attachment | Bounce):
            for f in dataclasses.fields(value):
                check(getattr(value, f.name))

    for f in dataclasses.fields(mail):
        check(getattr(mail, f.name))


# -- what the clients send ---------------------------------------------------------------------


def test_gmail_reply_is_the_text_above_the_quote_and_headers_are_decoded() -> None:
    mail = parse("gmail_reply.eml")
    assert mail.reply_text == "Tuesday at 10 works for me. I'll bring the signed form.\n\nThanks,\nBob"
    assert "Your appointment is on Tuesday" in mail.text
    assert mail.subject == "Re: Termin am Dienstag – Bestätigung"
    assert (mail.from_name, mail.from_address) == ("Björn Example", "bjorn.example@gmail.example.com")
    assert mail.to_addresses == ("reply+t0k3n@hushlink.example.org",)
    assert mail.message_id == "CAGmail-reply-1@mail.gmail.com"
    assert mail.in_reply_to == "notice.42@hushlink.example.org"
    assert mail.references == ("thread-root.1@hushlink.example.org", "notice.42@hushlink.example.org")
    assert mail.date == datetime(2024, 6, 3, 9, 2, 45, tzinfo=UTC)
    assert not mail.is_auto_reply and not mail.is_bounce and mail.bounce is None


def test_gmail_html_part_gives_the_same_reply() -> None:
    assert extract_reply(html_to_text(html_part("gmail_reply.eml"))) == parse("gmail_reply.eml").reply_text


def test_outlook_desktop_reply_stops_at_the_from_sent_block() -> None:
    mail = parse("outlook_desktop_reply.eml")
    expected = "Hi,\n\nPlease move my appointment to Thursday if possible.\n\nKind regards,\nCarol Example"
    assert mail.reply_text == expected
    assert "Sent: Monday, June 3, 2024 9:12 AM" in mail.text
    assert extract_reply(html_to_text(html_part("outlook_desktop_reply.eml"))) == expected


def test_outlook_web_html_only_reply_stops_at_the_reply_header() -> None:
    mail = parse("outlook_web_reply.eml")
    assert mail.reply_text == "Yes, I'll be there. Could you send me the address again?\n\nDana"
    assert QUOTE_MARKER in mail.text
    assert "Résidence Rivière" in mail.text
    assert "<div" not in mail.text and "font-family" not in mail.text


def test_apple_mail_flowed_lines_are_joined_and_the_cite_is_cut() -> None:
    mail = parse("apple_mail_reply.eml")
    expected = (
        "Hi,\n\nThat time suits me well. I will bring the insurance card and the letter from my"
        " doctor.\n\nBest,\nErin"
    )
    assert mail.reply_text == expected
    assert extract_reply(html_to_text(html_part("apple_mail_reply.eml"))) == expected


def test_thunderbird_reply_below_the_quote_is_kept_without_signature() -> None:
    mail = parse("thunderbird_reply.eml")
    assert mail.reply_text == (
        "Could we make it 11:00 instead? The morning train gets in at 10:30 and I would rather"
        " not rush.\n\nThanks –\nFrank"
    )
    assert "Ferry Road" in mail.text and "Ferry Road" not in mail.reply_text


def test_iphone_signature_and_quote_are_cut() -> None:
    mail = parse("iphone_reply.eml")
    assert mail.reply_text == "Confirmed, see you Tuesday \N{THUMBS UP SIGN}"


def test_html_only_reply_is_converted_to_text() -> None:
    mail = parse("html_only_reply.eml")
    assert mail.reply_text == "Please call me on my mobile instead – the landline is out of order.\n\nHelen"
    assert "we tried to call you" in mail.text


def test_forwarded_mail_keeps_the_note_and_cuts_the_forward() -> None:
    mail = parse("forwarded.eml")
    assert mail.reply_text == "Forwarding this as asked. My lab sent it yesterday."
    assert "LAB-99812" in mail.text


# -- charsets ----------------------------------------------------------------------------------


def test_iso_8859_1_body_and_headers_are_decoded() -> None:
    mail = parse("latin1_reply.eml")
    assert mail.reply_text == "Bonjour,\n\nTrès bien, je serai là mardi à 10 h. Merci beaucoup !\n\nAmélie Müller"
    assert mail.from_name == "Amélie Müller"
    assert mail.subject == "Re: Votre rendez-vous à venir"


def test_windows_1252_smart_quotes_and_euro_are_decoded() -> None:
    mail = parse("windows1252_reply.eml")
    assert mail.reply_text == (
        "Hi – I’ve paid the €20 deposit online.\nCould you confirm it arrived? “Reference 4471”\n\nIvan"
    )


def test_iso_2022_jp_body_and_headers_are_decoded() -> None:
    mail = parse("iso2022jp_reply.eml")
    assert mail.reply_text == "承知しました。火曜日の10時に伺います。\n\nよろしくお願いいたします。\n山田"
    assert mail.subject == "Re: ご予約の確認"
    assert mail.from_name == "山田太郎"


def test_shift_jis_html_is_decoded_with_vendor_characters() -> None:
    assert parse("shift_jis_reply.eml").reply_text == "了解です。①番の窓口に行きます。"


@pytest.mark.parametrize(
    ("charset", "body", "expected"),
    [
        ("utf-8", "Grüße".encode(), "Grüße"),
        ("us-ascii", "Grüße".encode(), "Grüße"),  # mislabelled UTF-8
        (None, "Grüße".encode("cp1252"), "Grüße"),
        ("x-no-such-charset", "Grüße".encode(), "Grüße"),
        ("utf-8", b"Gr\xff\xfee", "Gr\ufffd\ufffde"),
        ("idna", b"caf\xe9", "caf\ufffd"),
        ("base64", b"aGVsbG8=", "aGVsbG8="),
    ],
)
def test_body_charsets_degrade_to_replacement_characters(
    charset: str | None, body: bytes, expected: str
) -> None:
    ctype = "text/plain" + (f"; charset={charset}" if charset else "")
    mail = parse_message(b"Content-Type: " + ctype.encode() + b"\nContent-Transfer-Encoding: 8bit\n\n" + body)
    assert mail.text == expected


def test_undecodable_header_bytes_become_replacement_characters() -> None:
    mail = parse_message(b"From: \xff\xfe Bob <bob@example.com>\nSubject: caf\xc3\xa9 \xff\n\nHi")
    assert mail.from_address == "bob@example.com"
    assert mail.subject == "café \ufffd"
    assert_storable(mail)


# -- attachments -------------------------------------------------------------------------------


def test_attachment_name_type_and_bytes_and_no_inline_logo() -> None:
    mail = parse("attachment_reply.eml")
    assert mail.reply_text == "Here is the signed consent form.\n\nJack"
    assert [(a.filename, a.content_type) for a in mail.attachments] == [
        ("Einverständnis signed.pdf", "application/pdf")
    ]
    pdf = mail.attachments[0]
    assert pdf.data.startswith(b"%PDF-1.4") and pdf.data.endswith(b"%%EOF\n")
    assert pdf.size == len(pdf.data) == 131
    assert mail.attachments_dropped == 0


def test_attachments_over_the_count_or_size_cap_are_dropped_and_counted() -> None:
    none_allowed = parse("attachment_reply.eml", max_attachments=0)
    assert none_allowed.attachments == () and none_allowed.attachments_dropped == 1
    too_big = parse("attachment_reply.eml", max_attachment_bytes=100)
    assert too_big.attachments == () and too_big.attachments_dropped == 1
    assert too_big.reply_text == "Here is the signed consent form.\n\nJack"


def test_attachment_filename_is_reduced_to_its_last_segment() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\nsee file\n"
        b"--B\nContent-Type: application/octet-stream\n"
        b'Content-Disposition: attachment; filename="..\\\\..\\\\evil\x01.exe"\n\nMZ\n--B\n'
        b"Content-Type: text/plain\nContent-Disposition: attachment\n\nnotes\n--B--\n"
    )
    mail = parse_message(raw)
    assert [a.filename for a in mail.attachments] == ["evil.exe", "attachment"]
    assert mail.text == "see file"


def test_mail_forwarded_as_attachment_is_one_eml_attachment() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\nFYI\n--B\n"
        b'Content-Type: message/rfc822\nContent-Disposition: attachment; filename="Original.eml"\n\n'
        b"Subject: Lab results\nMessage-ID: <lab@example.com>\n\nYour results are ready.\n--B--\n"
    )
    mail = parse_message(raw)
    assert mail.text == "FYI"
    [eml] = mail.attachments
    assert (eml.filename, eml.content_type) == ("Original.eml", "message/rfc822")
    assert parse_message(eml.data).subject == "Lab results"


# -- automatic mail ----------------------------------------------------------------------------


def test_out_of_office_is_flagged_with_its_header() -> None:
    mail = parse("out_of_office.eml")
    assert mail.is_auto_reply and mail.auto_reply_reason == "auto-submitted: auto-replied"
    assert not mail.is_bounce


def test_bulk_list_mail_is_flagged() -> None:
    mail = parse("list_bulk.eml")
    assert mail.is_auto_reply and mail.auto_reply_reason == "precedence: bulk"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (b"Auto-Submitted: auto-generated\n", "auto-submitted: auto-generated"),
        (b"Auto-Submitted: No\n", None),
        (b"X-Autoreply: yes\n", "x-autoreply"),
        (b"X-Autorespond: Out of office\n", "x-autorespond"),
        (b"Precedence: junk\n", "precedence: junk"),
        (b"Precedence: first-class\n", None),
        (b"List-Id: <news.example.com>\n", "list-id"),
        (b"", None),
    ],
)
def test_auto_reply_headers(headers: bytes, reason: str | None) -> None:
    mail = parse_message(b"From: a@example.com\n" + headers + b"\nHello")
    assert (mail.is_auto_reply, mail.auto_reply_reason) == (reason is not None, reason)


def test_dsn_bounce_names_recipient_status_and_original_message() -> None:
    mail = parse("dsn_bounce.eml")
    assert mail.is_bounce
    assert mail.bounce == Bounce(
        original_message_id="notice.51@hushlink.example.org",
        recipient="nobody@example.net",
        status="5.1.1",
        diagnostic="550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown",
        action="failed",
    )
    assert mail.attachments == ()


def test_dsn_with_original_message_picks_the_failed_recipient() -> None:
    mail = parse("dsn_bounce_rfc822.eml")
    assert mail.is_bounce and mail.bounce is not None
    assert (mail.bounce.recipient, mail.bounce.status, mail.bounce.action) == (
        "mona@example.com",
        "5.1.10",
        "failed",
    )
    assert mail.bounce.original_message_id == "notice.52@hushlink.example.org"
    assert mail.attachments == ()
    assert mail.text.startswith("Delivery has failed")


def test_delayed_delivery_report_is_not_a_bounce() -> None:
    raw = load("dsn_bounce.eml").replace(b"Action: failed", b"Action: delayed").replace(b"5.1.1", b"4.4.1")
    mail = parse_message(raw)
    assert mail.bounce is not None and mail.bounce.action == "delayed"
    assert not mail.is_bounce


def test_ordinary_replies_are_neither_automatic_nor_bounces() -> None:
    for path in sorted(MIME.glob("*.eml")):
        if path.name.startswith(("out_of_office", "list_bulk", "dsn_")):
            continue
        mail = parse_message(path.read_bytes())
        assert not mail.is_auto_reply and not mail.is_bounce, path.name
        assert mail.reply_text and mail.from_address, path.name


# -- header edge cases -------------------------------------------------------------------------


def test_ids_without_brackets_and_missing_headers() -> None:
    mail = parse_message(b"Message-ID: bare-id@example.com\nIn-Reply-To: junk words here\n\nx")
    assert mail.message_id == "bare-id@example.com"
    assert mail.in_reply_to is None
    assert (mail.from_address, mail.from_name, mail.subject, mail.date) == (None, None, "", None)
    assert mail.references == ()


def test_dates_unparseable_or_without_zone() -> None:
    assert parse_message(b"Date: tomorrow-ish\n\nx").date is None
    assert parse_message(b"Date: Mon, 3 Jun 2024 09:12:00 -0000\n\nx").date == datetime(
        2024, 6, 3, 9, 12, tzinfo=UTC
    )
    assert parse_message(b"Date: Mon, 3 Jun 2024 09:12:00 +0530\n\nx").date == datetime(
        2024, 6, 3, 9, 12, tzinfo=timezone(timedelta(hours=5, minutes=30))
    )


def test_long_references_keep_the_root_and_the_latest() -> None:
    refs = b" ".join(b"<m%d@example.com>" % i for i in range(500))
    mail = parse_message(b"References: " + refs + b"\n\nx")
    assert len(mail.references) == 100
    assert mail.references[0] == "m0@example.com" and mail.references[-1] == "m499@example.com"


def test_from_with_group_syntax_and_comments() -> None:
    mail = parse_message(b"From: Staff: Bob (the nurse) <BOB@Example.COM>;\nTo: a@example.com, a@example.com\n\nx")
    assert (mail.from_address, mail.from_name) == ("bob@example.com", "Bob")
    assert mail.to_addresses == ("a@example.com",)


# -- never raises, and stays linear ------------------------------------------------------------


def test_empty_and_non_mail_input() -> None:
    assert parse_message(b"") == ParsedMail()
    assert parse_message(b"\x00\xff" * 1000).from_address is None
    assert parse_message("not bytes").message_id is None  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_parse_message_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    assert_storable(parse_message(raw))


FIXTURES = [p.read_bytes() for p in sorted(MIME.glob("*.eml"))]
SNIPPETS = [
    b"\n",
    b"\r\n\r\n",
    b"\n--",
    b"--",
    b"Content-Type: multipart/mixed; boundary=x\n\n--x\n",
    b"Content-Type: message/rfc822\n\n",
    b"Content-Transfer-Encoding: base64\n",
    b"Content-Transfer-Encoding: quoted-printable\n",
    b"charset=",
    b"=?utf-8?b?",
    b"=?iso-2022-jp?q?",
    b"?=",
    b"(",
    b'"',
    b"<",
    b">",
    b";",
    b"=",
    b"\xff",
    b"\x1b$B",
]
MUTATION = st.tuples(
    st.sampled_from(["delete", "insert", "duplicate", "truncate"]),
    st.integers(min_value=0, max_value=3000),
    st.integers(min_value=0, max_value=300),
    st.one_of(st.sampled_from(SNIPPETS), st.binary(max_size=20)),
)


def mangle(raw: bytes, mutations: list[tuple[str, int, int, bytes]]) -> bytes:
    for kind, at, size, snippet in mutations:
        at = at % (len(raw) + 1)
        if kind == "delete":
            raw = raw[:at] + raw[at + size :]
        elif kind == "insert":
            raw = raw[:at] + snippet * (1 + size % 5) + raw[at:]
        elif kind == "duplicate":
            raw = raw[:at] + raw[at : at + size] * 3 + raw[at:]
        else:
            raw = raw[:at]
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURES), st.lists(MUTATION, max_size=8))
def test_parse_message_never_raises_on_mangled_mime(
    raw: bytes, mutations: list[tuple[str, int, int, bytes]]
) -> None:
    assert_storable(parse_message(mangle(raw, mutations)))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_html_to_text_never_raises_on_arbitrary_text(text: str) -> None:
    assert isinstance(html_to_text(text), str)


HTMLISH = st.lists(
    st.sampled_from(
        ["<", ">", "'", '"', "=", "/", "!", "-", "?", "&", "#", ";", "a", " ", "\n", "div", "p",
         "br", "blockquote", "script", "<!--", "-->", "<![", "]]>", "class=gmail_quote", "&amp;",
         "&#0;", "&#x110000;", "<pre>", "<li>", "<ol>", "</"]
    ),
    max_size=60,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(HTMLISH)
def test_html_to_text_never_raises_on_tag_soup(text: str) -> None:
    assert isinstance(html_to_text(text), str)


def assert_only_simple_markup(canonical: str) -> None:
    """HTMLParser is linear on this: every '<' opens a complete, attribute-light tag."""
    at = canonical.find("<")
    while at >= 0:
        end = canonical.find(">", at)
        assert end > at
        tag = canonical[at + 1 : end]
        name, _, attrs = tag.lstrip("/").partition(" ")
        assert name.replace("-", "").replace(":", "").replace("_", "").isalnum()
        for attr in attrs.split('" ') if attrs else []:
            key, _, value = attr.partition('="')
            assert key in ("id", "class") and "<" not in value and '"' not in value.rstrip('"')
        at = canonical.find("<", end)


PATHOLOGICAL_HTML = {
    "unclosed attribute quotes": "<a b='" * 20_000,
    "quotes hiding the end": "<a b='>'" * 20_000,
    "unclosed comments": "<!--" * 30_000,
    "unclosed end tags": "</" * 50_000,
    "unclosed declarations": "<![" * 30_000,
    "processing instructions": "<?" * 50_000,
    "deep blockquotes": "<blockquote>" * 20_000 + "x",
    "many breaks": "<br>" * 50_000,
    "one huge attribute": "<img src='" + "A" * 300_000 + "'>text",
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL_HTML))
def test_pathological_html_reaches_the_parser_as_simple_markup(name: str) -> None:
    html = PATHOLOGICAL_HTML[name]
    assert_only_simple_markup(_canonicalise(html))
    assert isinstance(html_to_text(html), str)


def nested_multiparts(depth: int) -> bytes:
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth))
    return b"From: deep@example.com\nMessage-ID: <deep@example.com>\n" + head + b"x\n"


def test_deep_nesting_keeps_the_headers_and_skips_the_body() -> None:
    mail = parse_message(nested_multiparts(5000))
    assert (mail.from_address, mail.message_id, mail.text) == ("deep@example.com", "deep@example.com", "")


def test_modest_nesting_is_parsed() -> None:
    assert parse_message(nested_multiparts(20) + b"--b19--\n").from_address == "deep@example.com"


def test_thousands_of_parts_keep_the_headers() -> None:
    parts = b"".join(b"--B\nContent-Type: application/octet-stream; name=a.bin\n\nx\n" for _ in range(1500))
    raw = b"From: many@example.com\nContent-Type: multipart/mixed; boundary=B\n\n" + parts + b"--B--\n"
    mail = parse_message(raw)
    assert mail.from_address == "many@example.com" and mail.attachments == ()


def test_hundreds_of_parts_are_capped_by_count() -> None:
    parts = b"".join(b"--B\nContent-Type: application/octet-stream; name=a%d.bin\n\nx\n" % i for i in range(300))
    raw = b"Content-Type: multipart/mixed; boundary=B\n\n" + parts + b"--B--\n"
    mail = parse_message(raw)
    assert [a.filename for a in mail.attachments] == [f"a{i}.bin" for i in range(10)]
    assert mail.attachments_dropped == 290


@pytest.mark.parametrize(
    "header",
    [
        b"From: " + b"(a)" * 20_000,
        b"From: " + b"(" * 20_000,
        b"From: " + b'"a' * 20_000,
        b"To: " + b"g:a@example.com;" * 20_000,
        b"Subject: " + b"=?utf-8?q?a?= " * 20_000,
        b"Content-Type: text/plain; " + b'a="b;' * 20_000,
        b"Content-Type: text/plain; charset=" + b"(" * 20_000,
        b"Content-Disposition: inline; " + b";" * 20_000,
        b"Message-ID: " + b"<" * 50_000,
        b"References: " + b"<a@b> " * 50_000,
    ],
)
def test_hostile_header_values_are_read_or_skipped(header: bytes) -> None:
    mail = parse_message(header + b"\nX-Other: 1\n\nStill readable.")
    assert mail.text == "Still readable."
    assert_storable(mail)
