"""Staff and client in two real browsers: the whole secure conversation, both sides live.

A front-desk worker signs in at /staff/login, composes a secure SMS, and keeps the thread open;
the client opens the link from the SMS the Twilio stand-in received and replies; each side sees
the other's message arrive without reloading (staff: Server-Sent Events; client: polling).
"""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from gateway.tenancy.staff import Staff
from portal.strings import STRINGS
from tests.browser.conftest import LiveGateway, Tab, open_tab
from tests.support.browser import a11y_report, screenshot
from tests.support.harness import CLIENT_PHONE

PASSWORD = "violet-kayak-harbor-1987"
EMAIL = "frontdesk@riverside.test"
FIRST = "Your test results are in. Please call us to book a follow-up."
CLIENT_REPLY = "Thanks - can I come in on Tuesday?"
STAFF_REPLY = "Tuesday 10:30 is booked for you."


async def sign_in(page: Page, live: LiveGateway, email: str = EMAIL, password: str = PASSWORD) -> None:
    resp = await page.goto(live.link("/staff/login"))
    assert resp is not None and resp.status == 200
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    async with page.expect_navigation(url=live.link("/staff/")):
        await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Inbox")


async def staff_a11y(page: Page, name: str) -> None:
    report = await a11y_report(page)
    assert report.problems == [], (name, report.problems)
    assert report.scroll_width <= report.client_width, (name, "horizontal scroll")
    await screenshot(page, f"staff-{name}")


async def test_staff_and_client_hold_a_secure_conversation_live(live, browser):
    await Staff(live.store, live.clock).create(live.org.id, EMAIL, "agent", PASSWORD)
    staff: Tab = await open_tab(browser, width=1280, height=900)
    client: Tab = await open_tab(browser)
    s, c = staff.page, client.page

    await sign_in(s, live)
    await staff_a11y(s, "inbox-empty")

    # Compose a secure message to a new contact.
    await s.get_by_role("link", name="Compose").click()
    await expect(s.get_by_role("heading", level=1)).to_have_text("New message")
    await staff_a11y(s, "compose")
    await s.get_by_label("Mobile number (for SMS)").fill(CLIENT_PHONE)
    await s.get_by_label("Name (optional, for a new contact)").fill("Dana Whitfield")
    await s.get_by_label("Message").fill(FIRST)
    secure = s.get_by_role("checkbox", name=re.compile("Send securely"))
    await expect(secure).to_be_checked()  # the org's default
    async with s.expect_navigation(url=re.compile(r"/staff/threads/[0-9a-f]{24}$")):
        await s.get_by_role("button", name="Send now").click()
    thread_id = s.url.rsplit("/", 1)[1]
    await expect(s.get_by_role("heading", level=1)).to_contain_text("Dana Whitfield")
    await expect(s.locator("#messages li.msg.mine .body")).to_have_text(FIRST)

    # The SMS carries only a link; the client opens it (no PIN was set) and reads the message.
    token = await live.next_link(already=0)
    assert FIRST not in live.sms_to()[-1]["body"]
    await c.goto(live.link(f"/s/{token}"))
    async with c.expect_navigation(url=live.link("/s/thread")):
        await c.get_by_role("button", name=STRINGS["open_button"]).click()
    await expect(c.locator("#messages li.msg.theirs .body")).to_have_text(FIRST)

    # The staff page is still open; wait until its live stream is up, then the client replies.
    await s.wait_for_function("document.getElementById('live') !== null")
    staff_navigations: list[str] = []
    s.on("framenavigated", lambda f: staff_navigations.append(f.url) if f == s.main_frame else None)
    await c.get_by_label(STRINGS["reply_label"]).fill(CLIENT_REPLY)
    async with c.expect_navigation(url=live.link("/s/thread")):
        await c.get_by_role("button", name=STRINGS["reply_button"]).click()
    await expect(c.locator("#messages li.msg.mine .body")).to_have_text(CLIENT_REPLY)

    # ... and it appears on the staff thread page without a reload.
    await s.locator("#messages li.msg.theirs .body", has_text=CLIENT_REPLY).wait_for(timeout=30_000)
    assert staff_navigations == []
    await expect(s.locator("#messages li.msg.theirs .meta")).to_contain_text("portal")
    await screenshot(s, "staff-thread")
    await staff_a11y(s, "thread")

    # Staff answer in the thread's textarea `body`; the client sees it arrive without a reload.
    client_navigations: list[str] = []
    c.on("framenavigated", lambda f: client_navigations.append(f.url) if f == c.main_frame else None)
    await s.locator("form#reply textarea[name=body]").fill(STAFF_REPLY)
    async with s.expect_navigation(url=re.compile(re.escape(live.link(f"/staff/threads/{thread_id}")) + "(#.*)?$")):
        await s.get_by_role("button", name="Send reply").click()
    await expect(s.locator("#messages li.msg.mine .body").last).to_have_text(STAFF_REPLY)
    await c.locator("#messages li.msg.theirs .body", has_text=STAFF_REPLY).wait_for(timeout=30_000)
    assert client_navigations == []
    assert await c.locator("#messages li.msg .body").all_inner_texts() == [FIRST, CLIENT_REPLY, STAFF_REPLY]
    # A secure reply sends another link, never the text.
    await live.next_link(already=1)
    assert all(STAFF_REPLY not in m["body"] and CLIENT_REPLY not in m["body"] for m in live.sms_to())

    # The inbox lists the thread with a neutral preview: no content of a secure thread.
    await s.get_by_role("link", name="Inbox").click()
    row = s.locator(f"#inbox-rows tr[data-thread='{thread_id}']")
    await expect(row).to_contain_text("Dana Whitfield")
    await expect(row).to_contain_text("Secure")
    row_text = await row.inner_text()
    for secret in (FIRST, CLIENT_REPLY, STAFF_REPLY, "Tuesday"):
        assert secret not in row_text
    await staff_a11y(s, "inbox")

    assert staff.watch.problems() == [], staff.watch.problems()
    assert client.watch.problems() == [], client.watch.problems()
    await staff.context.close()
    await client.context.close()


async def test_an_idle_staff_session_ends(live, browser):
    await Staff(live.store, live.clock).create(live.org.id, EMAIL, "agent", PASSWORD)
    staff = await open_tab(browser, width=1280, height=900)
    s = staff.page
    # A wrong password first: refused, with the error shown on the form.
    await s.goto(live.link("/staff/login"))
    await s.get_by_label("Email").fill(EMAIL)
    await s.get_by_label("Password").fill("not-the-password-at-all")
    async with s.expect_response(lambda r: r.request.method == "POST") as answer:
        await s.get_by_role("button", name="Sign in").click()
    assert (await answer.value).status == 401
    await expect(s.get_by_role("alert")).to_be_visible()
    await staff_a11y(s, "login-error")

    await sign_in(s, live)
    live.clock.advance(live.org.policy.staff_idle_seconds + 1)
    await s.reload()
    assert s.url.startswith(live.link("/staff/login"))
    await expect(s.get_by_role("heading", level=1)).to_have_text("Sign in")
    await expect(s.get_by_text("Inbox", exact=True)).to_have_count(0)
    assert staff.watch.problems() == [], staff.watch.problems()
    await staff.context.close()
