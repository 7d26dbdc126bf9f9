"""Log redaction: a filter masking addresses and secrets, and the JSON-lines setup installing it.

The filter sits on the root handler, not on loggers: a handler filter sees every record that
propagates to it, including aiohttp.access lines whose request line carries "/s/<token>"
(tokens and PINs never appear in app or access logs: docs/security-model.md, 'Logs and redaction';
OWASP ASVS 5.0 16.2.5).

What is masked, wherever it appears (message, args, `extra` values, traceback text):
    +14155550123 / +1 (415) 555-0123   → +1********23      (gateway.messaging.phone.mask_phone)
    jane.doe@example.com              → j***@e***.com     (gateway.messaging.phone.mask_email)
    /s/<anything up to / ? # or space> → /s/[token]
    22+ characters of [A-Za-z0-9_-]    → [token]
Encoded forms are decoded before matching, so an encoding cannot carry a value past the mask:
percent-encoding (twice, for "%2540"), quoted-printable "=XX" and RFC 2047 encoded words
("=?utf-8?B?...?=", "=?utf-8?Q?...?="); "+" between phone digits is a form-encoded space.
The line keeps its encoded text where nothing matched (see _redact_encoded).
Long runs that are ids, not secrets, are kept so logs stay useful ("ids, not content"):
ObjectId hex (gateway.ids.is_id), Twilio SIDs (two capitals + 32 hex, e.g. "SM…"), and runs with no digit and no
capital letter (snake_case names; a 43-character token_urlsafe has neither with probability
below 1e-15).
"""

from __future__ import annotations

import binascii
import json as jsonlib
import logging
import quopri
import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway.errors import ConfigError
from gateway.ids import is_id
from gateway.messaging.phone import mask_email, mask_phone

# One pass, one alternative per shape, each linear: the token run is anchored by a look-behind
# to its start, so it is scanned once (and left to the email rule when an "@" follows it); the
# email local part is bounded by RFC 5321's 64 octets (not anchored: "a@x.org'b@y.org" must mask
# both), so each "@" is reached from at most 64 starts. An empty local part ("=@x.org") still
# hides the domain.
#
# RFC 5322 atext and ".", minus "=" and "/" so "to=jane@x.org" and "/u/jane@x.org" keep the
# key and the path (an address that really contains them loses only its part before them).
_LOCAL = r"[\w.!#$%&'*+?^`{|}~\-]"
_SENSITIVE = re.compile(
    r"(?P<path>/s/)[^\s/?#\"'<>]+"
    rf"|(?P<email>{_LOCAL}{{0,64}}@[\w\-]+(?:\.[\w\-]+)+)"
    r"|(?P<phone>\+[0-9](?:[ .()\-+]{0,2}[0-9]){7,14})(?![0-9A-Za-z_\-])"
    r"|(?<![A-Za-z0-9_\-])(?P<token>[A-Za-z0-9_\-]{22,})(?![A-Za-z0-9_\-@])"
)
_TWILIO_SID = re.compile(r"[A-Z]{2}[0-9a-f]{32}")
_NOT_DIGIT = re.compile(r"[^0-9]")
_MAX_DEPTH = 6


def _is_identifier(run: str) -> bool:
    if is_id(run) or _TWILIO_SID.fullmatch(run):
        return True
    return not any(c.isdigit() or c.isupper() for c in run)


def _mask(m: re.Match[str]) -> str:
    if m["path"] is not None:
        return "/s/[token]"
    if m["email"] is not None:
        return mask_email(m["email"])
    if m["phone"] is not None:
        return mask_phone("+" + _NOT_DIGIT.sub("", m["phone"]))
    token = m["token"]
    return token if _is_identifier(token) else "[token]"


def redact(text: str) -> str:
    """Return `text` with phones, emails, tokens and /s/ link paths masked, encoded ones too."""
    if _ENCODED.search(text) is not None:
        text = _redact_encoded(text)
    return _SENSITIVE.sub(_mask, text)


# -- encoded values ----------------------------------------------------------------------------
# A "view" is the decoded text as a list of characters, each with the [start, end) span of the
# original text it came from. Matching runs on the view; a match is masked in the original over
# the span its characters came from, so the rest of the line is written as it was received.
_PERCENT = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
# RFC 2045 6.7 (upper-case hex), only for bytes an encoder has a reason to escape: not letters,
# digits or controls, so "id=65f0..." or "attempt=12" in a key=value line are not read as "e", "\x12".
_QP_BYTE = r"=(?:2[0-9A-F]|3[A-F]|40|5[B-F]|60|7[B-E]|[89A-F][0-9A-F])"
_QUOTED_PRINTABLE = re.compile(rf"(?:{_QP_BYTE})+")
_ENCODED = re.compile(rf"%[0-9A-Fa-f]{{2}}|{_QP_BYTE}|=\?")
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,40})\?([BbQq])\?([^?\s]{0,4000})\?=")  # RFC 2047 2
_Span = tuple[int, int]
_View = tuple[list[str], list[_Span]]


def _redact_encoded(text: str) -> str:
    chars, spans = _decode_view(text)
    decoded = "".join(chars)
    edits: list[tuple[int, int, str]] = []
    for m in _SENSITIVE.finditer(decoded):
        if m.end() == m.start():
            continue
        replacement = _mask(m)
        if replacement == m[0]:
            continue
        start, end = spans[m.start()][0], spans[m.end() - 1][1]
        if edits and start < edits[-1][1]:  # two matches inside one encoded word: one mask
            prev_start, _, prev_rep = edits.pop()
            start, replacement = prev_start, prev_rep + replacement
        edits.append((start, max(end, start), replacement))
    if not edits:
        return text
    out, pos = [], 0
    for start, end, replacement in edits:
        out.append(text[pos:start])
        out.append(replacement)
        pos = max(pos, end)
    out.append(text[pos:])
    return "".join(out)


def _decode_view(text: str) -> _View:
    view: _View = (list(text), [(i, i + 1) for i in range(len(text))])
    view = _decode_pass(view, _ENCODED_WORD, _encoded_word)
    view = _decode_pass(view, _PERCENT, lambda m: _utf8_runs(m[0], 3))
    view = _decode_pass(view, _PERCENT, lambda m: _utf8_runs(m[0], 3))  # "%2540" is "%40" is "@"
    return _decode_pass(view, _QUOTED_PRINTABLE, lambda m: _utf8_runs(m[0], 3))


def _decode_pass(view: _View, pattern: re.Pattern[str], decode: Any) -> _View:
    """Replace each match of `pattern` in the view by what `decode` makes of it.

    `decode(match)` returns (decoded text, [(offset, length) in the match] per character), or
    None to leave the match as it is.
    """
    chars, spans = view
    text = "".join(chars)
    if pattern.search(text) is None:
        return view
    out_chars: list[str] = []
    out_spans: list[_Span] = []
    pos = 0
    for m in pattern.finditer(text):
        decoded = decode(m)
        if decoded is None:
            continue
        out_chars.extend(chars[pos:m.start()])
        out_spans.extend(spans[pos:m.start()])
        for c, (offset, length) in zip(*decoded, strict=True):
            first, last = m.start() + offset, m.start() + offset + length - 1
            out_chars.append(c)
            out_spans.append((spans[first][0], spans[last][1]))
        pos = m.end()
    out_chars.extend(chars[pos:])
    out_spans.extend(spans[pos:])
    return out_chars, out_spans


def _utf8_runs(run: str, width: int) -> tuple[list[str], list[tuple[int, int]]]:
    """Decode a run of escapes ("%XX" or "=XX", `width` characters each) as UTF-8.

    A byte that does not start a valid UTF-8 sequence is kept as its escape, character by
    character, so an undecodable run still reads as written.
    """
    data = bytes(int(run[i + 1:i + width], 16) for i in range(0, len(run), width))
    chars: list[str] = []
    where: list[tuple[int, int]] = []
    i = 0
    while i < len(data):
        for n in (1, 2, 3, 4):
            try:
                c = data[i:i + n].decode("utf-8")
            except UnicodeDecodeError:
                continue
            chars.append(c)
            where.append((i * width, n * width))
            i += n
            break
        else:
            for k in range(width):
                chars.append(run[i * width + k])
                where.append((i * width + k, 1))
            i += 1
    return chars, where


def _encoded_word(m: re.Match[str]) -> tuple[list[str], list[tuple[int, int]]] | None:
    """An RFC 2047 encoded word, decoded; every character spans the whole word."""
    charset, encoding, payload = m[1], m[2].upper(), m[3]
    try:
        if encoding == "B":
            data = binascii.a2b_base64(payload.encode("ascii"), strict_mode=False)
        else:
            data = quopri.decodestring(payload.replace("_", " ").encode("ascii"), header=True)
        decoded = data.decode(charset.partition("*")[0], errors="replace")
    except (ValueError, LookupError, binascii.Error, UnicodeEncodeError):
        return None
    whole = (0, m.end() - m.start())
    return list(decoded), [whole] * len(decoded)


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__ must not break logging
        return f"<unprintable {type(value).__name__}>"


def _scrub(value: Any, depth: int = 0) -> Any:
    """Redact every string inside `value` (dicts, lists, tuples, sets); other objects unchanged."""
    if isinstance(value, str):
        return redact(value)
    if depth >= _MAX_DEPTH and isinstance(value, Mapping | list | tuple | set | frozenset):
        return "[...]"
    if isinstance(value, Mapping):
        return {k: _scrub(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v, depth + 1) for v in value]
    return value


# Attributes every LogRecord has; anything else came from `extra=` (this Python's own list).
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}


class RedactingFilter(logging.Filter):
    """Rewrite a record so no handler can emit a phone, email, token or link path from it.

    The message is formatted once (msg % args) and redacted, and args are cleared, so a later
    formatter cannot re-insert an argument. Traceback text and `extra` values are redacted too.
    Never drops a record and never raises.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact(record)
        except Exception:  # last resort: keep the line, lose the content
            record.msg, record.args = "[log record redaction failed]", ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # wrong number of args: show what there is, redacted
            message = f"{_safe_str(record.msg)} [args: {_safe_str(record.args)}]"
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS:
                setattr(record, key, _scrub(value))


def _json_default(value: object) -> str:
    return redact(_safe_str(value))


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record, redacted: `extra={"fields": {...}}` and any other
    `extra=` key (`extra={"provider_id": ...}`), which would otherwise never reach the output."""
    out: dict[str, Any] = {}
    fields = getattr(record, "fields", None)
    if isinstance(fields, Mapping):
        for key, value in fields.items():
            out[_safe_str(key)] = _scrub(value)
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRS and key != "fields" and not key.startswith("_"):
            out.setdefault(key, _scrub(value))
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for name, value in extra_fields(record).items():
            # A field may not pose as ts/level/logger/msg.
            entry[name if name not in entry else "fields." + name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(record.stack_info)
        # ASCII-only output: a lone surrogate (from a decoded webhook, say) cannot make the
        # stream's encoder fail and drop the line.
        return jsonlib.dumps(entry, default=_json_default)


class PlainFormatter(logging.Formatter):
    """`ts level logger message key=value ...`: the extra fields appended, JSON-quoted where needed."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.converter = time.gmtime

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        pairs = [f"{key}={_plain_value(value)}" for key, value in extra_fields(record).items()]
        return " ".join([line, *pairs]) if pairs else line


def _plain_value(value: Any) -> str:
    text = value if isinstance(value, str) else jsonlib.dumps(value, default=_json_default)
    # One record, one line: a value with spaces, quotes or line breaks is written as a JSON string.
    if isinstance(value, str) and (not text or any(c.isspace() or c in "\"=" for c in text)):
        return jsonlib.dumps(text)
    return text


_HANDLER_NAME = "hushlink"


def configure_logging(
    level: str = "INFO", json: bool = True, *, stream: TextIO | None = None
) -> None:
    """Send every logger's records through one redacting root handler (JSON lines by default).

    Calling it again replaces the handler it installed; other handlers are left alone.
    """
    levels = logging.getLevelNamesMapping()
    name = level.upper() if isinstance(level, str) else ""
    if name not in levels or name == "NOTSET":
        raise ConfigError("server.log_level", "must be DEBUG, INFO, WARNING or ERROR")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levels[name])
