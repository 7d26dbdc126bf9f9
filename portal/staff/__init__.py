"""The staff portal (/staff/), a sub-application guarded by one default-deny policy middleware.

    auth.py        sign-in (password, throttling, TOTP), sign-out, account, first-run setup
    policy.py      the @policy decorator and the guard middleware (CSRF, roles, sessions)
    inbox.py       thread list with filters, search and cursor paging
    threads.py     one conversation: timeline, reply, assign, close, links, PIN, break-glass
    compose.py     a new message to an existing or new contact
    contacts.py    contact list and detail (consent, opt-out history, PIN)
    settings.py    org policy, staff accounts, API keys, emergency access review (admin)
    audit_view.py  audit log filter and JSON-lines export (admin)
    live.py        Server-Sent Events from a change stream (polling fallback)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.messaging.alerts import StoredStaffAlerts
from gateway.messaging.attachments import Attachments
from gateway.messaging.consent import StaffConsent
from gateway.messaging.contacts import Contacts
from gateway.messaging.conversations import Conversations
from gateway.messaging.delivery import Delivery
from gateway.messaging.inbox_queries import InboxQueries
from gateway.ports import Clock
from gateway.security.access import BreakGlass
from gateway.security.api_keys import ApiKeys
from gateway.security.audit import AuditLog
from gateway.security.links import Links
from gateway.security.sessions import Sessions
from gateway.security.staff_auth import LoginThrottle, SetupTokens, Totp
from gateway.tenancy.org_settings import OrgSettings
from gateway.tenancy.orgs import Orgs
from gateway.tenancy.staff import Staff
from portal.staff.audit_view import AuditView
from portal.staff.auth import StaffAuth
from portal.staff.common import Shell
from portal.staff.compose import Compose
from portal.staff.contacts import ContactAccess, ContactPages
from portal.staff.inbox import Inbox
from portal.staff.live import LiveUpdates
from portal.staff.policy import staff_guard
from portal.staff.settings import Settings
from portal.staff.threads import ThreadPages

PREFIX = "/staff"


@dataclass(frozen=True, slots=True)
class StaffCollaborators:
    """The domain services the staff portal calls, handed over by the composition root
    (gateway/runtime/app.py). staff_app gives each handler class only those it uses."""

    orgs: Orgs
    staff: Staff
    sessions: Sessions
    audit: AuditLog
    contacts: Contacts
    conversations: Conversations
    links: Links
    break_glass: BreakGlass
    attachments: Attachments
    consent: StaffConsent
    delivery: Delivery
    org_settings: OrgSettings
    totp: Totp
    throttle: LoginThrottle
    setup_tokens: SetupTokens
    api_keys: ApiKeys
    alerts: StoredStaffAlerts
    queries: InboxQueries
    export_contact: Callable[[str, str], Awaitable[dict[str, Any]]]
    clock: Clock
    secret: bytes  # the keyring's MAC key: CSRF tokens
    public_url: str
    https: bool
    trusted_proxies: tuple[str, ...]


def staff_shell(c: StaffCollaborators) -> Shell:
    """What every staff handler shares (cookie, client address, page rendering, audited 404)."""
    return Shell(https=c.https, trusted_proxies=c.trusted_proxies, secret=c.secret, public_url=c.public_url,
                 audit=c.audit, counts=c.queries, alerts=c.alerts)


def staff_auth(c: StaffCollaborators, shell: Shell) -> StaffAuth:
    return StaffAuth(shell, sessions=c.sessions, staff=c.staff, orgs=c.orgs, audit=c.audit, totp=c.totp,
                     throttle=c.throttle, setup_tokens=c.setup_tokens)


def staff_app(c: StaffCollaborators, on_queued: Callable[[], None]) -> web.Application:
    """The staff sub-application, to mount at PREFIX."""
    shell = staff_shell(c)
    auth = staff_auth(c, shell)
    access = ContactAccess(shell, contacts=c.contacts, queries=c.queries, break_glass=c.break_glass,
                           audit=c.audit, conversations=c.conversations)
    app = web.Application(middlewares=[staff_guard(shell, c.audit, auth.context)])
    parts = (
        auth,
        Inbox(shell, conversations=c.conversations, contacts=c.contacts, break_glass=c.break_glass,
              delivery=c.delivery, staff=c.staff),
        ThreadPages(shell, access, conversations=c.conversations, contacts=c.contacts, links=c.links,
                    break_glass=c.break_glass, attachments=c.attachments, audit=c.audit, staff=c.staff,
                    clock=c.clock, on_queued=on_queued),
        Compose(shell, access, contacts=c.contacts, conversations=c.conversations, on_queued=on_queued),
        ContactPages(shell, access, contacts=c.contacts, queries=c.queries, consent=c.consent, audit=c.audit,
                     export_contact=c.export_contact),
        Settings(shell, orgs=c.orgs, staff=c.staff, sessions=c.sessions, audit=c.audit, api_keys=c.api_keys,
                 break_glass=c.break_glass, org_settings=c.org_settings, alerts=c.alerts, totp=c.totp, clock=c.clock),
        AuditView(shell, audit=c.audit, staff=c.staff, clock=c.clock),
        LiveUpdates(shell, queries=c.queries, break_glass=c.break_glass, sessions=c.sessions, clock=c.clock),
    )
    for part in parts:
        part.add_routes(app)
    return app
