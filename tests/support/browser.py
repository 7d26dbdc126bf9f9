"""A real browser for the portal tests: Debian's Chromium driven through Playwright's async API.

Playwright's own browser download does not work here, so the system Chromium is launched by
path. Playwright gives every launch a fresh temporary profile (user data dir) and deletes it on
close, so nothing carries over between tests.

Besides launching, this module holds what the browser tests observe beyond the page text:

- `PageWatch`: console errors, uncaught page errors, failed sub-resources and CSP violations
  (a `securitypolicyviolation` listener installed by an init script, which runs whatever the
  page's CSP says, reporting to Python through an exposed binding);
- hand-written "axe-style" accessibility checks (labels, one h1, button names, contrast,
  horizontal overflow, tab order) evaluated in the page;
- screenshots under test-artifacts/screenshots/ (kept as artifacts, never compared).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Response,
    async_playwright,
)

CHROMIUM = os.environ.get("HUSHLINK_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def chromium_available() -> bool:
    return Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless Chromium with a fresh temporary profile, closed (and its profile removed) on exit."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> Path:
    """Save a full-page PNG as a test artifact (not asserted on)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


# -- what went wrong in the page ------------------------------------------------------------------
_CSP_LISTENER = """
(() => {
  document.addEventListener("securitypolicyviolation", (e) => {
    const v = {directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile || "",
               line: e.lineNumber || 0, sample: e.sample || "", page: location.href};
    (window.__csp = window.__csp || []).push(v);
    if (typeof window.__hlReportCsp === "function") { window.__hlReportCsp(v); }
  }, true);
})();
"""


@dataclass
class PageWatch:
    """Everything a page complained about, across navigations, for one browser context."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[dict[str, Any]] = field(default_factory=list)
    failed_resources: list[str] = field(default_factory=list)

    @classmethod
    async def attach(cls, context: BrowserContext) -> PageWatch:
        """Watch every page of `context` (call before opening pages)."""
        watch = cls()
        await context.expose_function("__hlReportCsp", watch._csp)
        await context.add_init_script(_CSP_LISTENER)
        context.on("page", watch.watch_page)
        return watch

    def watch_page(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda err: self.page_errors.append(str(err)))
        page.on("response", self._response)
        page.on("requestfailed", self._request_failed)

    def _csp(self, violation: dict[str, Any]) -> None:
        self.csp_violations.append(violation)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        # Chromium logs every non-2xx response, the main document included. The portal answers
        # some documents with 401/403/404/410 on purpose (wrong PIN, unavailable link), so those
        # lines are judged by `_response` instead, which knows what kind of resource failed.
        if msg.text.startswith("Failed to load resource: the server responded with a status of"):
            return
        self.console_errors.append(f"{msg.text} @ {msg.location.get('url', '')}")

    def _request_failed(self, request: Request) -> None:
        # ERR_ABORTED: cancelled by leaving the page (e.g. an open EventSource), not a failure.
        if request.failure != "net::ERR_ABORTED":
            self.failed_resources.append(f"{request.url} ({request.failure})")

    def _response(self, response: Response) -> None:
        if response.status >= 400 and response.request.resource_type not in ("document",):
            self.failed_resources.append(f"{response.request.resource_type} {response.url} -> {response.status}")

    def problems(self) -> list[str]:
        return (
            [f"console: {e}" for e in self.console_errors]
            + [f"page error: {e}" for e in self.page_errors]
            + [f"CSP: {v['directive']} blocked {v['blocked'] or v['sample']!r} on {v['page']}"
               for v in self.csp_violations]
            + [f"resource: {r}" for r in self.failed_resources]
        )

    def clear(self) -> None:
        self.console_errors.clear()
        self.page_errors.clear()
        self.csp_violations.clear()
        self.failed_resources.clear()


# -- accessibility basics ("axe-style", written by hand; nothing fetched at run time) ------------
_A11Y = r"""
() => {
  const problems = [];
  const visible = (el) => {
    const s = getComputedStyle(el);
    const r = el.getBoundingClientRect();
    return s.visibility !== "hidden" && s.display !== "none" && r.width > 0 && r.height > 0;
  };
  const describe = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
    + (el.getAttribute("name") ? "[name=" + el.getAttribute("name") + "]" : "")
    + (el.className && typeof el.className === "string" ? "." + el.className.trim().replace(/\s+/g, ".") : "");
  const byIds = (ids) => ids.split(/\s+/).map((id) => document.getElementById(id)).filter(Boolean)
    .map((n) => n.textContent.trim()).join(" ").trim();

  if (!document.documentElement.getAttribute("lang")) { problems.push("html has no lang"); }
  if (!document.title.trim()) { problems.push("page has no title"); }
  const h1s = document.querySelectorAll("h1");
  if (h1s.length !== 1) { problems.push("page has " + h1s.length + " h1 elements"); }
  else if (!h1s[0].textContent.trim()) { problems.push("h1 is empty"); }

  for (const el of document.querySelectorAll("input, textarea, select")) {
    const type = (el.getAttribute("type") || "").toLowerCase();
    if (["hidden", "submit", "button", "reset", "image"].includes(type)) { continue; }
    const labelled = (el.labels && [...el.labels].some((l) => l.textContent.trim()))
      || (el.getAttribute("aria-label") || "").trim()
      || (el.getAttribute("aria-labelledby") && byIds(el.getAttribute("aria-labelledby")));
    if (!labelled) { problems.push("form field without a label: " + describe(el)); }
    const described = el.getAttribute("aria-describedby");
    if (described && !described.split(/\s+/).every((id) => document.getElementById(id))) {
      problems.push("aria-describedby points nowhere: " + describe(el));
    }
  }
  for (const el of document.querySelectorAll("button, input[type=submit], input[type=button], [role=button]")) {
    const name = (el.textContent || "").trim() || (el.getAttribute("aria-label") || "").trim()
      || (el.getAttribute("aria-labelledby") && byIds(el.getAttribute("aria-labelledby")))
      || (el.getAttribute("value") || "").trim() || (el.getAttribute("title") || "").trim();
    if (!name) { problems.push("button without an accessible name: " + describe(el)); }
  }
  for (const el of document.querySelectorAll("a[href]")) {
    const name = (el.textContent || "").trim() || (el.getAttribute("aria-label") || "").trim();
    if (!name) { problems.push("link without an accessible name: " + describe(el)); }
  }
  for (const el of document.querySelectorAll("img")) {
    if (!el.hasAttribute("alt")) { problems.push("img without alt: " + describe(el)); }
  }
  const ids = {};
  for (const el of document.querySelectorAll("[id]")) {
    if (ids[el.id]) { problems.push("duplicate id: " + el.id); }
    ids[el.id] = true;
  }

  // Contrast (WCAG 2.x): every visible element with its own text, against its effective background.
  const parse = (c) => {
    const m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) { return null; }
    const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const lum = (c) => {
    const ch = [c.r, c.g, c.b].map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * ch[0] + 0.7152 * ch[1] + 0.0722 * ch[2];
  };
  const blend = (top, bottom) => ({
    r: top.r * top.a + bottom.r * (1 - top.a), g: top.g * top.a + bottom.g * (1 - top.a),
    b: top.b * top.a + bottom.b * (1 - top.a), a: 1,
  });
  const background = (el) => {
    const layers = [];
    for (let n = el; n; n = n.parentElement) {
      const bg = parse(getComputedStyle(n).backgroundColor);
      if (getComputedStyle(n).backgroundImage !== "none") { return null; }  // can't judge: skip
      if (bg && bg.a > 0) { layers.push(bg); if (bg.a >= 1) { break; } }
    }
    let colour = {r: 255, g: 255, b: 255, a: 1};  // the canvas
    for (let i = layers.length - 1; i >= 0; i--) { colour = blend(layers[i], colour); }
    return colour;
  };
  const checked = [];
  for (const el of document.body.querySelectorAll("*")) {
    const ownText = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!ownText || !visible(el)) { continue; }
    const s = getComputedStyle(el);
    const bg = background(el);
    const fg = parse(s.color);
    if (!bg || !fg) { continue; }
    const fgc = blend(fg, bg);
    const l1 = lum(fgc), l2 = lum(bg);
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const size = parseFloat(s.fontSize);
    const bold = parseInt(s.fontWeight, 10) >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    const need = large ? 3 : 4.5;
    checked.push({el: describe(el), ratio: Math.round(ratio * 100) / 100});
    if (ratio < need) { problems.push("contrast " + ratio.toFixed(2) + " < " + need + ": " + describe(el)
      + " (" + s.color + " on rgb(" + [bg.r, bg.g, bg.b].map(Math.round).join(", ") + "))"); }
  }
  const de = document.documentElement;
  return {problems, checked, scrollWidth: de.scrollWidth, clientWidth: de.clientWidth};
}
"""


@dataclass
class A11yReport:
    problems: list[str]
    checked: list[dict[str, Any]]
    scroll_width: int
    client_width: int


async def a11y_report(page: Page) -> A11yReport:
    raw = await page.evaluate(_A11Y)
    return A11yReport(raw["problems"], raw["checked"], raw["scrollWidth"], raw["clientWidth"])


async def tab_order(page: Page, presses: int = 15) -> list[str]:
    """Press Tab from the top of the page; return what had focus after each press."""
    await page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
    seen: list[str] = []
    for _ in range(presses):
        await page.keyboard.press("Tab")
        seen.append(await page.evaluate(
            """() => {
                 const e = document.activeElement;
                 if (!e || e === document.body) { return "body"; }
                 const name = e.getAttribute("name");
                 return e.tagName.toLowerCase() + (name ? "[name=" + name + "]" : "") + (e.id ? "#" + e.id : "")
                   + ":" + (e.textContent || e.value || "").trim().slice(0, 40);
               }"""
        ))
    return seen
