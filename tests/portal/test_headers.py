"""Every route answers with the baseline security headers, whatever the status
(docs/security-model.md, 'Browser hardening')."""

from __future__ import annotations

import re

from aiohttp import web

SAMPLE = {"token": "A" * 43, "id": "0" * 24, "thread_id": "0" * 24, "link_id": "0" * 24, "contact_id": "0" * 24}


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: SAMPLE.get(m.group(1), "x"), path)


def _routes(app: web.Application, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for resource in app.router.resources():
        info = resource.get_info()
        if "app" in info:  # a sub-application (the staff portal)
            out += _routes(info["app"], prefix + info.get("prefix", ""))
            continue
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if not path:
            continue
        for route in resource:
            if route.method in ("GET", "POST"):
                out.append((route.method, prefix + _concrete(path)))
    return sorted(set(out))


async def test_every_route_sends_the_baseline_security_headers(gw):
    routes = _routes(gw.client.app)
    assert len(routes) > 30  # the walk found the portals, the API and the webhooks
    for method, path in routes:
        if path.endswith("/live") or path.endswith("/updates"):
            continue  # event streams: covered by their own tests
        resp = await gw.client.request(method, path, allow_redirects=False)
        h = resp.headers
        assert h.get("X-Content-Type-Options") == "nosniff", (method, path, resp.status)
        assert h.get("Referrer-Policy") == "no-referrer", (method, path)
        assert h.get("X-Frame-Options") == "DENY", (method, path)
        if not path.startswith("/static/"):
            assert h.get("Cache-Control") == "no-store", (method, path)
        if h.get("Content-Type", "").startswith("text/html"):
            csp = h["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp, (method, path)
            assert "charset=utf-8" in h["Content-Type"], (method, path)
        assert resp.status < 500, (method, path, resp.status, await resp.text())
