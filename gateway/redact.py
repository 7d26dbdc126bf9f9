"""Log redaction: a filter masking addresses and secrets, and the JSON-lines setup installing it.

The filter sits on the root handler, not on loggers: a handler filter sees every record that
propagates to it, including aiohttp.access lines whose request line carries "/s/<token>"
(SECURITY.md A8: tokens and PINs never appear in app or access logs).

What is masked, wherever it appears (message, args, `extra` values, traceback text):
    +14155550123 / +1 (415) 555-0123   → +1********23      (gateway.phone.mask_phone)
    jane.doe@example.com              → j***@e***.com     (gateway.phone.mask_email)
    /s/<anything up to / ? # or space> → /s/[token]
    22+ characters of [A-Za-z0-9_-]    → [token]
Long runs that are ids, not secrets, are kept so logs stay useful ("ids, not content"):
ObjectId hex (gateway.ids.is_id), Twilio SIDs (two capitals + 32 hex, e.g. "SM…"), and runs with no digit and no
capital letter (snake_case names; a 43-character token_urlsafe has neither with probability
below 1e-15).
"""

from __future__ import annotations

import json as jsonlib
import logging
import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway.errors import ConfigError
from gateway.ids import is_id
from gateway.phone import mask_email, mask_phone

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
    r"|(?P<phone>\+[0-9](?:[ .()\-]{0,2}[0-9]){7,14})(?![0-9A-Za-z_\-])"
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
    """Return `text` with phones, emails, tokens and /s/ link paths masked."""
    return _SENSITIVE.sub(_mask, text)


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, then `fields` extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                name = _safe_str(key)
                # A field may not pose as ts/level/logger/msg.
                entry[name if name not in entry else "fields." + name] = _scrub(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(record.stack_info)
        # ASCII-only output: a lone surrogate (from a decoded webhook, say) cannot make the
        # stream's encoder fail and drop the line.
        return jsonlib.dumps(entry, default=_json_default)


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
        plain = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        plain.converter = time.gmtime
        handler.setFormatter(plain)
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levels[name])
