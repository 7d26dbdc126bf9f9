"""Attachments of inbound email, as both portals list and serve them (sealed at rest).

An attachment is found only within its org and thread: the caller names the thread it may see
(the client session's, or the staff page's after its own org check), so another thread's id is
simply not found. Files are served as downloads that a browser will not render in our origin:
`Content-Disposition: attachment`, `nosniff`, a sandboxing CSP, and a content type that is the
sender's only for a few inert types (images a browser cannot script, PDF); anything else, HTML
and SVG above all, goes out as application/octet-stream.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gateway.errors import IntegrityError
from gateway.runtime.services import Services
from gateway.storage.store import Doc

logger = logging.getLogger(__name__)

SAFE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"})
_ID = re.compile(r"[0-9a-f]{24}:[0-9]{1,4}")
_FALLBACK_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\%;]')


def is_attachment_id(value: str) -> bool:
    """Attachment ids are "<message id>:<n>" (inbound/email_reply.py)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


async def find(s: Services, org_id: str, thread_id: str, attachment_id: str) -> Doc | None:
    """The attachment if it belongs to this org and thread, else None."""
    if not is_attachment_id(attachment_id):
        return None
    doc = await s.store.attachments.find_one({"_id": attachment_id, "org_id": org_id})
    if doc is None:
        return None
    owner = doc.get("thread_id")
    if owner is None:  # stored before attachments carried their thread: ask the message
        message = await s.store.messages.find_one({"_id": doc["message_id"], "org_id": org_id},
                                                  projection={"thread_id": 1})
        owner = message["thread_id"] if message else None
    return doc if owner == thread_id else None


def size_label(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def may_have_files(docs: list[Doc]) -> list[str]:
    """Ids of the messages whose attachments are worth a lookup: inbound ones with a stored count
    (`files`) other than 0; one stored before the count existed is looked up too."""
    return [d["_id"] for d in docs if d.get("direction") == "inbound" and d.get("files", 1)]


async def for_messages(s: Services, org_id: str, message_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """{message id: [{id, filename, size, content_type}]} for the given messages (names opened)."""
    out: dict[str, list[dict[str, Any]]] = {}
    if not message_ids:
        return out
    cursor = s.store.attachments.find({"org_id": org_id, "message_id": {"$in": message_ids}},
                                      projection={"data": 0}).sort("_id", 1)
    async for doc in cursor:
        try:
            name = await s.vault.open(org_id, "attachments", doc["_id"], "filename", doc["filename"])
        except IntegrityError:  # the contact was erased: nothing to show
            continue
        out.setdefault(doc["message_id"], []).append({
            "id": doc["_id"], "filename": name or "attachment", "size": size_label(int(doc.get("size", 0))),
            "content_type": doc.get("content_type", ""),
        })
    return out


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact name in RFC 5987/6266 form."""
    name = filename or "attachment"
    fallback = _FALLBACK_UNSAFE.sub("_", name).strip() or "attachment"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def download(s: Services, doc: Doc) -> web.Response:
    """The attachment's bytes as a download; NotFound-equivalent 404 if its key is gone."""
    org_id = doc["org_id"]
    try:
        data = await s.vault.open_bytes(org_id, "attachments", doc["_id"], "data", doc["data"])
        filename = await s.vault.open(org_id, "attachments", doc["_id"], "filename", doc["filename"])
    except IntegrityError:
        raise web.HTTPNotFound() from None
    declared = str(doc.get("content_type") or "").lower()
    ctype = declared if declared in SAFE_TYPES else "application/octet-stream"
    return web.Response(body=data, content_type=ctype, headers={
        "Content-Disposition": content_disposition(filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
    })
