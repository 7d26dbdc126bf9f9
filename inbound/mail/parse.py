"""Inbound mail parsing: raw RFC 5322 bytes to a ParsedMail value. Pure: no I/O, no database.

``parse_message`` never raises. Each field is read on its own, and a field that cannot be read
stays empty while the others are still filled in.

Cost. The stdlib parser (``BytesParser`` with ``policy.default``) has superlinear spots, so:

* Header values are truncated as they are read (``_CappedPolicy``). The header parsers of
  ``email.headerregistry`` are quadratic in some inputs (8 KB of ``(a)`` in a From takes 0.5 s;
  1 KB of ``;`` in a Content-Type 20 ms, and that one is parsed for every part).
* Each input line costs one regex match per enclosing multipart (``feedparser`` checks every
  open boundary), and nesting also recurses. Past ``_MAX_MULTIPARTS`` multipart declarations
  or ``_MAX_PARTS`` Content-Type headers only the headers are parsed.
* Parts are walked without recursion, ``message/rfc822`` parts are not descended into.

Body text: the text/plain part is preferred, else the HTML part through html_text. Charsets
follow WHATWG labels where mail clients rely on them (ISO-8859-1 and US-ASCII decode as
windows-1252, Shift_JIS as cp932, GB2312 as GB18030); undecodable bytes become U+FFFD.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import collapse_rfc2231_value, parseaddr
from functools import partial
from typing import Any, ClassVar, TypeVar

from inbound.mail.html_text import html_to_text
from inbound.mail.reply_text import extract_reply

__all__ = ["Attachment", "Bounce", "ParsedMail", "parse_message"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_MAX_MULTIPARTS = 32
_MAX_PARTS = 1000
_MAX_WALK_DEPTH = 32
_MAX_REFERENCES = 100
_MAX_ADDRESSES = 100
_MAX_FILENAME = 255
_MAX_DIAGNOSTIC = 1000

# Header value caps (characters) by lowercased header name; Content-* headers are capped by
# the policy's content_cap, which shrinks as the number of parts grows.
_HEADER_CAPS = {
    "content-transfer-encoding": 100,
    "mime-version": 100,
    "from": 1000,
    "sender": 1000,
    "reply-to": 1000,
    "to": 4000,
    "cc": 4000,
    "subject": 2000,
    "date": 200,
    "message-id": 1000,
    "in-reply-to": 2000,
    "references": 64_000,
}
_OTHER_HEADER_CAP = 8000

_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "ascii": "cp1252",
    "us-ascii": "cp1252",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "iso-8859-9": "cp1254",
    "iso-8859-11": "cp874",
    "tis-620": "cp874",
    "utf8": "utf-8",
}
_UNLABELLED = frozenset({"", "us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown", "default"})
# C0 controls but tab and newline, and DEL: never meaningful in a mail body.
_CONTROLS = dict.fromkeys([*range(9), *range(11, 32), 127])
# Stateful encodings whose commonest superset differs by vendor: try these when strict fails.
_CHARSET_FALLBACKS = {"iso2022_jp": ("iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_3")}


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file the sender attached (not an inline image of an HTML body)."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Bounce:
    """The first failed recipient of an RFC 3464 delivery status notification."""

    original_message_id: str | None
    recipient: str | None
    status: str | None  # enhanced status code, "5.1.1" (RFC 3463)
    diagnostic: str | None
    action: str | None  # "failed", "delayed", "delivered", "relayed" or "expanded"


@dataclass(frozen=True, slots=True)
class ParsedMail:
    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    from_address: str | None = None
    from_name: str | None = None
    to_addresses: tuple[str, ...] = ()
    subject: str = ""
    date: datetime | None = None
    text: str = ""
    reply_text: str = ""
    attachments: tuple[Attachment, ...] = ()
    attachments_dropped: int = 0
    is_auto_reply: bool = False
    auto_reply_reason: str | None = None
    is_bounce: bool = False
    bounce: Bounce | None = None


class _CappedPolicy(EmailPolicy):
    """``policy.default`` that truncates each header value as the parser reads it."""

    content_cap: ClassVar[int] = 1000

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        key = name.strip().lower()
        if key in _HEADER_CAPS:
            value = value[: _HEADER_CAPS[key]]
        elif key.startswith("content-"):
            value = value[: self.content_cap]
        else:
            return name, value[:_OTHER_HEADER_CAP]
        return name, _flatten_comments(value)


class _TighterPolicy(_CappedPolicy):
    content_cap = 300


class _TightestPolicy(_CappedPolicy):
    content_cap = 100


# Content-* headers are parsed about eight times per part (the feedparser reads the
# Content-Type four times), and one parse of a 1000-character value costs up to 9 ms, of a
# 100-character one 0.1 ms: the more parts, the shorter the values may be.
_POLICIES: tuple[EmailPolicy, ...] = (_CappedPolicy(), _TighterPolicy(), _TightestPolicy())


def _flatten_comments(value: str) -> str:
    """Drop "(" nested deeper than three outside quoted strings: the header parser recurses
    once per level and would hit the recursion limit."""
    if value.count("(") <= 3:
        return value
    out: list[str] = []
    depth = 0
    quoted = escaped = False
    for c in value:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"' and depth == 0:
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
            if depth > 3:
                continue
        elif not quoted and c == ")" and depth:
            depth -= 1
            if depth >= 3:
                continue
        out.append(c)
    return "".join(out)


def parse_message(
    raw: bytes, *, max_attachments: int = 10, max_attachment_bytes: int = 10_000_000
) -> ParsedMail:
    """Parse an inbound mail; never raises, and returns whatever could be read."""
    try:
        msg, complete = _parse(bytes(raw))
    except Exception as err:
        logger.warning("mail could not be parsed", extra={"error": type(err).__name__})
        return ParsedMail()
    headers = _RawHeaders(msg)
    nobody: tuple[str | None, str | None] = (None, None)
    from_address, from_name = _safe(lambda: _from(msg), nobody)
    body = _Body()
    if complete:
        _safe(lambda: body.collect(msg, max_attachments, max_attachment_bytes), None)
    text = body.text()
    bounce = _safe(lambda: _bounce(body.report), None) if body.report is not None else None
    auto_reason = _safe(lambda: _auto_reply_reason(headers), None)
    return ParsedMail(
        message_id=_safe(lambda: _first_id(headers.get("message-id")), None),
        in_reply_to=_safe(lambda: _first_id(headers.get("in-reply-to")), None),
        references=_safe(lambda: _references(headers.get("references")), ()),
        from_address=from_address,
        from_name=from_name,
        to_addresses=_safe(lambda: _to(msg), ()),
        subject=_safe(lambda: _subject(msg), ""),
        date=_safe(lambda: _date(msg), None),
        text=text,
        reply_text=_safe(lambda: extract_reply(text), text),
        attachments=tuple(body.attachments),
        attachments_dropped=body.dropped,
        is_auto_reply=auto_reason is not None,
        auto_reply_reason=auto_reason,
        is_bounce=bounce is not None and _is_failure(bounce),
        bounce=bounce,
    )


def _safe(read: Callable[[], _T], default: _T) -> _T:
    try:
        return read()
    except Exception as err:  # one unreadable field must not cost the others
        logger.debug("mail field unreadable", extra={"error": type(err).__name__})
        return default


def _parse(raw: bytes) -> tuple[Message, bool]:
    """Return the parsed message and whether its body was parsed too."""
    low = raw.lower()
    parts = low.count(b"content-type:")
    multiparts = low.count(b"multipart/")
    capped = _POLICIES[0 if parts <= 10 else 1 if parts <= 50 else 2]
    if parts <= _MAX_PARTS and multiparts <= _MAX_MULTIPARTS:
        try:
            return BytesParser(policy=capped).parsebytes(raw), True
        except Exception as err:  # RecursionError on nesting the counts did not catch
            logger.info("mail body unparsed", extra={"error": type(err).__name__})
    logger.info("mail body skipped", extra={"parts": parts, "multiparts": multiparts})
    return BytesParser(policy=capped).parsebytes(raw, headersonly=True), False


# -- headers --------------------------------------------------------------------------------


class _RawHeaders:
    """First value of each header, unparsed, so ids and flags never meet the header parsers."""

    def __init__(self, msg: Message) -> None:
        self._values: dict[str, str] = {}
        try:
            for name, value in msg.raw_items():
                self._values.setdefault(name.strip().lower(), str(value))
        except Exception as err:
            logger.debug("raw headers unreadable", extra={"error": type(err).__name__})

    def get(self, name: str) -> str | None:
        value = self._values.get(name)
        return None if value is None else _clean(" ".join(value.split()))


def _clean(s: str) -> str:
    """Make a str safe to store: undo surrogate escapes, drop control characters."""
    try:
        data = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = s.encode("utf-8", "replace")
    text = data.decode("utf-8", "replace")
    return "".join(c for c in text if c >= " " or c in "\t\n")


def _angle_ids(value: str, limit: int) -> list[str]:
    ids: list[str] = []
    i = 0
    while len(ids) < limit:
        lt = value.find("<", i)
        if lt < 0:
            break
        gt = value.find(">", lt + 1)
        if gt < 0:
            break
        candidate = value[lt + 1 : gt].strip()
        if candidate and not any(c.isspace() or c in "<>" for c in candidate) and len(candidate) <= 998:
            ids.append(candidate)
        i = gt + 1
    return ids


def _first_id(value: str | None) -> str | None:
    if not value:
        return None
    ids = _angle_ids(value, 1)
    if ids:
        return ids[0]
    bare = value.strip()
    # Some mailers omit the brackets; accept a lone token.
    return bare if bare and len(bare.split()) == 1 and len(bare) <= 998 else None


def _references(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    ids = _angle_ids(value, 10 * _MAX_REFERENCES)
    if len(ids) > _MAX_REFERENCES:
        # Keep the thread root and the most recent ancestors.
        ids = ids[:1] + ids[-(_MAX_REFERENCES - 1) :]
    return tuple(ids)


def _addr_spec(raw: str) -> str | None:
    addr = _clean(raw).strip().strip("<>").strip().lower()
    if "@" not in addr or len(addr) > 320 or any(c.isspace() for c in addr):
        return None
    return addr


def _header(msg: Message, name: str) -> Any:
    return msg.get(name)


def _from(msg: Message) -> tuple[str | None, str | None]:
    header = _header(msg, "from")
    if header is None:
        return None, None
    try:
        for address in header.addresses:
            addr = _addr_spec(address.addr_spec)
            if addr:
                name = _clean(address.display_name or "").strip()
                return addr, name or None
    except Exception as err:
        logger.debug("from header unparsed", extra={"error": type(err).__name__})
    name, addr_raw = parseaddr(str(header))
    addr = _addr_spec(addr_raw)
    return addr, (_clean(name).strip() or None) if addr else None


def _to(msg: Message) -> tuple[str, ...]:
    header = _header(msg, "to")
    if header is None:
        return ()
    found: list[str] = []
    for address in header.addresses:
        addr = _addr_spec(address.addr_spec)
        if addr and addr not in found:
            found.append(addr)
            if len(found) >= _MAX_ADDRESSES:
                break
    return tuple(found)


def _subject(msg: Message) -> str:
    header = _header(msg, "subject")
    return "" if header is None else " ".join(_clean(str(header)).split())


def _date(msg: Message) -> datetime | None:
    header = _header(msg, "date")
    value = getattr(header, "datetime", None)
    if not isinstance(value, datetime):
        return None
    # "-0000" (RFC 5322 section 3.3: zone unknown) comes back naive; read it as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _auto_reply_reason(headers: _RawHeaders) -> str | None:
    """Name the header that marks this mail as automatic (RFC 3834 and de-facto headers)."""
    submitted = _token(headers.get("auto-submitted"))
    if submitted and submitted != "no":
        return f"auto-submitted: {submitted}"
    for name in ("x-autoreply", "x-autorespond"):
        value = headers.get(name)
        if value is not None and _token(value) not in ("no", "false", "0"):
            return name
    precedence = _token(headers.get("precedence"))
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"precedence: {precedence}"
    if headers.get("list-id") is not None:
        return "list-id"
    return None


def _token(value: str | None) -> str:
    if not value:
        return ""
    head = value.split(";", 1)[0].split("(", 1)[0].strip().lower()
    return head.split()[0][:64] if head else ""


# -- body -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Part:
    """A MIME part with its Content-Type read once (each read runs the header parser again)."""

    msg: Message
    ctype: str
    params: dict[str, str]
    parent: _Part | None


class _Body:
    """Walks the MIME tree once, collecting the body candidates, attachments and any report."""

    def __init__(self) -> None:
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[Attachment] = []
        self.dropped = 0
        self.report: Message | None = None
        self._plain_parent: _Part | None = None
        self._html_parent: _Part | None = None

    def text(self) -> str:
        plain = "\n".join(self.plain)
        if plain.strip() or not self.html:
            return plain
        return _safe(lambda: html_to_text("\n".join(self.html)), "")

    def collect(self, msg: Message, max_attachments: int, max_bytes: int) -> None:
        for part in _walk(msg):
            ctype = part.ctype
            if ctype.startswith("multipart/"):
                report_type = part.params.get("report-type", "").lower()
                if ctype == "multipart/report" and report_type == "delivery-status":
                    self.report = self.report or part.msg
                continue
            in_report = part.parent is not None and part.parent.msg is self.report
            disposition = _safe(part.msg.get_content_disposition, None)
            filename = _safe(partial(_filename, part), None)
            if ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename:
                self._add_text(part)
                continue
            if in_report or not _is_real_attachment(part, disposition, filename):
                continue
            if len(self.attachments) >= max_attachments:
                self.dropped += 1
                continue
            data = _safe(partial(_attachment_bytes, part.msg, ctype), None)
            if data is None or len(data) > max_bytes:
                self.dropped += 1
                continue
            self.attachments.append(Attachment(_safe_filename(filename, ctype), ctype, data))

    def _add_text(self, part: _Part) -> None:
        text = _safe(partial(_decode_text, part), "")
        parent = part.parent
        mixed = parent is not None and parent.ctype == "multipart/mixed"
        # Sibling parts of one multipart/mixed are one body split around attachments (Apple
        # Mail); in multipart/alternative only the first of a kind counts.
        if part.ctype == "text/plain":
            if not self.plain or (parent is self._plain_parent and mixed):
                self.plain.append(text)
                self._plain_parent = parent
        elif not self.html or (parent is self._html_parent and mixed):
            self.html.append(text)
            self._html_parent = parent


def _walk(msg: Message) -> Iterator[_Part]:
    """Yield the parts depth-first in document order, without recursion."""
    stack: list[tuple[Message, _Part | None, int]] = [(msg, None, 0)]
    seen = 0
    while stack and seen < _MAX_PARTS:
        node, parent, depth = stack.pop()
        seen += 1
        part = _Part(node, _safe(node.get_content_type, "text/plain"), _safe(partial(_params, node), {}), parent)
        yield part
        if not part.ctype.startswith("multipart/") or depth >= _MAX_WALK_DEPTH:
            continue  # an attached mail is an attachment; a delivery status is read by _bounce
        children = node.get_payload()
        if isinstance(children, list):
            for child in reversed(children):
                if isinstance(child, Message):
                    stack.append((child, part, depth + 1))


def _params(msg: Message) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in msg.get_params(failobj=[])[1:]:
        params.setdefault(key.strip().lower(), _clean(collapse_rfc2231_value(value)).strip())
    return params


def _filename(part: _Part) -> str | None:
    value = part.msg.get_param("filename", None, "content-disposition")
    if value is not None:
        return _clean(collapse_rfc2231_value(value)).strip() or None
    return part.params.get("name") or None


def _is_real_attachment(part: _Part, disposition: str | None, filename: str | None) -> bool:
    ctype = part.ctype
    if disposition == "attachment":
        return True
    if ctype == "message/rfc822":
        return bool(filename)
    if ctype in ("message/delivery-status", "text/rfc822-headers"):
        return False
    # Images a HTML body shows (cid: references in multipart/related) are not attachments.
    if "content-id" in part.msg and (
        ctype.startswith("image/") or (part.parent is not None and part.parent.ctype == "multipart/related")
    ):
        return False
    return bool(filename)


def _attachment_bytes(part: Message, ctype: str) -> bytes | None:
    if ctype == "message/rfc822":
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            # Regenerated with compat32, whose header folding does not call the header parsers.
            return inner[0].as_bytes(policy=policy.compat32)
        return None
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else None


def _safe_filename(filename: str | None, ctype: str) -> str:
    """Return a display name: the last path segment, without controls or separators."""
    name = _clean(filename or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c >= " " and c != "\x7f").strip().lstrip(".")
    if not name:
        name = "attachment.eml" if ctype == "message/rfc822" else "attachment"
    return name[:_MAX_FILENAME]


def _decode_text(part: _Part) -> str:
    payload = part.msg.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    text = _decode_bytes(data, part.params.get("charset"))
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_CONTROLS)
    if part.params.get("format", "").lower() == "flowed":
        text = _unflow(text, delsp=part.params.get("delsp", "").lower() == "yes")
    return text


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode body bytes by their declared charset; never raises."""
    label = (charset or "").strip().strip('"').lower()
    if label in _UNLABELLED:
        # Mislabelled UTF-8 is common; anything else unlabelled is most likely windows-1252.
        return _try_decode(data, ("utf-8", "cp1252"))
    codec = _codec(label)
    if codec is None:
        return _try_decode(data, ("utf-8", "cp1252"))
    return _try_decode(data, (codec, *_CHARSET_FALLBACKS.get(codec, ()), "utf-8"), codec)


def _codec(label: str) -> str | None:
    label = _CHARSET_ALIASES.get(label, label)
    for candidate in (label, label[2:] if label.startswith("x-") else ""):
        if not candidate:
            continue
        try:
            info = codecs.lookup(candidate)
        except (LookupError, ValueError):
            continue
        if getattr(info, "_is_text_encoding", True):
            return _CHARSET_ALIASES.get(info.name, info.name)
    return None


def _try_decode(data: bytes, codecs_to_try: tuple[str, ...], lenient: str | None = None) -> str:
    for codec in codecs_to_try:
        try:
            return data.decode(codec)
        except (UnicodeError, LookupError, ValueError):
            continue
    try:
        return data.decode(lenient or codecs_to_try[-1], "replace")
    except (UnicodeError, LookupError, ValueError):
        return data.decode("utf-8", "replace")


def _unflow(text: str, *, delsp: bool) -> str:
    """Join format=flowed soft line breaks (RFC 3676 section 4.2), keeping quote depth."""
    out: list[str] = []
    pending: list[str] = []
    pending_depth = -1
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing (section 4.4)
        if pending and depth != pending_depth:
            out.append(_quoted(pending_depth, "".join(pending)))
            pending = []
        flowed = content.endswith(" ") and content != "-- "
        if flowed:
            pending.append(content[:-1] if delsp else content)
            pending_depth = depth
            continue
        pending.append(content)
        out.append(_quoted(depth, "".join(pending)))
        pending = []
    if pending:
        out.append(_quoted(pending_depth, "".join(pending)))
    return "\n".join(out)


def _quoted(depth: int, content: str) -> str:
    if depth <= 0:
        return content
    return ">" * depth + (" " + content if content else "")


# -- delivery status notifications ----------------------------------------------------------


def _bounce(report: Message | None) -> Bounce | None:
    if report is None:
        return None
    children = report.get_payload()
    if not isinstance(children, list):
        return None
    blocks: list[dict[str, str]] = []
    original: str | None = None
    for child in children:
        if not isinstance(child, Message):
            continue
        ctype = _safe(child.get_content_type, "")
        if ctype in ("message/delivery-status", "message/global-delivery-status") and not blocks:
            blocks = _status_blocks(child)
        elif ctype in ("text/rfc822-headers", "message/rfc822", "message/global-headers"):
            original = original or _original_message_id(child)
    recipients = [b for b in blocks[1:] if "final-recipient" in b or "status" in b or "action" in b]
    if not recipients:
        return None
    chosen = next((b for b in recipients if b.get("action", "").lower() == "failed"), recipients[0])
    return Bounce(
        original_message_id=original,
        recipient=_recipient(chosen.get("final-recipient") or chosen.get("original-recipient")),
        status=_status(chosen.get("status")),
        diagnostic=_after_type(chosen.get("diagnostic-code"), _MAX_DIAGNOSTIC),
        action=(chosen.get("action") or "").strip().lower() or None,
    )


def _is_failure(bounce: Bounce) -> bool:
    if bounce.action:
        return bounce.action == "failed"
    return bool(bounce.status and bounce.status.startswith("5"))


def _status_blocks(part: Message) -> list[dict[str, str]]:
    """Return the field blocks of a message/delivery-status part: per-message, then one per
    recipient (RFC 3464 section 2.1)."""
    payload = part.get_payload()
    if isinstance(payload, list):  # the stdlib parser splits the blocks into messages
        blocks = []
        for block in payload:
            if isinstance(block, Message):
                fields: dict[str, str] = {}
                for name, value in block.raw_items():
                    fields.setdefault(name.strip().lower(), _clean(" ".join(str(value).split())))
                blocks.append(fields)
        return blocks
    raw = part.get_payload(decode=True)
    return _field_blocks(_decode_bytes(raw if isinstance(raw, bytes) else b"", "utf-8"))


def _field_blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = [{}]
    last = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        if line[0] in " \t" and last:
            blocks[-1][last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            last = name.strip().lower()
            blocks[-1].setdefault(last, value.strip())
    return [b for b in blocks if b]


def _original_message_id(part: Message) -> str | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return _first_id(_RawHeaders(payload[0]).get("message-id"))
    raw = part.get_payload(decode=True)
    text = _decode_bytes(raw if isinstance(raw, bytes) else b"", "utf-8")
    for block in _field_blocks(text)[:1]:
        return _first_id(block.get("message-id"))
    return None


def _after_type(value: str | None, cap: int) -> str | None:
    """Drop the type prefix of a DSN field ("rfc822; a@b", "smtp; 550 ...")."""
    if not value:
        return None
    kind, sep, rest = value.partition(";")
    text = rest if sep and kind.strip() and " " not in kind.strip() else value
    return _clean(text).strip()[:cap] or None


def _recipient(value: str | None) -> str | None:
    address = _after_type(value, 320)
    return _addr_spec(address) if address else None


def _status(value: str | None) -> str | None:
    if not value:
        return None
    code = value.split()[0] if value.split() else ""
    pieces = code.split(".")
    if len(pieces) == 3 and pieces[0] in ("2", "4", "5") and all(p.isdigit() and len(p) <= 3 for p in pieces):
        return code
    return None
