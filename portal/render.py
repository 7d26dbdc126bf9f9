"""Page rendering: one jinja2 environment (autoescaped), the CSP nonce and strings in every page."""

from __future__ import annotations

from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from portal.http import NONCE
from portal.strings import STRINGS

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def local_time(at: datetime | None, zone: tzinfo, fmt: str = "%d %b %Y %H:%M %Z") -> str:
    """`at` as the org's wall-clock time with the zone's abbreviation ("05 Jan 2026 04:00 EST"):
    every time shown to staff and clients is in the org's time zone (Org.zone)."""
    return at.astimezone(zone).strftime(fmt) if at else ""


_ENV.filters["local_time"] = local_time


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    html = _ENV.get_template(template).render(nonce=request.get(NONCE, ""), t=STRINGS, **context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", status=status, message=message)
