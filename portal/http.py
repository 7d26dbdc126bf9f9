"""HTTP plumbing shared by every surface: security headers, error mapping, client IP (the rate
limiter is gateway/security/ratelimit.py, shared with the SMTP listener)."""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pymongo.errors import PyMongoError

from gateway.errors import (
    Conflict,
    Forbidden,
    HushlinkError,
    IntegrityError,
    LinkUnavailable,
    NotFound,
    OptedOut,
    PinRejected,
    PinRequired,
    SensitiveContent,
    StoreUnavailable,
    ValidationError,
)

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NONCE = web.RequestKey("csp_nonce", str)


def csp(nonce: str) -> str:
    return (
        "default-src 'self'; "
        f"script-src 'self' 'nonce-{nonce}'; "
        "style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )


def security_headers(https: bool) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[NONCE] = secrets.token_urlsafe(16)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
            _apply(request, response, https)
            raise
        _apply(request, response, https)
        return response

    return middleware


def _apply(request: web.Request, response: web.StreamResponse, https: bool) -> None:
    h = response.headers
    h["Referrer-Policy"] = "no-referrer"
    h["X-Content-Type-Options"] = "nosniff"
    h["X-Frame-Options"] = "DENY"
    h.setdefault("Cache-Control", "no-store")
    if https:
        h["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    if request.path.startswith(("/s/", "/s")):
        h["X-Robots-Tag"] = "noindex, nofollow"
    ctype = h.get("Content-Type", "")
    if ctype.startswith("text/html"):
        h["Content-Security-Policy"] = csp(request.get(NONCE, "none"))
        h["Cross-Origin-Opener-Policy"] = "same-origin"


def _api_error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


ErrorPage = Callable[[web.Request, int, str], web.Response]


def error_mapping(html_page: ErrorPage) -> Any:
    """Map domain errors to HTTP: JSON under /api/, a page elsewhere. Never a stack trace."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        api = request.path.startswith("/api/")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if api and exc.status >= 400 and exc.content_type != "application/json":
                code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
                return _api_error(exc.status, code, exc.reason)
            raise
        except Conflict as err:
            return _api_error(409, "conflict", str(err), field=err.field) if api else html_page(request, 409, str(err))
        except ValidationError as err:
            if api:
                return _api_error(422, err.code if err.code != "invalid" else "invalid_field",
                                  str(err), field=err.field)
            return html_page(request, 422, str(err))
        except NotFound:
            return _api_error(404, "not_found", "not found") if api else html_page(request, 404, "Not found")
        except Forbidden:
            return _api_error(403, "forbidden", "not allowed") if api else html_page(request, 403, "Not allowed")
        except OptedOut as err:
            msg = f"the contact has opted out of {err.args[0] if err.args else 'this channel'}"
            return _api_error(422, "opted_out", msg) if api else html_page(request, 422, msg)
        except SensitiveContent as err:
            msg = (f"this standard (non-secure) message looks sensitive ({', '.join(err.kinds)}); "
                   "send it secure, or set allow_sensitive to override")
            return _api_error(422, "sensitive_content", msg, kinds=err.kinds) if api else html_page(request, 422, msg)
        except PinRequired:
            msg = "this organization requires a PIN for secure messages; set one for this contact first"
            return _api_error(422, "pin_required", msg, field="pin") if api else html_page(request, 422, msg)
        except (LinkUnavailable, PinRejected):
            raise  # handled by the client portal itself
        except (StoreUnavailable, PyMongoError) as err:
            logger.warning("database unavailable during request",
                           extra={"fields": {"path": request.path, "error": type(err).__name__}})
            if api:
                return _api_error(503, "unavailable", "temporarily unavailable, retry")
            return html_page(request, 503, "Temporarily unavailable. Please try again shortly.")
        except IntegrityError:
            logger.error("integrity failure while serving a request", extra={"fields": {"path": request.path}})
            return _api_error(500, "integrity", "stored data failed an integrity check") if api \
                else html_page(request, 500, "Something went wrong.")
        except HushlinkError as err:
            logger.warning("unhandled domain error", extra={"fields": {"error": type(err).__name__}})
            return _api_error(400, "bad_request", "bad request") if api else html_page(request, 400, "Bad request")

    return middleware


def client_ip(request: web.Request, trusted_proxies: tuple[str, ...]) -> str:
    """The client's address: X-Forwarded-For is believed only from a configured proxy."""
    peer = request.remote or "unknown"
    if not trusted_proxies or peer == "unknown":
        return peer
    try:
        peer_ip = ipaddress.ip_address(peer)
        trusted = any(peer_ip in ipaddress.ip_network(p, strict=False) for p in trusted_proxies)
    except ValueError:
        return peer
    if not trusted:
        return peer
    forwarded = request.headers.get("X-Forwarded-For", "")
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    return hops[-1] if hops else peer


def same_origin(request: web.Request, public_url: str) -> bool:
    """Is this state-changing request from our own pages? The one check for every surface (client
    portal, staff portal, sandbox), a second line behind the CSRF token (OWASP CSRF Prevention,
    "Verifying Origin with standard headers"; Fetch Metadata).

    - `Sec-Fetch-Site`, when sent (every current browser), must be `same-origin`: cross-site and
      same-site (a sibling subdomain) posts are refused, and so is `none`, which a form POST
      never legitimately carries.
    - `Origin`, when sent, must be `public_url`. Our pages send `Referrer-Policy: no-referrer`,
      under which browsers send `Origin: null` even on a same-origin form POST (Fetch, "serializing
      a request origin"), so `null` is accepted only when the browser also vouches
      `Sec-Fetch-Site: same-origin`; a `null` Origin on its own (sandboxed frames, data: URLs,
      redirects) is refused.
    - Neither header: not a browser (or a very old one); the CSRF token decides.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin == "null":
        return site == "same-origin"
    return origin.rstrip("/") == public_url.rstrip("/")


# -- bodies that cannot be read -------------------------------------------------------------------
# Every edge answers 400 for a body it cannot parse (issue 9), never 500: bad bytes for the charset,
# an unknown charset, broken multipart, JSON nested past any use (json.loads raises RecursionError
# near Python's recursion limit), or a string with a lone surrogate (valid JSON, not valid Unicode,
# and unstorable).

FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
# Deeper than any request of the API (its documents nest three levels).
MAX_JSON_DEPTH = 32


def parse_json(body: bytes, charset: str | None = None) -> Any:
    """Decode and parse a JSON request body; ValueError with a short reason if it cannot be read."""
    try:
        text = body.decode(charset or "utf-8")
    except LookupError:
        raise ValueError(f"unknown charset {charset[:40]!r}" if charset else "unknown charset") from None
    except UnicodeDecodeError:
        raise ValueError(f"the body is not valid {charset or 'UTF-8'}") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"the body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError:
        raise ValueError("the body is not valid JSON") from None
    _check_json(data)
    return data


def _check_json(data: Any) -> None:
    """Depth and lone surrogates, walked without recursion."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("the body has a string with a lone surrogate (\\ud800-\\udfff)") from None
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"the body is nested more than {MAX_JSON_DEPTH} levels deep")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)


def readable_forms(html_page: ErrorPage) -> Any:
    """Read a posted form before any handler does; one that cannot be read is answered 400.

    aiohttp keeps the parsed form, so the handler's own `await request.post()` reads it from there.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in ("POST", "PUT", "PATCH") and request.content_type in FORM_TYPES:
            try:
                await request.post()
            except web.HTTPException:
                raise  # 413: larger than max_body_bytes
            except (ValueError, LookupError, AssertionError, RuntimeError) as err:
                logger.info("unreadable form refused", extra={"fields": {"path": request.path,
                                                                         "error": type(err).__name__}})
                message = "the form could not be read (its encoding or multipart structure is broken)"
                if request.path.startswith(("/api/", "/webhooks/")):
                    return _api_error(400, "invalid_body", message)
                return html_page(request, 400, "Bad request: " + message)
        return await handler(request)

    return middleware
