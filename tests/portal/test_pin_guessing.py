"""Guessing PINs is bounded per thread, not per link; a renewal replaces the link it renews and is
capped per thread per day; the per-address limiter answers before any PIN is checked; an org that
requires a PIN never opens a link that has none.

Observed as a client or an attacker would: statuses, pages, cookies, what the Twilio stand-in was
asked to send, and the audit log.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from gateway.security.audit import Actor
from gateway.security.tokens import csrf_token, token_hash
from tests.portal.test_client_portal import (
    BODY,
    PIN,
    WRONG,
    csrf_of,
    normalized,
    post_open,
    random_token,
    renew,
    send_secure,
    thread_page,
)
from tests.support.harness import Gateway


async def links_to_one_thread(gw: Gateway, n: int) -> tuple[str, list[str]]:
    """n secure messages to the same client (one thread), each with its own PIN-guarded link."""
    tokens, thread_id = [], ""
    for i in range(n):
        data, token = await send_secure(gw, body=f"{BODY} ({i})")
        tokens.append(token)
        thread_id = data["thread_id"]
    assert len(set(tokens)) == n
    return thread_id, tokens


async def form_csrf(gw: Gateway, token: str) -> str:
    return csrf_of(await (await gw.client.get(f"/s/{token}")).text())


def open_csrf(gw: Gateway, token: str) -> str:
    """The CSRF value the open form of `token` carries (for a link whose page no longer shows the form)."""
    return csrf_token(gw.services.sealer.keyring.mac_key, "open|" + token_hash(token))


async def audit_entries(gw: Gateway, action: str) -> list[dict]:
    return [e async for e in gw.store.audit.find({"org_id": gw.org.id, "action": action}).sort("seq", 1)]


async def guard_of(gw: Gateway, thread_id: str) -> dict:
    guard = await gw.store.link_guards.find_one({"org_id": gw.org.id, "thread_id": thread_id})
    assert guard is not None
    return guard


# -- one count per thread ------------------------------------------------------------------------
async def test_wrong_pins_spread_over_a_threads_links_lock_every_link_of_it(gw):
    thread_id, tokens = await links_to_one_thread(gw, 3)
    csrfs = [await form_csrf(gw, t) for t in tokens]
    # Two wrong on the first link, two on the second: the second link already counts the first's.
    for (i, tries_left) in ((0, 4), (0, 3), (1, 2), (1, 1)):
        resp = await post_open(gw, tokens[i], csrfs[i], pin=WRONG)
        assert resp.status == 401
        assert f"Tries left before this link locks: {tries_left}." in await resp.text()
    # The fifth, on a third link, locks them all.
    assert (await post_open(gw, tokens[2], csrfs[2], pin=WRONG)).status == 404

    unavailable = normalized(await (await gw.client.get(f"/s/{random_token()}")).text())
    for token, csrf in zip(tokens, csrfs, strict=True):
        right = await post_open(gw, token, csrf, pin=PIN)
        assert right.status == 404 and "hl_client" not in (right.headers.get("Set-Cookie") or "")
        assert normalized(await right.text(), token) == unavailable
        assert (await gw.client.get(f"/s/{token}")).status == 404

    # A fresh link to the thread (the answer to a texted reply) is locked as well.
    await gw.inbound_sms("did you get my results?")
    await gw.drain()
    fresh = gw.last_link_token()
    assert fresh not in tokens
    assert (await gw.client.get(f"/s/{fresh}")).status == 404
    assert (await post_open(gw, fresh, open_csrf(gw, fresh), pin=PIN)).status == 404
    assert await gw.store.sessions.count_documents({}) == 0
    assert (await thread_page(gw))[0] == 401

    actions = await gw.audit_actions()
    assert actions.count("link.pin_failed") == 5 and actions.count("link.locked") == 1
    assert "link.opened" not in actions
    assert [e["detail"]["failures"] for e in await audit_entries(gw, "link.pin_failed")] == [1, 2, 3, 4, 5]
    assert (await gw.store.threads.find_one({"_id": thread_id}))["attention"] == "link_locked"

    # Staff unlock from one link: the thread unlocks, and the count starts again from zero.
    second = await gw.store.links.find_one({"token_hash": token_hash(tokens[1])})
    await gw.services.links.unlock(gw.org.id, second["_id"], Actor("staff", "s1"))
    assert (await guard_of(gw, thread_id))["failures"] == 0
    resp = await post_open(gw, fresh, await form_csrf(gw, fresh), pin=WRONG)
    assert resp.status == 401 and "Tries left before this link locks: 4." in await resp.text()
    assert (await post_open(gw, tokens[0], csrfs[0], pin=PIN)).status == 303
    status, html = await thread_page(gw)
    assert status == 200 and BODY in html


async def test_the_right_pin_on_any_link_starts_the_threads_count_again(gw):
    thread_id, tokens = await links_to_one_thread(gw, 2)
    csrfs = [await form_csrf(gw, t) for t in tokens]
    for _ in range(4):
        assert (await post_open(gw, tokens[0], csrfs[0], pin=WRONG)).status == 401
    assert (await post_open(gw, tokens[1], csrfs[1], pin=PIN)).status == 303  # NIST 800-63B 5.2.2: consecutive
    gw.client.session.cookie_jar.clear()
    assert (await guard_of(gw, thread_id))["failures"] == 0
    resp = await post_open(gw, tokens[0], csrfs[0], pin=WRONG)
    assert resp.status == 401 and "Tries left before this link locks: 4." in await resp.text()


async def test_concurrent_wrong_pins_over_several_links_never_pass_the_threshold(gw):
    thread_id, tokens = await links_to_one_thread(gw, 3)
    csrfs = [await form_csrf(gw, t) for t in tokens]
    responses = await asyncio.gather(*(
        post_open(gw, tokens[i % 3], csrfs[i % 3], pin=f"{100000 + i}") for i in range(30)))
    statuses = [r.status for r in responses]
    assert 303 not in statuses and statuses.count(401) <= 4
    guard = await guard_of(gw, thread_id)
    assert guard["failures"] == 5 and guard["locked_at"] is not None
    links = [d async for d in gw.store.links.find({"thread_id": thread_id})]
    assert len(links) == 3 and all(d["locked_at"] is not None for d in links)
    assert sum(d["failures"] for d in links) == 5
    actions = await gw.audit_actions()
    assert 1 <= actions.count("link.pin_failed") <= 5
    assert actions.count("link.locked") == 1
    assert await gw.services.audit.verify(gw.org.id) is None
    for token, csrf in zip(tokens, csrfs, strict=True):
        right = await post_open(gw, token, csrf, pin=PIN)
        assert right.status in (404, 429) and "hl_client" not in (right.headers.get("Set-Cookie") or "")
    assert await gw.store.sessions.count_documents({}) == 0


# -- renewal -----------------------------------------------------------------------------------
async def renew_form_csrf(gw: Gateway) -> str:
    """The renewal form's CSRF value, from the page any unusable link shows."""
    return csrf_of(await (await gw.client.get(f"/s/{random_token()}")).text())


async def test_renewing_a_link_revokes_it_and_ends_its_sessions(gw):
    await gw.services.orgs.update_policy(gw.org.id, link_ttl_seconds=7 * 86400)
    data, old = await send_secure(gw)
    old_csrf = await form_csrf(gw, old)
    assert (await post_open(gw, old, old_csrf, pin=PIN)).status == 303
    assert (await thread_page(gw))[0] == 200
    sent = len(gw.sms_to())

    resp = await gw.client.post("/s/renew", data={"csrf": await renew_form_csrf(gw), "token": old},
                                allow_redirects=False)
    assert resp.status == 200
    await gw.drain()
    assert len(gw.sms_to()) == sent + 1
    new = gw.last_link_token()
    assert new != old

    # The old token now gets the page every unusable link gets, and its session has ended.
    old_page = await gw.client.get(f"/s/{old}")
    unknown = await gw.client.get(f"/s/{random_token()}")
    assert old_page.status == unknown.status == 404
    assert normalized(await old_page.text(), old) == normalized(await unknown.text())
    assert (await post_open(gw, old, old_csrf, pin=PIN)).status == 404
    status, html = await thread_page(gw)
    assert status == 401 and BODY not in html
    revoked = await audit_entries(gw, "link.revoked")
    assert len(revoked) == 1 and revoked[0]["actor"]["kind"] == "client"
    new_link = await gw.store.links.find_one({"token_hash": token_hash(new)})
    assert revoked[0]["detail"] == {"replaced_by": new_link["_id"]}

    # The new one opens the same conversation.
    gw.client.session.cookie_jar.clear()
    assert (await gw.open_link(new, pin=PIN)).status == 303
    status, html = await thread_page(gw)
    assert status == 200 and BODY in html


async def test_the_fourth_renewal_in_a_day_sends_nothing_and_looks_the_same(gw):
    await gw.services.orgs.update_policy(gw.org.id, link_ttl_seconds=3600)
    data, token = await send_secure(gw, pin=None)
    first_renewal = None
    pages: list[str] = []
    for _ in range(3):  # each renewal's link expires unopened, and the client asks again
        gw.clock.advance(seconds=3601)
        first_renewal = first_renewal or gw.clock.now()
        before = len(gw.sms_to())
        status, html = await renew(gw, token)
        assert status == 200 and len(gw.sms_to()) == before + 1
        pages.append(normalized(html))
        token = gw.last_link_token()

    gw.clock.advance(seconds=3601)
    before = len(gw.sms_to())
    status, html = await renew(gw, token)
    assert status == 200 and normalized(html) == pages[0]
    assert len(gw.sms_to()) == before  # nothing sent
    assert gw.last_link_token() == token
    refused = await audit_entries(gw, "link.renewal_refused")
    assert [(e["outcome"], e["detail"]["reason"], e["thread_id"]) for e in refused] == [
        ("denied", "daily_limit", data["thread_id"])]
    assert [e["detail"] for e in await audit_entries(gw, "link.renewal_requested")] == [{"sent": True}] * 3

    # A day after the first renewal, the thread may renew again.
    gw.clock.set(first_renewal + timedelta(hours=24, seconds=1))
    status, _ = await renew(gw, token)
    assert status == 200 and len(gw.sms_to()) == before + 1


async def test_link_renewals_per_day_is_the_orgs_setting(gw):
    await gw.services.orgs.update_policy(gw.org.id, link_renewals_per_day=1, link_ttl_seconds=3600)
    _, token = await send_secure(gw, pin=None)
    gw.clock.advance(seconds=3601)
    before = len(gw.sms_to())
    assert (await renew(gw, token))[0] == 200
    assert len(gw.sms_to()) == before + 1
    gw.clock.advance(seconds=3601)  # the new link expired too, within the day
    assert (await renew(gw, gw.last_link_token()))[0] == 200
    assert len(gw.sms_to()) == before + 1
    await gw.services.orgs.update_policy(gw.org.id, link_renewals_per_day=0)
    gw.clock.advance(hours=24)  # a new day: still nothing, the org turned renewals off
    assert (await renew(gw, gw.last_link_token()))[0] == 200
    assert len(gw.sms_to()) == before + 1


# -- the per-address limiter comes first ---------------------------------------------------------
async def test_a_throttled_client_gets_429_before_its_pin_is_checked(gw):
    data, token = await send_secure(gw)
    csrf = await form_csrf(gw, token)
    for _ in range(20):  # guessing links from this address uses up its failures
        assert (await gw.client.get(f"/s/{random_token()}")).status == 404

    right = await post_open(gw, token, csrf, pin=PIN)
    wrong = await post_open(gw, token, csrf, pin=WRONG)
    assert right.status == wrong.status == 429
    assert "hl_client" not in (right.headers.get("Set-Cookie") or "")
    right_html, wrong_html = await right.text(), await wrong.text()
    assert BODY not in right_html
    assert normalized(right_html) == normalized(wrong_html)  # nothing tells the right PIN from a wrong one
    assert await gw.store.sessions.count_documents({}) == 0
    assert (await thread_page(gw))[0] == 401
    actions = await gw.audit_actions()
    assert "link.opened" not in actions and "link.pin_failed" not in actions  # the wrong one was not counted
    assert await gw.store.link_guards.count_documents({"thread_id": data["thread_id"], "failures": {"$gt": 0}}) == 0


# -- pin_required ------------------------------------------------------------------------------------
async def test_an_org_requiring_a_pin_never_opens_a_link_without_one(gw):
    data, token = await send_secure(gw, pin=None)  # sent before the org began to require PINs
    await gw.services.orgs.update_policy(gw.org.id, pin_required=True)
    csrf = await form_csrf(gw, token)
    resp = await post_open(gw, token, csrf)
    assert resp.status == 403
    html = await resp.text()
    assert BODY not in html and "Please contact Riverside Clinic" in html
    assert "hl_client" not in (resp.headers.get("Set-Cookie") or "")
    assert await gw.store.sessions.count_documents({}) == 0
    assert (await thread_page(gw))[0] == 401
    refused = await audit_entries(gw, "link.open_refused")
    assert [(e["outcome"], e["detail"], e["thread_id"]) for e in refused] == [
        ("denied", {"reason": "pin_required"}, data["thread_id"])]
    assert "link.opened" not in await gw.audit_actions()

    # With a PIN on the contact, the same link asks for it and opens with it.
    link = await gw.store.links.find_one({"token_hash": token_hash(token)})
    await gw.services.contacts.set_pin(gw.org.id, link["contact_id"], "135790")
    assert 'name="pin"' in await (await gw.client.get(f"/s/{token}")).text()
    assert (await post_open(gw, token, csrf, pin="135790")).status == 303
    status, html = await thread_page(gw)
    assert status == 200 and BODY in html


async def test_under_pin_required_a_renewal_sends_no_link_without_a_pin(gw):
    _, token = await send_secure(gw, pin=None)
    await gw.services.orgs.update_policy(gw.org.id, pin_required=True)
    gw.clock.advance(seconds=86400 + 1)
    before = len(gw.sms_to())
    status, html = await renew(gw, token)
    assert status == 200 and len(gw.sms_to()) == before  # the same page, and nothing sent
    assert [e["detail"] for e in await audit_entries(gw, "link.renewal_requested")] == [{"sent": False}]
    assert "link.revoked" not in await gw.audit_actions()
