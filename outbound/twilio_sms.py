"""SmsSender over Twilio's Messages API, through the official library's async client.

Twilio's errors are translated here and nowhere else (gateway/errors.py):

    TwilioRestException 429, 5xx      -> ProviderTransient(code=<Twilio code>)
    TwilioRestException other 4xx     -> ProviderPermanent(code=<Twilio code>), e.g. "21610"
                                         opted out, "21211" invalid To, "20003" bad credentials
    connection errors, timeouts       -> ProviderTransient(code="network")

MMS media is downloaded from the MediaUrl a webhook names, with the account's credentials, and
only from this account's Messages resource on the configured API (any other URL is refused: a
webhook's URL never makes us send credentials elsewhere). Twilio answers with a redirect to its
media CDN; aiohttp drops the credentials on that cross-origin hop.

Twilio's own error text can quote the recipient ("The 'To' number +1555... is not a valid
phone number"), so it never reaches our messages or logs: they carry status and code only.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from typing import Self
from urllib.parse import urlsplit

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from gateway.errors import ProviderPermanent, ProviderTransient
from gateway.ports import Media, SentSms

logger = logging.getLogger(__name__)

_MESSAGING_SERVICE_PREFIX = "MG"
TWILIO_API = "https://api.twilio.com"
_SID_PART = re.compile(r"^[A-Z]{2}[0-9a-f]{32}$")


def mask_number(number: str) -> str:
    """Return `number` with all but its first two and last four characters starred."""
    if len(number) <= 6:
        return "*" * len(number)
    return number[:2] + "*" * (len(number) - 6) + number[-4:]


class TwilioSmsSender:
    """Send and redact SMS through Twilio (or a Twilio-compatible API at `api_base`)."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_base: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._api_base = api_base
        self._timeout = timeout
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Client | None = None
        self._media_http: aiohttp.ClientSession | None = None

    async def send_sms(
        self, *, from_number: str, to_number: str, body: str, status_callback: str | None
    ) -> SentSms:
        """Ask Twilio to send `body` from an E.164 number or a Messaging Service SID ("MG...")."""
        sender: dict[str, str] = (
            {"messaging_service_sid": from_number}
            if from_number.startswith(_MESSAGING_SERVICE_PREFIX)
            else {"from_": from_number}
        )
        if status_callback is not None:
            sender["status_callback"] = status_callback
        messages = self._client_now().messages
        try:
            async with asyncio.timeout(self._timeout):
                message = await messages.create_async(to=to_number, body=body, **sender)
        except (TwilioRestException, TwilioServiceException) as err:
            raise _provider_error("send", err, to_number) from err
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise _network_error("send", err, to_number) from err
        if not message.sid:
            raise ProviderTransient("twilio send: response had no message sid", code="response")
        logger.info(
            "twilio accepted sms",
            extra={"provider_id": message.sid, "to": mask_number(to_number)},
        )
        return SentSms(provider_id=message.sid, status=str(message.status or "queued"))

    async def redact_sms(self, provider_id: str) -> None:
        """Blank the stored body of message `provider_id` at Twilio (update with Body="") and
        delete its media."""
        # https://www.twilio.com/docs/messaging/api/message-resource#update-a-message-resource
        # https://www.twilio.com/docs/messaging/api/media-resource#delete-a-media-resource
        context = self._client_now().messages(provider_id)
        try:
            async with asyncio.timeout(self._timeout):
                await context.update_async(body="")
                for media in await context.media.list_async():
                    await context.media(media.sid).delete_async()
        except (TwilioRestException, TwilioServiceException) as err:
            raise _provider_error("redact", err, None) from err
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise _network_error("redact", err, None) from err
        logger.info("twilio redacted sms", extra={"provider_id": provider_id})

    async def fetch_media(self, url: str, *, max_bytes: int) -> Media:
        """Download one MMS media item (see the module docstring)."""
        if not self._is_our_media(url):
            logger.warning("twilio media url refused: not this account's media")
            raise ProviderPermanent("twilio media refused: not a media URL of this account", code="media_url")
        if self._media_http is None:
            self._media_http = aiohttp.ClientSession()
        try:
            # aiohttp removes the Authorization header on a redirect to another origin (the CDN).
            basic = base64.b64encode(f"{self._account_sid}:{self._auth_token}".encode()).decode()
            async with asyncio.timeout(self._timeout), self._media_http.get(
                    url, headers={"Authorization": "Basic " + basic}, max_redirects=3) as resp:
                if resp.status != 200:
                    status = resp.status
                    message = f"twilio media failed: HTTP {status}"
                    logger.warning("twilio media failed", extra={"http_status": status})
                    if status == 429 or status >= 500:
                        raise ProviderTransient(message, code=str(status))
                    raise ProviderPermanent(message, code=str(status))
                if (resp.content_length or 0) > max_bytes:
                    raise ProviderPermanent("twilio media too large", code="media_too_large")
                # To the end of the body, however it arrives in chunks, never holding more than the cap.
                data = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > max_bytes:
                        raise ProviderPermanent("twilio media too large", code="media_too_large")
                if resp.content_length is not None and len(data) != resp.content_length:
                    raise ProviderTransient("twilio media cut short", code="network")
                content_type = resp.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip()
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise _network_error("media", err, None) from err
        return Media(content_type=content_type or "application/octet-stream", data=bytes(data))

    def _is_our_media(self, url: str) -> bool:
        """/2010-04-01/Accounts/<this account>/Messages/<sid>/Media/<sid> on the configured API."""
        base = urlsplit(self._api_base or TWILIO_API)
        found = urlsplit(url)
        if (found.scheme, found.netloc) != (base.scheme, base.netloc) or found.query or found.fragment:
            return False
        parts = found.path.split("/")
        return (len(parts) == 8 and parts[:4] == ["", "2010-04-01", "Accounts", self._account_sid]
                and parts[4] == "Messages" and parts[6] == "Media"
                and bool(_SID_PART.match(parts[5])) and bool(_SID_PART.match(parts[7])))

    async def close(self) -> None:
        """Close the HTTP session; a later call opens a new one."""
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()
        media, self._media_http = self._media_http, None
        if media is not None:
            await media.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _client_now(self) -> Client:
        # Built on first use, inside the event loop: AsyncTwilioHttpClient opens its aiohttp
        # ClientSession in its constructor. Its `timeout` argument is stored but never passed
        # to the request (twilio 9.13 http/async_http_client.py), so each call is bounded by
        # asyncio.timeout instead.
        if self._client is None:
            self._http = AsyncTwilioHttpClient()
            client = Client(self._account_sid, self._auth_token, http_client=self._http)
            if self._api_base is not None:
                # Domain.absolute_url builds every URL from base_url; edge/region (possibly
                # from TWILIO_EDGE / TWILIO_REGION) would rewrite the host, so drop them.
                client.api.base_url = self._api_base
                client.edge = None
                client.region = None
            self._client = client
        return self._client


def _provider_error(
    operation: str, err: TwilioRestException | TwilioServiceException, to_number: str | None
) -> ProviderTransient | ProviderPermanent:
    status = int(err.status)
    code = str(err.code) if err.code is not None else str(status)
    # Deliberately not err.msg / err.detail: Twilio's text may quote the number.
    message = f"twilio {operation} failed: HTTP {status}, code {code}"
    transient = status == 429 or status >= 500
    logger.warning(
        "twilio %s failed",
        operation,
        extra={
            "http_status": status,
            "provider_code": code,
            "retryable": transient,
            "to": mask_number(to_number) if to_number else None,
        },
    )
    if transient:
        return ProviderTransient(message, code=code)
    return ProviderPermanent(message, code=code)


def _network_error(operation: str, err: BaseException, to_number: str | None) -> ProviderTransient:
    kind = "timeout" if isinstance(err, TimeoutError) else type(err).__name__
    logger.warning(
        "twilio %s unreachable",
        operation,
        extra={"error": kind, "to": mask_number(to_number) if to_number else None},
    )
    return ProviderTransient(f"twilio {operation} failed: {kind}", code="network")
