"""The integrator API under /api/v1 (Bearer API keys). Errors: {"error": {"code", "message"}}."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.errors import NotFound, ValidationError
from gateway.ids import is_id
from gateway.messaging.conversations import Conversations
from gateway.messaging.delivery import failure_of, reason_text
from gateway.security.api_keys import ApiKeys
from gateway.security.audit import Actor, AuditLog
from gateway.storage.store import Doc
from gateway.tenancy.orgs import Org, Orgs
from portal.http import client_ip, parse_json
from portal.openapi import OPENAPI

logger = logging.getLogger(__name__)

_SEND_KEYS = {"to", "body", "channel", "secure", "pin", "allow_sensitive"}
_TO_KEYS = {"phone", "email", "name"}
MAX_PAGE = 200


def _err(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _unauthorized(message: str) -> web.HTTPUnauthorized:
    body = json.dumps({"error": {"code": "unauthorized", "message": message}})
    return web.HTTPUnauthorized(text=body, content_type="application/json")


def _path_id(request: web.Request) -> str:
    """The {id} of the path; a malformed id is simply not found (404)."""
    value = request.match_info["id"]
    if not is_id(value):
        raise NotFound("id")
    return value


def _iso(value: Any) -> str:
    return str(value.isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def failure_json(doc: Doc) -> dict[str, str | None]:
    """Why a message was not delivered, as a stable code and in plain words; both null otherwise."""
    code = failure_of(doc)
    return {"failure_reason_code": code, "failure_reason": reason_text(code) if code else None}


def message_json(doc: Doc) -> dict[str, Any]:
    return {
        "id": doc["_id"], "thread_id": doc["thread_id"], "direction": doc["direction"],
        "channel": doc["channel"], "secure": doc["secure"], "secure_source": doc.get("secure_source"),
        "status": doc["status"], "error_code": doc.get("error_code"), **failure_json(doc),
        "status_history": [{"status": h["status"], "at": _iso(h["at"]),
                            **({"error_code": h["error_code"]} if h.get("error_code") else {})}
                           for h in doc.get("status_history", [])],
        "created_at": _iso(doc["created_at"]),
    }


class ApiV1:
    def __init__(self, *, api_keys: ApiKeys, orgs: Orgs, conversations: Conversations, audit: AuditLog,
                 trusted_proxies: tuple[str, ...], on_queued: Callable[[], None]) -> None:
        self._api_keys = api_keys
        self._orgs = orgs
        self._conversations = conversations
        self._audit = audit
        self._trusted_proxies = trusted_proxies
        self._on_queued = on_queued

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/openapi.json", self.openapi)
        app.router.add_post("/api/v1/messages", self.send_message)
        app.router.add_get("/api/v1/messages/{id}", self.get_message)
        app.router.add_get("/api/v1/threads/{id}/messages", self.thread_messages)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def _org(self, request: web.Request) -> tuple[Org, Actor]:
        """The caller's org and actor from the Bearer key; raises 401 (JSON) otherwise."""
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _unauthorized("missing Authorization: Bearer <api key>")
        doc = await self._api_keys.find_live(key.strip())
        if doc is None:
            raise _unauthorized("unknown or revoked API key")
        return await self._orgs.get(doc["org_id"]), Actor("api", doc["_id"])

    async def _json(self, request: web.Request) -> dict[str, Any] | web.Response:
        if request.content_type != "application/json":
            return _err(415, "unsupported_media_type", "send application/json")
        try:
            data = parse_json(await request.read(), request.charset)
        except ValueError as err:
            return _err(400, "invalid_json", str(err))
        if not isinstance(data, dict):
            return _err(400, "invalid_json", "the body must be a JSON object")
        return data

    async def send_message(self, request: web.Request) -> web.Response:
        org, actor = await self._org(request)
        data = await self._json(request)
        if isinstance(data, web.Response):
            return data
        unknown = set(data) - _SEND_KEYS
        if unknown:
            raise ValidationError(sorted(unknown)[0], "is not a known field")
        to = data.get("to")
        if not isinstance(to, dict):
            raise ValidationError("to", "must be an object with phone and/or email")
        if set(to) - _TO_KEYS:
            raise ValidationError("to." + sorted(set(to) - _TO_KEYS)[0], "is not a known field")
        channel = data.get("channel", "sms")
        for key, kind in (("phone", str), ("email", str), ("name", str)):
            if to.get(key) is not None and not isinstance(to[key], kind):
                raise ValidationError(f"to.{key}", "must be a string")
        secure = data.get("secure")
        if secure is not None and not isinstance(secure, bool):
            raise ValidationError("secure", "must be true, false or null")
        allow = data.get("allow_sensitive", False)
        if not isinstance(allow, bool):
            raise ValidationError("allow_sensitive", "must be true or false")
        pin = data.get("pin")
        if pin is not None and not isinstance(pin, str):
            raise ValidationError("pin", "must be a string")
        if not isinstance(channel, str):
            raise ValidationError("channel", "must be sms or email")
        idem = request.headers.get("Idempotency-Key")
        if idem is not None and not 1 <= len(idem) <= 200:
            raise ValidationError("Idempotency-Key", "must be 1 to 200 characters")
        sent = await self._conversations.send(
            org, channel=channel, body=data.get("body"), actor=actor,  # type: ignore[arg-type]
            to_phone=to.get("phone"), to_email=to.get("email"), name=to.get("name"),
            secure=secure, pin=pin, allow_sensitive=allow, idempotency_key=idem,
        )
        self._on_queued()
        m = sent.message
        return web.json_response(
            {"id": m["_id"], "thread_id": m["thread_id"], "secure": m["secure"],
             "secure_source": m.get("secure_source"), "status": m["status"]},
            status=201,
        )

    async def _deny(self, request: web.Request, org_id: str, actor: Actor, kind: str) -> NotFound:
        """Audit a lookup of an id that is not this org's (another org's, unknown or malformed), as
        the staff portal does; return the 404 to raise (the same answer for all three)."""
        requested = request.match_info.get("id", "")
        ip = client_ip(request, self._trusted_proxies)
        await self._audit.append(org_id, "authz.deny", actor, outcome="denied", ip=ip, detail={
            "object": kind, "requested": requested if is_id(requested) else "malformed", "route": request.path[:200]})
        return NotFound(kind)

    async def get_message(self, request: web.Request) -> web.Response:
        org, actor = await self._org(request)
        try:
            doc = await self._conversations.get_message(org.id, _path_id(request))
        except NotFound:
            raise await self._deny(request, org.id, actor, "message") from None
        return web.json_response(message_json(doc))

    async def thread_messages(self, request: web.Request) -> web.Response:
        org, actor = await self._org(request)
        try:
            thread = await self._conversations.get_thread(org.id, _path_id(request))
        except NotFound:
            raise await self._deny(request, org.id, actor, "thread") from None
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            raise ValidationError("limit", "must be a whole number") from None
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError("limit", f"must be between 1 and {MAX_PAGE}")
        cursor = request.query.get("cursor") or None
        if cursor is not None and not (is_id(cursor) or len(cursor) <= 64):
            raise ValidationError("cursor", "is not a cursor from a previous page")
        docs = await self._conversations.messages(org.id, thread["_id"], after=cursor, limit=limit + 1)
        page, more = docs[:limit], len(docs) > limit
        await self._audit.append(org.id, "thread.read", actor, thread_id=thread["_id"],
                                   detail={"count": len(page)})
        return web.json_response({
            "messages": [{
                "id": d["_id"], "direction": d["direction"], "channel": d["channel"], "body": d["text"],
                "created_at": _iso(d["created_at"]), "status": d["status"], "secure": d["secure"],
                "secure_source": d.get("secure_source"), "flags": d.get("flags", []), **failure_json(d),
            } for d in page],
            "next_cursor": page[-1]["_id"] if more and page else None,
        })


