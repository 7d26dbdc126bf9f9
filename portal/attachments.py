"""Attachments of inbound email as both portals list and serve them over HTTP.

Finding and opening them is the domain's (gateway/messaging/attachments.py). Files are served as
downloads that a browser will not render in our origin: `Content-Disposition: attachment`,
`nosniff`, a sandboxing CSP, and a content type that is the sender's only for a few inert types
(images a browser cannot script, PDF); anything else, HTML and SVG above all, goes out as
application/octet-stream.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gateway.errors import IntegrityError
from gateway.messaging.attachments import Attachments
from gateway.messaging.attachments import may_have_files as may_have_files  # the pages pick messages with it
from gateway.storage.store import Doc

logger = logging.getLogger(__name__)

SAFE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"})
_FALLBACK_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\%;]')


def size_label(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


async def for_messages(files: Attachments, org_id: str, message_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """{message id: [{id, filename, size, content_type}]} for the given messages (names opened)."""
    found = await files.for_messages(org_id, message_ids)
    return {mid: [{"id": a.id, "filename": a.filename, "size": size_label(a.size), "content_type": a.content_type}
                  for a in listed] for mid, listed in found.items()}


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact name in RFC 5987/6266 form."""
    name = filename or "attachment"
    fallback = _FALLBACK_UNSAFE.sub("_", name).strip() or "attachment"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def download(files: Attachments, doc: Doc) -> web.Response:
    """The attachment's bytes as a download; 404 if its key is gone."""
    try:
        data, filename = await files.open(doc)
    except IntegrityError:
        raise web.HTTPNotFound() from None
    declared = str(doc.get("content_type") or "").lower()
    ctype = declared if declared in SAFE_TYPES else "application/octet-stream"
    return web.Response(body=data, content_type=ctype, headers={
        "Content-Disposition": content_disposition(filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
    })
