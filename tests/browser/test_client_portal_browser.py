"""The client portal in a real browser (headless Chromium): what a person sees and can do.

Each test drives Debian's Chromium against a gateway serving on a real loopback port, with the
org on the other side using the public API and the Twilio stand-in playing the phone network.
The handler-level tests (tests/portal/test_client_portal.py) pin down statuses and headers; these
check the pages as rendered: forms that work, the live update, lock-out, expiry, timeouts, CSRF,
no console errors or CSP violations, and basic accessibility at 320 px.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from playwright.async_api import Page, expect

from portal.strings import STRINGS
from tests.browser.conftest import PIN, LiveGateway, Tab, no_token_in, open_tab, serve
from tests.support.browser import a11y_report, screenshot, tab_order

BODY = "Your lab results are ready: all values normal."
SECOND = "Follow-up: please bring <b>your card</b> & ID on Friday."
REPLY = "Thank you! See you on Friday."
WRONG = "999999"


# -- helpers --------------------------------------------------------------------------------
async def open_link(page: Page, live: LiveGateway, token: str, pin: str | None = PIN) -> None:
    """From the link in the SMS to the conversation, as the client does it."""
    resp = await page.goto(live.link(f"/s/{token}"))
    assert resp is not None and resp.status == 200
    await expect(page.get_by_role("heading", level=1)).to_have_text(STRINGS["open_title"])
    if pin is not None:
        await page.get_by_label(STRINGS["pin_label"]).fill(pin)
    async with page.expect_navigation(url=live.link("/s/thread")):
        await page.get_by_role("button", name=STRINGS["open_button"]).click()


async def submit_pin(page: Page, pin: str) -> int:
    """Type a PIN on the open form and submit it; return the status of the page that comes back."""
    await page.get_by_label(STRINGS["pin_label"]).fill(pin)
    async with page.expect_response(lambda r: r.request.method == "POST") as answer:
        await page.get_by_role("button", name=STRINGS["open_button"]).click()
    await page.wait_for_load_state()
    return (await answer.value).status


async def session_cookie(tab: Tab) -> list[dict[str, Any]]:
    return [dict(c) for c in await tab.context.cookies() if c["name"].endswith("hl_client")]


async def inbound_texts(live: LiveGateway) -> list[str]:
    docs = [d async for d in live.store.messages.find({"org_id": live.org.id, "direction": "inbound"})]
    return [await live.services.conversations.open_body(d) for d in docs]


# -- the whole loop -------------------------------------------------------------------------------
async def test_client_opens_the_link_with_the_pin_reads_and_replies(live, tab):
    page = tab.page
    sent, token = await live.send_and_get_link(BODY)

    resp = await page.goto(live.link(f"/s/{token}"))
    assert resp is not None and resp.status == 200
    await expect(page.get_by_role("heading", level=1)).to_have_text(STRINGS["open_title"])
    await expect(page.get_by_text(STRINGS["open_lead"].format(org="Riverside Clinic"))).to_be_visible()
    await expect(page.get_by_label(STRINGS["pin_label"])).to_have_attribute("type", "password")
    assert BODY not in await page.content()  # the content is behind the PIN
    await screenshot(page, "client-01-link-page")

    await page.get_by_label(STRINGS["pin_label"]).fill(PIN)
    async with page.expect_navigation(url=live.link("/s/thread")), page.expect_request(
            lambda r: r.method == "POST") as posted:
        await page.get_by_role("button", name=STRINGS["open_button"]).click()
    # Under the portal's no-referrer policy a same-origin form POST carries `Origin: null`;
    # the gateway must still accept it (it leans on Sec-Fetch-Site then).
    headers = await (await posted.value).all_headers()
    assert (headers.get("origin"), headers.get("sec-fetch-site")) == ("null", "same-origin")
    assert page.url == live.link("/s/thread") and no_token_in(page.url) and token not in page.url
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        STRINGS["thread_title"].format(org="Riverside Clinic"))
    theirs = page.locator("#messages li.msg.theirs")
    await expect(theirs).to_have_count(1)
    await expect(theirs.locator(".body")).to_have_text(BODY)
    await expect(theirs.locator(".who")).to_have_text("Riverside Clinic")
    cookies = await session_cookie(tab)
    assert len(cookies) == 1 and cookies[0]["httpOnly"] and cookies[0]["value"] != token
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: invisible to scripts
    await screenshot(page, "client-03-thread")

    await page.get_by_label(STRINGS["reply_label"]).fill(REPLY)
    async with page.expect_navigation(url=live.link("/s/thread")):
        await page.get_by_role("button", name=STRINGS["reply_button"]).click()
    mine = page.locator("#messages li.msg.mine")
    await expect(mine).to_have_count(1)
    await expect(mine.locator(".body")).to_have_text(REPLY)
    await expect(mine.locator(".who")).to_have_text(STRINGS["you"])
    await expect(page.get_by_label(STRINGS["reply_label"])).to_have_value("")
    # Oldest first: the org's message, then the reply.
    assert await page.locator("#messages li.msg .body").all_inner_texts() == [BODY, REPLY]
    await screenshot(page, "client-04-thread-after-reply")

    # The org sees the reply through its API, on the same thread, as a portal message.
    messages = await live.thread_messages(sent["thread_id"])
    assert [(m["direction"], m["channel"], m["body"]) for m in messages] == [
        ("outbound", "sms", BODY), ("inbound", "portal", REPLY)]
    assert tab.watch.problems() == []


async def test_a_new_message_appears_without_reloading_the_page(live, tab):
    page = tab.page
    sent, token = await live.send_and_get_link(BODY)
    await open_link(page, live, token)
    await expect(page.locator("#messages li.msg")).to_have_count(1)
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    await page.evaluate("window.__sameDocument = 'yes'")
    await page.get_by_label(STRINGS["reply_label"]).fill("half-typed repl")

    second = await live.api_send(SECOND, pin=None)
    assert second["thread_id"] == sent["thread_id"]
    new = page.locator("#messages li.msg.theirs").nth(1)
    await new.wait_for(state="visible", timeout=30_000)
    await expect(new.locator(".body")).to_have_text(SECOND)  # as text: the markup is not parsed
    await expect(new.locator(".who")).to_have_text("Riverside Clinic")
    assert await page.locator("#messages b").count() == 0
    assert await new.get_attribute("id") == f"m-{second['id']}"

    # The page was not reloaded: same document, the half-typed reply is still there.
    assert navigations == []
    assert await page.evaluate("window.__sameDocument") == "yes"
    await expect(page.get_by_label(STRINGS["reply_label"])).to_have_value("half-typed repl")
    # The next poll does not add it twice.
    async with page.expect_response(lambda r: "/s/thread/updates" in r.url):
        pass
    await expect(page.locator("#messages li.msg")).to_have_count(2)
    assert tab.watch.problems() == []


# -- links that can't be opened -------------------------------------------------------------------
async def test_five_wrong_pins_lock_the_link_and_then_the_right_pin_is_refused_too(live, browser, tab):
    page = tab.page
    _, token = await live.send_and_get_link(BODY)
    await page.goto(live.link(f"/s/{token}"))
    # A second tab, opened while the link still worked, keeps the PIN form for later.
    other = await open_tab(browser)
    await other.page.goto(live.link(f"/s/{token}"))
    await expect(other.page.get_by_label(STRINGS["pin_label"])).to_be_visible()

    for tries_left in (4, 3, 2, 1):
        assert await submit_pin(page, WRONG) == 401
        alert = page.get_by_role("alert")
        await expect(alert).to_have_text(STRINGS["pin_wrong"].format(n=tries_left))
        await expect(page.get_by_label(STRINGS["pin_label"])).to_have_value("")
        assert BODY not in await page.content()
        if tries_left == 4:
            await screenshot(page, "client-02-pin-error")
    assert await submit_pin(page, WRONG) == 404
    await expect(page.get_by_role("heading", level=1)).to_have_text(STRINGS["unavailable_title"])
    await expect(page.get_by_label(STRINGS["pin_label"])).to_have_count(0)
    await screenshot(page, "client-05-locked")

    # The right PIN, from the form that was already open, is refused as well.
    assert await submit_pin(other.page, PIN) == 404
    await expect(other.page.get_by_role("heading", level=1)).to_have_text(STRINGS["unavailable_title"])
    assert BODY not in await other.page.content()
    # And opening the link afresh shows the same page, with no PIN form.
    await other.page.goto(live.link(f"/s/{token}"))
    await expect(other.page.get_by_role("heading", level=1)).to_have_text(STRINGS["unavailable_title"])
    assert await session_cookie(tab) == [] and await session_cookie(other) == []
    assert other.page.url == live.link(f"/s/{token}")
    resp = await other.page.goto(live.link("/s/thread"))
    assert resp is not None and resp.status == 401
    await expect(other.page.get_by_text(STRINGS["session_over"])).to_be_visible()
    assert tab.watch.problems() == [] and other.watch.problems() == []
    await other.context.close()


async def test_an_expired_link_offers_a_new_one_sent_to_the_same_phone(live, tab):
    page = tab.page
    await live.services.orgs.update_policy(live.org.id, link_ttl_seconds=60)
    _, token = await live.send_and_get_link(BODY)
    sms_before = len(live.sms_to())
    live.clock.advance(61)

    resp = await page.goto(live.link(f"/s/{token}"))
    assert resp is not None and resp.status == 404
    await expect(page.get_by_role("heading", level=1)).to_have_text(STRINGS["unavailable_title"])
    await expect(page.get_by_text(STRINGS["unavailable_lead"])).to_be_visible()
    await expect(page.get_by_label(STRINGS["pin_label"])).to_have_count(0)
    assert BODY not in await page.content()
    await screenshot(page, "client-06-unavailable")

    async with page.expect_navigation(url=live.link("/s/renew")):
        await page.get_by_role("button", name=STRINGS["renew_button"]).click()
    await expect(page.get_by_role("status")).to_have_text(STRINGS["renew_done"])
    await expect(page.get_by_role("button", name=STRINGS["renew_button"])).to_have_count(0)
    await screenshot(page, "client-07-renewal-requested")

    new_token = await live.next_link(already=1)
    assert new_token != token
    assert len(live.sms_to()) == sms_before + 1
    assert live.sms_to()[-1]["to"] == "+15551230001"
    assert BODY not in live.sms_to()[-1]["body"]
    # The new link opens (the old one still does not).
    await page.goto(live.link(f"/s/{new_token}"))
    await expect(page.get_by_role("heading", level=1)).to_have_text(STRINGS["open_title"])
    await page.goto(live.link(f"/s/{token}"))
    await expect(page.get_by_role("heading", level=1)).to_have_text(STRINGS["unavailable_title"])
    assert tab.watch.problems() == []


async def test_an_idle_session_ends_and_a_pending_reply_is_not_sent(live, tab):
    page = tab.page
    _, token = await live.send_and_get_link(BODY)
    await open_link(page, live, token)
    await expect(page.locator("#messages li.msg")).to_have_count(1)

    live.clock.advance(live.org.policy.client_idle_seconds + 1)
    await page.get_by_label(STRINGS["reply_label"]).fill("Sent after the timeout")
    async with page.expect_response(lambda r: r.url == live.link("/s/thread/reply")) as answer:
        await page.get_by_role("button", name=STRINGS["reply_button"]).click()
    assert (await answer.value).status == 401
    await expect(page.get_by_text(STRINGS["session_over"])).to_be_visible()
    assert await inbound_texts(live) == []

    resp = await page.goto(live.link("/s/thread"))
    assert resp is not None and resp.status == 401
    await expect(page.get_by_text(STRINGS["session_over"])).to_be_visible()
    assert BODY not in await page.content()
    await expect(page.get_by_label(STRINGS["reply_label"])).to_have_count(0)
    await screenshot(page, "client-08-session-ended")
    assert tab.watch.problems() == []


async def test_signing_out_ends_the_session(live, tab):
    page = tab.page
    _, token = await live.send_and_get_link(BODY)
    await open_link(page, live, token)
    async with page.expect_navigation(url=live.link("/s/logout")):
        await page.get_by_role("button", name=STRINGS["sign_out"]).click()
    await expect(page.get_by_text(STRINGS["signed_out"])).to_be_visible()
    assert await session_cookie(tab) == []
    await page.go_back()  # the conversation is not served from the cache
    await expect(page.get_by_text(BODY)).to_have_count(0)
    resp = await page.goto(live.link("/s/thread"))
    assert resp is not None and resp.status == 401
    assert tab.watch.problems() == []


# -- cross-site request forgery --------------------------------------------------------------------
async def test_a_form_on_another_origin_cannot_post_a_reply(live, tab):
    page = tab.page
    _, token = await live.send_and_get_link(BODY)
    await open_link(page, live, token)
    stolen = await page.locator("form[action='/s/thread/reply'] input[name=csrf]").get_attribute("value")
    assert stolen

    # The attacker's page: plain forms (no script) posting to the gateway. 127.0.0.1 on another
    # port is a different origin but the same site, so the SameSite=Lax cookie IS sent: only the
    # Origin/Sec-Fetch-Site check and the CSRF token stand in the way.
    def form(label: str, csrf: str | None) -> str:
        hidden = f'<input type="hidden" name="csrf" value="{csrf}">' if csrf else ""
        return (f'<form method="post" action="{live.url}/s/thread/reply">{hidden}'
                f'<input type="hidden" name="body" value="FORGED {label}"><button>{label}</button></form>')

    async def evil(request: web.Request) -> web.Response:
        html = "<!doctype html><title>Win a prize</title>" + form("no token", None) + form("stolen token", stolen)
        return web.Response(text=html, content_type="text/html")

    async def quiet(request: web.Request) -> web.Response:
        # With no-referrer the browser sends `Origin: null` (as on the portal's own pages).
        html = ('<!doctype html><meta name="referrer" content="no-referrer"><title>Win a prize</title>'
                + form("null origin", stolen))
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", evil)
    app.router.add_get("/quiet", quiet)
    runner, evil_url = await serve(app)
    try:
        assert evil_url != live.url
        # Another tab of the victim's browser (same cookies) visits the attacker's pages.
        attack = await tab.context.new_page()
        for path, label, origin in (("/", "no token", evil_url), ("/", "stolen token", evil_url),
                                    ("/quiet", "null origin", "null")):
            await attack.goto(evil_url + path)
            async with attack.expect_response(lambda r: r.url == live.link("/s/thread/reply")) as answer:
                await attack.get_by_role("button", name=label).click()
            response = await answer.value
            assert response.status == 403, label  # 403, not 401: the session cookie was sent
            headers = await response.request.all_headers()
            assert headers.get("origin") == origin, label
            assert headers.get("sec-fetch-site") == "same-site", label
            assert "hl_client=" in headers.get("cookie", ""), label
            await attack.wait_for_load_state()
            await expect(attack.get_by_text("This form expired")).to_be_visible()
    finally:
        await runner.cleanup()
    assert await inbound_texts(live) == []
    # The real page still works.
    await page.reload()
    await page.get_by_label(STRINGS["reply_label"]).fill(REPLY)
    async with page.expect_navigation(url=live.link("/s/thread")):
        await page.get_by_role("button", name=STRINGS["reply_button"]).click()
    await expect(page.locator("#messages li.msg.mine .body")).to_have_text(REPLY)
    assert await inbound_texts(live) == [REPLY]


# -- console and CSP ------------------------------------------------------------------------------
async def test_client_pages_log_no_errors_and_violate_no_csp(live, tab, browser):
    page = tab.page
    watch = tab.watch
    _, token = await live.send_and_get_link(BODY)
    visited: list[str] = []

    async def seen(name: str) -> None:
        await page.wait_for_load_state("load")
        csp = await page.evaluate("window.__csp || []")
        assert csp == [], (name, csp)
        assert watch.problems() == [], (name, watch.problems())
        visited.append(name)

    await page.goto(live.link(f"/s/{token}"))
    await seen("link page")
    await submit_pin(page, WRONG)
    await seen("PIN error")
    await submit_pin(page, PIN)
    await expect(page.locator("#messages li.msg")).to_have_count(1)
    # Let client.js run a poll cycle (fetch under connect-src 'self').
    async with page.expect_response(lambda r: "/s/thread/updates" in r.url, timeout=10_000) as poll:
        pass
    assert (await poll.value).status == 200
    await seen("thread")
    await page.get_by_label(STRINGS["reply_label"]).fill(REPLY)
    async with page.expect_navigation(url=live.link("/s/thread")):
        await page.get_by_role("button", name=STRINGS["reply_button"]).click()
    await seen("thread after reply")
    async with page.expect_navigation():
        await page.get_by_role("button", name=STRINGS["sign_out"]).click()
    await seen("signed out")
    await page.goto(live.link("/s/thread"))
    await seen("session over")
    await page.goto(live.link("/s/" + "A" * 43))
    await seen("unavailable")
    async with page.expect_navigation():
        await page.get_by_role("button", name=STRINGS["renew_button"]).click()
    await seen("renewal requested")
    await page.goto(live.link("/s/not-a-token"))
    await seen("malformed link")
    assert len(visited) == 9

    # The detector itself works: a blocked inline script on a client page is reported.
    probe = await open_tab(browser)
    await probe.page.goto(live.link(f"/s/{'B' * 43}"))
    await probe.page.evaluate("""() => { const s = document.createElement('script');
        s.textContent = 'window.__ran = 1'; document.body.appendChild(s); }""")
    await probe.page.wait_for_function("(window.__csp || []).length > 0")
    assert await probe.page.evaluate("window.__ran") is None
    assert any(v["directive"].startswith("script-src") for v in probe.watch.csp_violations)
    await probe.context.close()


# -- accessibility at 320 px ---------------------------------------------------------------------
async def check_a11y(page: Page, name: str) -> None:
    report = await a11y_report(page)
    assert report.problems == [], (name, report.problems)
    assert report.checked, (name, "no text was checked for contrast")
    assert report.scroll_width <= 320, (name, "horizontal scroll", report.scroll_width)
    await screenshot(page, f"client-320-{name}")


async def test_client_pages_are_accessible_and_fit_320px(live, browser):
    narrow = await open_tab(browser, width=320, height=640)
    page = narrow.page
    _, token = await live.send_and_get_link(BODY + " " + "x" * 60)  # a long word must wrap, not scroll

    await page.goto(live.link(f"/s/{token}"))
    await check_a11y(page, "link-page")
    # Keyboard only: Tab to the PIN, type it, Tab to the button, press Enter.
    order = await tab_order(page, 4)
    assert any(o.startswith("input[name=pin]") for o in order), order
    assert order.index(next(o for o in order if o.startswith("input[name=pin]"))) < order.index(
        next(o for o in order if o.startswith("button")))
    await page.get_by_label(STRINGS["pin_label"]).focus()
    await page.keyboard.type(WRONG)
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    await check_a11y(page, "pin-error")
    pin = page.get_by_label(STRINGS["pin_label"])
    assert await pin.get_attribute("aria-describedby")
    await pin.focus()
    await page.keyboard.type(PIN)
    async with page.expect_navigation(url=live.link("/s/thread")):
        await page.keyboard.press("Enter")

    # A reply, so both sides' bubbles are checked for contrast.
    await page.get_by_label(STRINGS["reply_label"]).fill(REPLY)
    async with page.expect_navigation(url=live.link("/s/thread")):
        await page.get_by_role("button", name=STRINGS["reply_button"]).click()
    await expect(page.locator("#messages li.msg")).to_have_count(2)
    await check_a11y(page, "thread")
    order = await tab_order(page, 12)
    body_at = next((i for i, o in enumerate(order) if o.startswith("textarea[name=body]")), None)
    send_at = next((i for i, o in enumerate(order) if o.startswith("button") and STRINGS["reply_button"] in o), None)
    assert body_at is not None and send_at is not None and body_at < send_at, order
    assert any(STRINGS["sign_out"] in o for o in order), order
    # Keyboard only: type a reply in the textarea and activate the button with the keyboard.
    await page.get_by_label(STRINGS["reply_label"]).focus()
    await page.keyboard.type("Typed with the keyboard")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent.trim()") == STRINGS["reply_button"]
    async with page.expect_navigation(url=live.link("/s/thread")):
        await page.keyboard.press("Enter")
    await expect(page.locator("#messages li.msg.mine .body").last).to_have_text("Typed with the keyboard")

    live.clock.advance(live.org.policy.client_idle_seconds + 1)
    await page.goto(live.link("/s/thread"))
    await check_a11y(page, "session-over")
    await page.goto(live.link(f"/s/{'C' * 43}"))
    await check_a11y(page, "unavailable")
    await page.get_by_role("button", name=STRINGS["renew_button"]).focus()
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    await check_a11y(page, "renewal-requested")
    assert narrow.watch.problems() == []
    await narrow.context.close()

