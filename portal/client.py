"""The client portal (/s/...): link page → PIN → conversation, reply, sign-out, new-link request.

GET and HEAD never change anything (mail scanners and link previews fetch links); opening
happens on POST, which swaps the token for a session cookie and redirects to a token-free URL.
Unknown, expired, revoked and locked links all get the same page and status.

The per-IP failure limiter answers first: a client over it gets 429 before its PIN is looked
at, so a throttled guess is neither counted nor able to succeed, and tells nothing. Wrong PINs
are counted per thread (gateway/security/links.py), so a fresh link does not bring fresh guesses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import tzinfo
from typing import Any

from aiohttp import web

from gateway.errors import LinkUnavailable, PinRejected, ValidationError
from gateway.ids import is_id, new_id
from gateway.messaging.attachments import Attachments, may_have_files
from gateway.messaging.contacts import Contacts
from gateway.messaging.conversations import Conversations, validate_body
from gateway.messaging.views import ClientViews
from gateway.rules.pin import PinDecision, pin_for_link
from gateway.rules.reply_route import reply_route
from gateway.security.audit import Actor, AuditLog
from gateway.security.links import Links
from gateway.security.ratelimit import RateLimiter
from gateway.security.sessions import Sessions
from gateway.security.tokens import csrf_ok, csrf_token, looks_like_token, token_hash
from gateway.storage.store import Doc
from gateway.tenancy.orgs import Orgs
from portal import attachments
from portal.http import client_ip, same_origin
from portal.render import local_time, render
from portal.strings import STRINGS

logger = logging.getLogger(__name__)

PAGE = 50  # messages on the conversation page (older ones one page at a time)


class ClientPortal:
    def __init__(
        self, *, orgs: Orgs, contacts: Contacts, links: Links, sessions: Sessions, conversations: Conversations,
        attachments: Attachments, views: ClientViews, audit: AuditLog, csrf_secret: bytes, public_url: str,
        trusted_proxies: tuple[str, ...], https: bool, on_queued: Callable[[], None],
    ) -> None:
        self._orgs = orgs
        self._contacts = contacts
        self._links = links
        self._sessions = sessions
        self._conversations = conversations
        self._files = attachments
        self._views = views
        self._audit = audit
        self._secret = csrf_secret
        self._public_url = public_url
        self._trusted_proxies = trusted_proxies
        self._on_queued = on_queued
        self._failures = RateLimiter(limit=20, window_seconds=600)
        # Over HTTPS the cookie is __Host- prefixed: Secure, host-only, path / (RFC 6265bis 4.1.3.2).
        self.cookie = "__Host-hl_client" if https else "hl_client"
        self._secure_cookie = https

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/s/thread", self.thread)
        app.router.add_post("/s/thread/reply", self.reply)
        app.router.add_get("/s/thread/updates", self.updates)
        app.router.add_get("/s/attachments/{id}", self.attachment)
        app.router.add_post("/s/logout", self.logout)
        app.router.add_post("/s/renew", self.renew)
        app.router.add_get("/s/{token}", self.link_page)
        app.router.add_post("/s/{token}", self.open_link)

    # -- helpers ------------------------------------------------------------------------
    def _ip(self, request: web.Request) -> str:
        return client_ip(request, self._trusted_proxies)

    def _unavailable(self, request: web.Request, token: str, *, status: int = 404) -> web.Response:
        return render(request, "client/unavailable.html", status=status, token=token if looks_like_token(token) else "",
                      csrf=csrf_token(self._secret, "renew"), renewed=False)

    def _throttled(self, request: web.Request) -> web.Response | None:
        """Count a failure from the client's address; the 429 page once it is over the limit."""
        if self._failures.allow(self._ip(request)):
            return None
        return self._too_many(request)

    @staticmethod
    def _too_many(request: web.Request) -> web.Response:
        return render(request, "client/notice.html", status=429, message=STRINGS["too_many"])

    async def _form(self, request: web.Request) -> dict[str, str]:
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def _pin(self, link: Doc, pin_required: bool) -> PinDecision:
        """The PIN this link asks for (gateway/rules/pin.py): its own, else the thread's, else the contact's."""
        thread_pin = contact_pin = None
        if not link.get("pin_hash"):
            thread_pin = (await self._conversations.get_thread(link["org_id"], link["thread_id"])).get("pin_hash")
            if not thread_pin:
                contact_pin = (await self._contacts.get(link["org_id"], link["contact_id"])).pin_hash
        return pin_for_link(given_pin_hash=link.get("pin_hash"), thread_pin_hash=thread_pin,
                            contact_pin_hash=contact_pin, pin_required=pin_required)

    async def _session(self, request: web.Request) -> Doc | None:
        return await self._sessions.get("client", request.cookies.get(self.cookie))

    def _session_csrf(self, session: Doc) -> str:
        return csrf_token(self._secret, "client|" + session["_id"])

    # -- link page ------------------------------------------------------------------------
    async def link_page(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            link = await self._links.find_usable(token)
        except LinkUnavailable:
            if (limited := self._throttled(request)) is not None:
                return limited
            return self._unavailable(request, token)
        org = await self._orgs.get(link["org_id"])
        pin = await self._pin(link, org.policy.pin_required)
        return render(request, "client/open.html", token=token, org_name=org.name,
                      pin_required=pin.pin_hash is not None, tries_left=None,
                      csrf=csrf_token(self._secret, "open|" + link["token_hash"]))

    async def open_link(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        form = await self._form(request)
        if not same_origin(request, self._public_url) or not csrf_ok(
            self._secret, "open|" + token_hash(token), form.get("csrf", "")
        ):
            return render(request, "client/notice.html", status=403,
                          message="This form expired. Open the link from your message again.")
        ip = self._ip(request)
        # The limiter answers before anything about the link or the PIN is looked at: a throttled
        # attempt is not counted as a wrong PIN, cannot open the link, and learns nothing.
        if self._failures.exhausted(ip):
            return self._too_many(request)
        try:
            link = await self._links.find_usable(token)
            org = await self._orgs.get(link["org_id"])
            pin = await self._pin(link, org.policy.pin_required)
            if pin.missing:
                # The org requires a PIN and this link (issued before, or as an automatic answer)
                # has none: it never opens without one. Neutral page, no content; staff see it audited.
                self._failures.allow(ip)  # a refusal like any other: bounds audit entries per address
                await self._links.refuse_open(link, "pin_required", ip)
                return render(request, "client/notice.html", status=403,
                              message=STRINGS["pin_needed"].format(org=org.name))
            if pin.pin_hash:
                given = form.get("pin", "")
                if not given or len(given) > 64:
                    raise PinRejected(tries_left=await self._links.tries_left(link, org.policy.lock_threshold))
                await self._links.check_pin(link, pin.pin_hash, given, org.policy.lock_threshold, ip)
        except LinkUnavailable:
            if (limited := self._throttled(request)) is not None:
                return limited
            return self._unavailable(request, token)
        except PinRejected as err:
            if (limited := self._throttled(request)) is not None:
                return limited
            return render(request, "client/open.html", status=401, token=token, org_name=org.name,
                          pin_required=True, tries_left=err.tries_left,
                          csrf=csrf_token(self._secret, "open|" + link["token_hash"]))
        sid, _ = await self._sessions.create(
            "client", org.id, idle_seconds=org.policy.client_idle_seconds,
            absolute_seconds=min(12 * 3600, max(org.policy.client_idle_seconds, 3600)),
            thread_id=link["thread_id"], contact_id=link["contact_id"], link_id=link["_id"], viewed=False,
        )
        await self._links.mark_opened(link, ip)
        response = web.HTTPSeeOther("/s/thread")
        response.set_cookie(self.cookie, sid, httponly=True, secure=self._secure_cookie, samesite="Lax", path="/")
        raise response

    # -- conversation -----------------------------------------------------------------------
    async def thread(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        if session is None:
            return render(request, "client/notice.html", status=401, message=STRINGS["session_over"])
        org = await self._orgs.get(session["org_id"])
        before = request.query.get("before") or None
        if before is not None and not is_id(before):
            before = None
        # The newest PAGE messages, with a link to earlier ones: the page costs the same whatever
        # the thread's length.
        docs = await self._conversations.latest_messages(org.id, session["thread_id"], limit=PAGE + 1,
                                                           before=before)
        more = len(docs) > PAGE
        docs = docs[-PAGE:]
        earlier = docs[0]["_id"] if more else None
        if not session.get("viewed"):
            await self._views.thread_viewed(session, docs, self._ip(request))
        files = await attachments.for_messages(self._files, org.id, may_have_files(docs))
        messages = [{**self._message_view(d, org.zone), "attachments": files.get(d["_id"], [])} for d in docs]
        return render(request, "client/thread.html", org_name=org.name, messages=messages,
                      csrf=self._session_csrf(session), last_id=docs[-1]["_id"] if docs else "",
                      earlier_url=f"/s/thread?before={earlier}" if earlier else None, live=before is None)

    @staticmethod
    def _message_view(d: Doc, zone: tzinfo) -> dict[str, Any]:
        return {"id": d["_id"], "text": d["text"], "mine": d["direction"] == "inbound",
                "at_iso": d["created_at"].isoformat(timespec="seconds"),
                "at_human": local_time(d["created_at"], zone, "%d %b %Y, %H:%M %Z")}  # the org's zone

    async def attachment(self, request: web.Request) -> web.Response:
        """A file the client attached to an email reply: only the session's thread's, as a download."""
        session = await self._session(request)
        if session is None:
            return render(request, "client/notice.html", status=401, message=STRINGS["session_over"])
        doc = await self._files.find(session["org_id"], session["thread_id"], request.match_info["id"])
        if doc is None:
            return render(request, "client/notice.html", status=404, message="Not found")
        response = await attachments.download(self._files, doc)
        await self._audit.append(session["org_id"], "attachment.viewed", Actor("client", session["contact_id"]),
                                   ip=self._ip(request), thread_id=session["thread_id"], message_id=doc["message_id"],
                                   contact_id=session["contact_id"], detail={"attachment_id": doc["_id"]})
        return response

    async def reply(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        if session is None:
            return render(request, "client/notice.html", status=401, message=STRINGS["session_over"])
        form = await self._form(request)
        if not same_origin(request, self._public_url) or not csrf_ok(
            self._secret, "client|" + session["_id"], form.get("csrf", "")
        ):
            return render(request, "client/notice.html", status=403, message="This form expired. Please try again.")
        try:
            text = validate_body(form.get("body", ""))
        except ValidationError as err:
            return render(request, "client/notice.html", status=422, message=err.message)
        org = await self._orgs.get(session["org_id"])
        contact = await self._contacts.get(org.id, session["contact_id"])
        mid = new_id()
        _, thread, _ = await self._conversations.record_inbound(
            org, contact, message_id=mid, channel="portal", body=text, provider_id=None, secure=True,
        )
        await self._audit.append(org.id, "message.received", Actor("client", contact.id), ip=self._ip(request),
                                   thread_id=thread["_id"], message_id=mid, contact_id=contact.id,
                                   detail={"channel": "portal", "secure": True})
        raise web.HTTPSeeOther("/s/thread")

    async def updates(self, request: web.Request) -> web.Response:
        """Messages newer than ?after= as JSON (polled by client.js; works without change streams)."""
        session = await self._session(request)
        if session is None:
            return web.json_response({"error": {"code": "session_over", "message": "signed out"}}, status=401)
        after = request.query.get("after") or None
        docs = await self._conversations.messages(session["org_id"], session["thread_id"], after=after, limit=100)
        zone = (await self._orgs.get(session["org_id"])).zone
        # Audited before the content goes out, as on the thread page (which this can stand in for).
        if not session.get("viewed"):
            await self._views.thread_viewed(session, docs, self._ip(request))
        else:
            await self._views.messages_shown(session, docs, self._ip(request))
        return web.json_response({"messages": [
            {k: v for k, v in self._message_view(d, zone).items()} for d in docs
        ]})

    async def logout(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        form = await self._form(request)
        if session is not None:
            if not csrf_ok(self._secret, "client|" + session["_id"], form.get("csrf", "")):
                return render(request, "client/notice.html", status=403, message="This form expired.")
            await self._sessions.delete(request.cookies[self.cookie])
        response = render(request, "client/notice.html", message=STRINGS["signed_out"])
        # Same attributes as when set: browsers ignore a __Host- cookie (even an expiring one) without Secure.
        response.del_cookie(self.cookie, path="/", secure=self._secure_cookie, httponly=True, samesite="Lax")
        response.headers["Clear-Site-Data"] = '"cache", "cookies", "storage"'
        return response

    # -- new link ---------------------------------------------------------------------------
    async def renew(self, request: web.Request) -> web.Response:
        """Send a fresh link to the address on file; the answer is the same whatever happened."""
        form = await self._form(request)
        if not same_origin(request, self._public_url) or not csrf_ok(self._secret, "renew", form.get("csrf", "")):
            return render(request, "client/notice.html", status=403, message="This form expired.")
        done = render(request, "client/unavailable.html", token="", csrf="", renewed=True)
        token = form.get("token", "")
        ip = self._ip(request)
        link = await self._links.find(token)
        if link is None:
            self._throttled(request)
            return done
        org = await self._orgs.get(link["org_id"])
        # Refused quietly (same page, nothing sent) but audited: a replaced or revoked link, a thread
        # locked by wrong PINs (a new link would be locked too), or the thread's renewals for the
        # day used up — the cap keeps the form from flooding a phone or an inbox.
        refused = ("revoked" if link["revoked_at"] is not None
                   else "locked" if link["locked_at"] is not None or await self._links.thread_locked(link)
                   else None)
        if refused is None and not await self._links.claim_renewal(link, org.policy.link_renewals_per_day):
            refused = "daily_limit"
        if refused is not None:
            self._throttled(request)
            await self._audit.append(org.id, "link.renewal_refused", Actor("client", link["contact_id"]),
                                       outcome="denied", ip=ip, thread_id=link["thread_id"], link_id=link["_id"],
                                       contact_id=link["contact_id"], detail={"reason": refused})
            return done
        contact = await self._contacts.get(org.id, link["contact_id"])
        thread = await self._conversations.get_thread(org.id, link["thread_id"])
        channel = reply_route(contact, thread_channel=thread.get("channel")).channel
        new_link_id = await self._conversations.send_link_notice(
            org, contact, link["thread_id"], channel=channel, template="link_renewal",
            message_id=link.get("message_id"))
        await self._audit.append(org.id, "link.renewal_requested", Actor("client", contact.id), ip=ip,
                                   thread_id=link["thread_id"], link_id=link["_id"], contact_id=contact.id,
                                   detail={"sent": new_link_id is not None})  # not sent: consent or policy refused it
        if new_link_id is not None:
            # The new link replaces this one: the old token stops working and its sessions end.
            await self._links.replace(link, new_link_id, Actor("client", contact.id))
        self._on_queued()
        return done
