"""Temporary seam: the mail parser (inbound/mail/) is being written; import it lazily meanwhile."""

from __future__ import annotations

from typing import Any

ParsedMail = Any


def parse_message(raw: bytes) -> Any:
    from inbound.mail.parse import parse_message as parse

    return parse(raw)
