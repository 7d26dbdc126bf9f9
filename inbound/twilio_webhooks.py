"""Twilio webhooks: inbound SMS and delivery status. Authenticate, store durably, then acknowledge.

The signature is checked over the configured public URL + path (Twilio signs the URL it was
given, which behind a proxy is not `request.url`). Nothing is written for a request that fails
the check. Inbound SMS are acknowledged with empty TwiML only after the sealed event is stored.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web
from multidict import MultiDictProxy
from pymongo.errors import PyMongoError
from twilio.request_validator import RequestValidator

from gateway.errors import StoreUnavailable, ValidationError
from gateway.messaging.contacts import Contacts
from gateway.messaging.delivery import STATUS_RANK, Delivery
from gateway.messaging.phone import normalize_e164
from gateway.storage.intake import EventIntake
from gateway.tenancy.orgs import Orgs

logger = logging.getLogger(__name__)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
_SID = re.compile(r"^(SM|MM)[0-9a-fA-F]{32}$")
_ACCOUNT = re.compile(r"^AC[0-9a-fA-F]{32}$")
MAX_MEDIA = 10
MAX_FIELD = 5000


def _twiml(status: int = 200) -> web.Response:
    return web.Response(text=EMPTY_TWIML, content_type="text/xml", status=status)


def _error(status: int, message: str) -> web.Response:
    return web.Response(text=message + "\n", status=status, content_type="text/plain")


class TwilioWebhooks:
    """`public_url` is the gateway's URL as Twilio was given it (the signature covers it);
    `auth_token` checks the signature (none: every request is refused); `account_sid`, when set,
    must be the request's AccountSid."""

    def __init__(self, events: EventIntake, delivery: Delivery, orgs: Orgs, contacts: Contacts, *,
                 public_url: str, auth_token: str, account_sid: str) -> None:
        self._events = events
        self._delivery = delivery
        self._orgs = orgs
        self._contacts = contacts
        self._public_url = public_url
        self._account_sid = account_sid
        self._validator = RequestValidator(auth_token) if auth_token else None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/webhooks/twilio/sms", self.inbound_sms)
        app.router.add_post("/webhooks/twilio/status", self.status)

    async def _authenticated_form(self, request: web.Request) -> dict[str, str] | web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return _error(415, "expected application/x-www-form-urlencoded")
        form: MultiDictProxy[str | bytes] = await request.post()  # type: ignore[assignment]
        if len(set(form.keys())) != len(form):
            return _error(400, "duplicate form fields")
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        signature = request.headers.get("X-Twilio-Signature", "")
        url = self._public_url + request.path_qs
        if self._validator is None or not signature or not self._validator.validate(url, params, signature):
            logger.warning("twilio webhook rejected: bad signature", extra={"fields": {"path": request.path}})
            return _error(403, "invalid X-Twilio-Signature")
        if self._account_sid and params.get("AccountSid") != self._account_sid:
            return _error(403, "AccountSid does not match this gateway")
        if any(len(v) > MAX_FIELD for v in params.values()):
            return _error(413, "field too long")
        return params

    async def inbound_sms(self, request: web.Request) -> web.Response:
        params = await self._authenticated_form(request)
        if isinstance(params, web.Response):
            return params
        sid = params.get("MessageSid", "")
        if not _SID.match(sid):
            return _error(400, "MessageSid missing or malformed")
        if not params.get("From") or not (params.get("To") or params.get("MessagingServiceSid")):
            return _error(400, "From and To are required")
        try:
            num_media = int(params.get("NumMedia", "0") or "0")
        except ValueError:
            return _error(400, "NumMedia must be a number")
        if not 0 <= num_media <= MAX_MEDIA:
            return _error(400, f"NumMedia must be between 0 and {MAX_MEDIA}")
        try:
            org = await self._orgs.by_recipient(params.get("To"), params.get("MessagingServiceSid"))
            _, new = await self._events.store_event(
                provider="twilio", provider_id=sid, org_id=org.id if org else None, kind="sms",
                payload=params, state="pending" if org else "unroutable",
                sender=self._sender(org.id, params["From"]) if org else None,
            )
        except (StoreUnavailable, PyMongoError):
            return _error(503, "temporarily unavailable, retry")
        # One record per inbound SMS, by ids only: never the body or the number (ASVS 5.0 16.2.5).
        fields = {"message_sid": sid, "org_id": org.id if org else None, "num_media": num_media}
        if not new:
            logger.debug("inbound SMS repeated by the provider; stored before", extra={"fields": fields})
        elif org is None:
            logger.warning("inbound SMS to a number no organization owns; stored for review",
                           extra={"fields": fields})
        else:
            logger.info("inbound SMS stored", extra={"fields": fields})
        return _twiml()

    def _sender(self, org_id: str, sender: str) -> str:
        """Who sent it, as the contacts' blind index of the number (the processor's per-sender order)."""
        try:
            sender = normalize_e164(sender, field="From")
        except ValidationError:
            sender = sender.strip()  # not a phone number (processing refuses it): still one key per sender
        return self._contacts.phone_index(org_id, sender)

    async def status(self, request: web.Request) -> web.Response:
        params = await self._authenticated_form(request)
        if isinstance(params, web.Response):
            return params
        sid = params.get("MessageSid", "")
        status = params.get("MessageStatus") or params.get("SmsStatus") or ""
        if not _SID.match(sid) or status not in STATUS_RANK:
            return _error(400, "MessageSid or MessageStatus missing or malformed")
        error_code = params.get("ErrorCode") or None
        try:
            await self._delivery.record(sid, status, error_code)
        except PyMongoError:
            return _error(503, "temporarily unavailable, retry")
        return _twiml()

