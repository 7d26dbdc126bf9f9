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

from collections.abc import Callable

from aiohttp import web

from gateway.runtime.services import Services
from portal.staff.audit_view import AuditView
from portal.staff.auth import StaffAuth
from portal.staff.common import Deps
from portal.staff.compose import Compose
from portal.staff.contacts import ContactPages
from portal.staff.inbox import Inbox
from portal.staff.live import LiveUpdates
from portal.staff.policy import staff_guard
from portal.staff.settings import Settings
from portal.staff.threads import ThreadPages

PREFIX = "/staff"


def staff_app(services: Services, on_queued: Callable[[], None]) -> web.Application:
    """The staff sub-application, to mount at PREFIX."""
    deps = Deps(services, on_queued)
    auth = StaffAuth(deps)
    app = web.Application(middlewares=[staff_guard(deps, auth.context)])
    for part in (auth, Inbox(deps), ThreadPages(deps), Compose(deps), ContactPages(deps), Settings(deps),
                 AuditView(deps), LiveUpdates(deps)):
        part.add_routes(app)
    return app
