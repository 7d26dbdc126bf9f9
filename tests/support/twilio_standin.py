"""A Twilio-compatible REST server on loopback, for tests that drive the real `twilio` library.

It speaks the slice of the Programmable Messaging API that Hushlink uses
(https://www.twilio.com/docs/messaging/api/message-resource): create, fetch and update
(`Body=""` redacts) a Message, and the Media of an inbound MMS: its content at the MediaUrl a
webhook names (redirected to a "CDN" path, as Twilio does), list and delete
(https://www.twilio.com/docs/messaging/api/media-resource), with HTTP Basic auth and Twilio's
legacy error JSON. It records
what it received, can be scripted to fail or stall, and can play Twilio's part in webhooks:
signed status callbacks and signed inbound SMS
(https://www.twilio.com/docs/usage/security#validating-requests).

    async with TwilioStandIn() as twilio:
        sender = TwilioSmsSender(twilio.account_sid, twilio.auth_token, api_base=twilio.base_url)
        twilio.fail_next(status=429, code=20429)
        ...
        await twilio.send_status(sid, "delivered")
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

API_VERSION = "2010-04-01"
SIGNATURE_HEADER = "X-Twilio-Signature"

# Where a callback is really POSTed: a base URL whose scheme and host replace the signed URL's,
# or a function from the signed URL to the real one.
DeliverTo = str | Callable[[str], str]

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
# GSM 03.38 basic set; anything outside it makes Twilio encode the message as UCS-2.
_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_DEFAULT_CODES = {401: 20003, 404: 20404, 429: 20429, 500: 20500, 503: 20503}
_RECORD = web.RequestKey("standin_record", dict)


def new_sid(prefix: str) -> str:
    """Return a Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def sign(url: str, params: Mapping[str, str], auth_token: str) -> str:
    """Return the X-Twilio-Signature Twilio would send for a form POST of `params` to `url`."""
    return str(RequestValidator(auth_token).compute_signature(url, dict(params)))


def inbound_sms_params(
    *,
    frm: str,
    to: str,
    body: str,
    account_sid: str,
    sid: str | None = None,
    messaging_service_sid: str | None = None,
) -> dict[str, str]:
    """Return the form Twilio POSTs to a number's incoming-message webhook for a plain SMS."""
    sid = sid or new_sid("SM")
    params = {
        "MessageSid": sid,
        "SmsSid": sid,
        "SmsMessageSid": sid,
        "AccountSid": account_sid,
        "From": frm,
        "To": to,
        "Body": body,
        "NumMedia": "0",
        "NumSegments": str(_segments(body)),
        "SmsStatus": "received",
        "ApiVersion": API_VERSION,
    }
    if messaging_service_sid is not None:
        params["MessagingServiceSid"] = messaging_service_sid
    return params


def _segments(body: str) -> int:
    """Count SMS segments as carriers do: 160/153 GSM-7 characters, 70/67 UCS-2."""
    single, multi = (160, 153) if set(body) <= _GSM7 else (70, 67)
    if len(body) <= single:
        return 1
    return -(-len(body) // multi)


def _rewrite(url: str, deliver_to: DeliverTo | None) -> str:
    if deliver_to is None:
        return url
    if callable(deliver_to):
        return deliver_to(url)
    base = urlsplit(deliver_to)
    parts = urlsplit(url)
    return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))


def _now() -> str:
    # Twilio's REST API dates are RFC 2822, e.g. "Thu, 01 Jan 2026 12:00:00 +0000".
    return format_datetime(datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class _Step:
    """One scripted reaction to the next API request."""

    delay: float = 0.0
    status: int | None = None  # None: answer normally (after the delay)
    code: int | None = None
    message: str | None = None
    raw: str | None = None  # a non-JSON body, e.g. a proxy's HTML error page


class TwilioStandIn:
    """A Messages API on 127.0.0.1 with recorded requests, scripted faults and webhook sending.

    Attributes tests read:
      messages    one dict per accepted create, as received (sid, to, from,
                  messaging_service_sid, body, status_callback)
      store       sid -> the live Message resource (redaction and send_status change it)
      redactions  sids whose body was set to "" through the API
      requests    every API request: method, path, form, authorized, status
      callbacks   every webhook sent: url, actual_url, params, signature, status, text
      opted_out   numbers that always get 400 / 21610 (STOP received)
      media       message sid -> its media: {sid: (content type, bytes)}; deleting removes one
    """

    def __init__(
        self,
        *,
        account_sid: str | None = None,
        auth_token: str | None = None,
        deliver_to: DeliverTo | None = None,
        pool_number: str = "+15005550006",
    ) -> None:
        self.account_sid = account_sid or new_sid("AC")
        self.auth_token = auth_token or secrets.token_hex(16)
        self.deliver_to = deliver_to
        self.pool_number = pool_number  # the sender a Messaging Service picks
        self.messages: list[dict[str, str | None]] = []
        self.store: dict[str, dict[str, Any]] = {}
        self.redactions: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.callbacks: list[dict[str, Any]] = []
        self.opted_out: set[str] = set()
        self.media: dict[str, dict[str, tuple[str, bytes]]] = {}
        self._script: deque[_Step] = deque()
        self._cdn_objects: dict[str, tuple[str, bytes]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = asyncio.Event()
        self._base_url: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Return the API root to give the client, e.g. "http://127.0.0.1:54321"."""
        if self._base_url is None:
            raise RuntimeError("TwilioStandIn is not started")
        return self._base_url

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        prefix = f"/{API_VERSION}/Accounts/{{account_sid}}/Messages"
        app.router.add_post(prefix + ".json", self._create)
        app.router.add_get(prefix + "/{sid}.json", self._fetch)
        app.router.add_post(prefix + "/{sid}.json", self._update)
        app.router.add_get(prefix + "/{sid}/Media.json", self._list_media)
        app.router.add_get(prefix + "/{sid}/Media/{media_sid}", self._media_content)
        app.router.add_delete(prefix + "/{sid}/Media/{media_sid}.json", self._delete_media)
        app.router.add_get("/cdn/{token}", self._cdn)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._base_url = f"http://{host}:{port}"
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        """Stop listening; stalled requests end at once."""
        self._closing.set()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- scripting -------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        code: int | None = None,
        message: str | None = None,
        *,
        raw: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` authenticated API requests with this error."""
        for _ in range(times):
            self._script.append(_Step(status=status, code=code, message=message, raw=raw))

    def delay_next(self, seconds: float) -> None:
        """Stall the next authenticated API request for `seconds`, then answer it normally."""
        self._script.append(_Step(delay=seconds))

    # -- webhooks (Twilio -> gateway) ------------------------------------------------------

    async def send_status(
        self,
        sid: str,
        status: str,
        *,
        error_code: int | str | None = None,
        deliver_to: DeliverTo | None = None,
        signing_token: str | None = None,
    ) -> int:
        """POST a signed status callback for message `sid`; return the HTTP status received.

        The signature covers the StatusCallback URL as given at create time; `deliver_to`
        (or the instance's) only changes where the request really goes. `signing_token`
        signs with another token, to forge a callback.
        """
        message = self.store[sid]
        url = message["status_callback"]
        if not url:
            raise ValueError(f"message {sid} has no StatusCallback")
        message["status"] = status
        message["error_code"] = int(error_code) if error_code is not None else None
        message["date_updated"] = _now()
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "AccountSid": self.account_sid,
            "From": message["from"] or self.pool_number,
            "To": message["to"],
            "ApiVersion": API_VERSION,
        }
        if message["messaging_service_sid"]:
            params["MessagingServiceSid"] = message["messaging_service_sid"]
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return await self.post_webhook(
            url, params, deliver_to=deliver_to, signing_token=signing_token
        )

    def add_media(self, message_sid: str, content_type: str, data: bytes) -> str:
        """Attach media to an inbound message; returns its MediaUrl (as a webhook names it)."""
        media_sid = new_sid("ME")
        self.media.setdefault(message_sid, {})[media_sid] = (content_type, data)
        return f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}/Messages/{message_sid}/Media/{media_sid}"

    def mms_params(self, *, frm: str, to: str, body: str, media: list[tuple[str, bytes]],
                   sid: str | None = None) -> dict[str, str]:
        """The webhook form of an inbound MMS whose media this stand-in serves."""
        params = inbound_sms_params(frm=frm, to=to, body=body, account_sid=self.account_sid,
                                    sid=sid or new_sid("MM"))
        params["NumMedia"] = str(len(media))
        sid = params["MessageSid"]
        now = _now()
        self.store[sid] = {  # Twilio keeps the inbound message as a resource too
            "sid": sid, "account_sid": self.account_sid, "from": frm, "to": to, "body": body,
            "status": "received", "direction": "inbound", "num_media": str(len(media)),
            "date_created": now, "date_updated": now,
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"}
        for i, (content_type, data) in enumerate(media):
            params[f"MediaUrl{i}"] = self.add_media(params["MessageSid"], content_type, data)
            params[f"MediaContentType{i}"] = content_type
        return params

    async def send_inbound_sms(
        self,
        url: str,
        *,
        frm: str,
        to: str,
        body: str,
        messaging_service_sid: str | None = None,
        deliver_to: DeliverTo | None = None,
    ) -> int:
        """POST a signed incoming-message webhook; return the HTTP status received."""
        params = inbound_sms_params(
            frm=frm,
            to=to,
            body=body,
            account_sid=self.account_sid,
            messaging_service_sid=messaging_service_sid,
        )
        return await self.post_webhook(url, params, deliver_to=deliver_to)

    async def post_webhook(
        self,
        url: str,
        params: Mapping[str, str],
        *,
        deliver_to: DeliverTo | None = None,
        signing_token: str | None = None,
    ) -> int:
        """POST `params` as a form signed over `url`; return the HTTP status received."""
        if self._session is None:
            raise RuntimeError("TwilioStandIn is not started")
        signature = sign(url, params, signing_token or self.auth_token)
        actual = _rewrite(url, deliver_to if deliver_to is not None else self.deliver_to)
        async with self._session.post(
            actual,
            data=dict(params),
            headers={SIGNATURE_HEADER: signature},
            allow_redirects=False,
        ) as resp:
            text = await resp.text()
        self.callbacks.append(
            {
                "url": url,
                "actual_url": actual,
                "params": dict(params),
                "signature": signature,
                "status": resp.status,
                "text": text,
            }
        )
        return resp.status

    # -- REST API (client -> Twilio) -------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        form, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        to = form.get("To", "")
        frm = form.get("From")
        service = form.get("MessagingServiceSid")
        body = form.get("Body")
        if not to:
            return self._error(request, 400, 21604, "A 'To' phone number is required.")
        if not _E164.match(to):
            return self._error(
                request, 400, 21211, f"The 'To' number {to} is not a valid phone number."
            )
        if not frm and not service:
            return self._error(request, 400, 21603, "A 'From' phone number is required.")
        if body is None or body == "":
            return self._error(request, 400, 21602, "Message body is required.")
        if to in self.opted_out:
            return self._error(request, 400, 21610, "Attempt to send to unsubscribed recipient")
        sid = new_sid("SM")
        callback = form.get("StatusCallback")
        self.messages.append(
            {
                "sid": sid,
                "to": to,
                "from": frm,
                "messaging_service_sid": service,
                "body": body,
                "status_callback": callback,
            }
        )
        now = _now()
        resource: dict[str, Any] = {
            "sid": sid,
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "to": to,
            "from": frm,  # null until a Messaging Service picks a sender
            "messaging_service_sid": service,
            "body": body,
            # A Messaging Service send is "accepted" first, a direct one "queued".
            "status": "queued" if frm else "accepted",
            "direction": "outbound-api",
            "num_segments": str(_segments(body)),
            "num_media": "0",
            "price": None,
            "price_unit": "USD",
            "error_code": None,
            "error_message": None,
            "date_created": now,
            "date_updated": now,
            "date_sent": None,
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json",
            "subresource_uris": {
                "media": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}/Media.json"
            },
            "status_callback": callback,
        }
        self.store[sid] = resource
        return self._answer(request, 201, _public(resource))

    async def _fetch(self, request: web.Request) -> web.Response:
        _, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        resource = self.store.get(request.match_info["sid"])
        if resource is None:
            return self._not_found(request)
        return self._answer(request, 200, _public(resource))

    async def _update(self, request: web.Request) -> web.Response:
        form, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        sid = request.match_info["sid"]
        resource = self.store.get(sid)
        if resource is None:
            return self._not_found(request)
        if "Body" in form:
            if form["Body"] != "":
                return self._error(
                    request, 400, 20001, "Body can only be updated to an empty string"
                )
            resource["body"] = ""
            resource["date_updated"] = _now()
            self.redactions.append(sid)
        return self._answer(request, 200, _public(resource))

    async def _list_media(self, request: web.Request) -> web.Response:
        _, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        sid = request.match_info["sid"]
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}/Media"
        items = [{"sid": msid, "account_sid": self.account_sid, "parent_sid": sid, "content_type": ctype,
                  "date_created": _now(), "date_updated": _now(), "uri": f"{base}/{msid}.json"}
                 for msid, (ctype, _) in self.media.get(sid, {}).items()]
        return self._answer(request, 200, {
            "media_list": items, "page": 0, "page_size": 50, "first_page_uri": base + ".json?Page=0&PageSize=50",
            "next_page_uri": None, "previous_page_uri": None, "uri": base + ".json?Page=0&PageSize=50",
            "start": 0, "end": max(0, len(items) - 1)})

    async def _media_content(self, request: web.Request) -> web.StreamResponse:
        """The MediaUrl: authenticated, then a redirect to the content (Twilio serves it from a CDN)."""
        _, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        found = self.media.get(request.match_info["sid"], {}).get(request.match_info["media_sid"])
        if found is None:
            return self._not_found(request)
        token = secrets.token_urlsafe(16)
        self._cdn_objects[token] = found
        request[_RECORD]["status"] = 307
        # Another origin (localhost, not 127.0.0.1), as Twilio's CDN is another host.
        port = urlsplit(self.base_url).port
        raise web.HTTPTemporaryRedirect(f"http://localhost:{port}/cdn/{token}")

    async def _cdn(self, request: web.Request) -> web.Response:
        """The redirect's target: no Twilio credentials may arrive here."""
        self.requests.append({"method": "GET", "path": "/cdn", "form": {},
                              "authorized": "Authorization" in request.headers, "status": 200})
        found = self._cdn_objects.pop(request.match_info["token"], None)
        if found is None:
            return web.Response(status=404)
        content_type, data = found
        return web.Response(body=data, content_type=content_type)

    async def _delete_media(self, request: web.Request) -> web.Response:
        _, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        if self.media.get(request.match_info["sid"], {}).pop(request.match_info["media_sid"], None) is None:
            return self._not_found(request)
        request[_RECORD]["status"] = 204
        return web.Response(status=204)

    async def _admit(self, request: web.Request) -> tuple[dict[str, str], web.Response | None]:
        """Record the request, check credentials and account, then play any scripted step."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        authorized = self._authorized(request)
        record: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "form": form,
            "authorized": authorized,
            "status": None,
        }
        self.requests.append(record)
        request[_RECORD] = record
        if not authorized:
            return form, self._error(request, 401, 20003, "Authenticate")
        if request.match_info["account_sid"] != self.account_sid:
            return form, self._not_found(request)
        if not self._script:
            return form, None
        step = self._script.popleft()
        if step.delay:
            try:
                await asyncio.wait_for(self._closing.wait(), step.delay)
            except TimeoutError:
                pass
        if step.status is None:
            return form, None
        if step.raw is not None:
            record["status"] = step.status
            return form, web.Response(status=step.status, text=step.raw, content_type="text/html")
        code = step.code if step.code is not None else _DEFAULT_CODES.get(step.status)
        return form, self._error(request, step.status, code, step.message or "Scripted failure")

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            login, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        expected = f"{self.account_sid}:{self.auth_token}"
        return secrets.compare_digest(f"{login}:{password}".encode(), expected.encode())

    def _not_found(self, request: web.Request) -> web.Response:
        return self._error(
            request, 404, 20404, f"The requested resource {request.path} was not found"
        )

    def _error(
        self, request: web.Request, status: int, code: int | None, message: str
    ) -> web.Response:
        more_info = f"https://www.twilio.com/docs/errors/{code}" if code else None
        payload = {"code": code, "message": message, "more_info": more_info, "status": status}
        return self._answer(request, status, payload)

    def _answer(
        self, request: web.Request, status: int, payload: Mapping[str, Any]
    ) -> web.Response:
        request[_RECORD]["status"] = status
        return web.json_response(dict(payload), status=status)


def _public(resource: Mapping[str, Any]) -> dict[str, Any]:
    """Return the resource as the API shows it (StatusCallback is not echoed back)."""
    return {k: v for k, v in resource.items() if k != "status_callback"}
