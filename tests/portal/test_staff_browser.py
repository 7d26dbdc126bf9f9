"""The staff portal in headless Chromium: sign-in, live inbox and thread updates, reply, compose warning.

Skipped where Playwright or Chromium is missing. Screenshots go to test-artifacts/staff/ (not
committed). The browser reaches the test server as http://hushlink.test (the configured public
URL) through a host-resolver rule, so Origin and Sec-Fetch-Site are exactly what production sees.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.portal.test_staff_support import PASSWORD, make_staff
from tests.support.harness import PUBLIC_URL

playwright = pytest.importorskip("playwright.async_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "staff"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed")


async def test_staff_portal_in_a_real_browser(gw):
    SHOTS.mkdir(parents=True, exist_ok=True)
    await make_staff(gw, "admin@riverside.test", "admin")
    await gw.api_send(to={"phone": "+15551230001", "name": "Alex <b>Example</b>"}, body="Your lab results are ready.")
    await gw.inbound_sms("What did they say? <script>alert(1)</script>")
    await gw.drain()
    port = urlsplit(gw.server_url).port
    problems: list[str] = []
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=[f"--host-resolver-rules=MAP hushlink.test:80 127.0.0.1:{port}"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text)
                    if "Content Security Policy" in m.text or "Refused" in m.text else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("dialog", lambda d: problems.append("dialog: " + d.message))
            await page.goto(PUBLIC_URL + "/staff/login")
            await page.fill("#email", "admin@riverside.test")
            await page.fill("#password", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(PUBLIC_URL + "/staff/")
            await page.screenshot(path=str(SHOTS / "inbox.png"), full_page=True)

            # A new thread appears in the open inbox without a reload.
            await gw.api_send(to={"phone": "+15551230003", "name": "Casey Live"}, body="new one")
            await page.wait_for_selector("text=Casey Live", timeout=30_000)

            await page.click("text=Alex <b>Example</b>")
            await page.wait_for_selector("#messages")
            assert await page.locator("#messages .body").nth(1).inner_text() == \
                "What did they say? <script>alert(1)</script>"
            await page.fill("#body", "We will call you tomorrow.")
            await page.click("#reply button[type=submit]")
            await page.wait_for_selector("text=We will call you tomorrow.")

            # The client's answer shows up in the open thread without a reload.
            await gw.inbound_sms("ok thanks")
            await gw.drain()
            await page.wait_for_selector("text=ok thanks", timeout=30_000)
            await page.screenshot(path=str(SHOTS / "thread.png"), full_page=True)

            for path in ("/staff/compose", "/staff/contacts", "/staff/settings", "/staff/settings/staff",
                         "/staff/settings/api-keys", "/staff/audit", "/staff/account"):
                resp = await page.goto(PUBLIC_URL + path)
                assert resp is not None and resp.status == 200, path
                await page.screenshot(path=str(SHOTS / (path.strip("/").replace("/", "_") + ".png")), full_page=True)

            await page.set_viewport_size({"width": 360, "height": 800})
            await page.goto(PUBLIC_URL + "/staff/compose")
            await page.fill("#phone", "+15551230009")
            await page.fill("#body", "SSN 123-45-6789")
            await page.uncheck("input[name=secure]")
            await page.click("form.card button[type=submit]")
            await page.wait_for_selector("text=Social Security number")
            await page.check("input[name=confirm_sensitive]")
            await page.click("form.card button[type=submit]")
            await page.wait_for_url(PUBLIC_URL + "/staff/threads/*")
            await page.screenshot(path=str(SHOTS / "compose_sent_narrow.png"), full_page=True)

            await page.click("text=Sign out")
            await page.wait_for_selector("text=You are signed out")
            resp = await page.goto(PUBLIC_URL + "/staff/")
            assert resp is not None and page.url.startswith(PUBLIC_URL + "/staff/login")
        finally:
            await browser.close()
    assert problems == []
