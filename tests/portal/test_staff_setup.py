"""First run: a one-time setup URL creates the organization and its first admin in the browser."""

from __future__ import annotations

import re

from gateway.security.staff_auth import SETUP_TTL_SECONDS, first_run_url
from gateway.security.tokens import token_hash
from tests.portal.test_staff_support import PASSWORD, Browser, make_staff
from tests.support.harness import PUBLIC_URL

FORM = {"org_name": "Hillside Therapy", "sms_number": "", "email": "owner@hillside.test", "password": PASSWORD}


async def setup_path(gw) -> str:
    url = await first_run_url(gw.store, gw.clock, PUBLIC_URL)
    assert url and url.startswith(PUBLIC_URL + "/staff/setup/")
    return url[len(PUBLIC_URL):]


async def test_setup_url_creates_org_and_admin_once(gw):
    path = await setup_path(gw)
    token = path.rsplit("/", 1)[1]
    assert await gw.store.setup_tokens.find_one({"_id": token_hash(token)})
    assert token not in repr(await gw.store.setup_tokens.find({}).to_list())
    async with Browser(gw) as b:
        page = await b.get(path)
        assert page.status == 200 and 'name="org_name"' in await page.text()
        resp = await b.post(path, FORM)
        assert resp.status == 303 and resp.headers["Location"] == "/staff/"
        inbox = await b.get("/staff/")
        assert inbox.status == 200 and "Hillside Therapy" in await inbox.text()
        assert (await b.get("/staff/settings")).status == 200  # the first member is an admin
        again = await b.get(path)
        assert again.status == 404
    org = await gw.store.orgs.find_one({"name": "Hillside Therapy"})
    assert await gw.store.staff.count_documents({"org_id": org["_id"], "role": "admin"}) == 1
    actions = [d["action"] async for d in gw.store.audit.find({"org_id": org["_id"]}).sort("seq", 1)]
    assert actions[:3] == ["org.created", "staff.created", "auth.login"]
    assert await first_run_url(gw.store, gw.clock, PUBLIC_URL) is None


async def test_setup_url_expires(gw):
    path = await setup_path(gw)
    gw.clock.advance(SETUP_TTL_SECONDS + 1)
    async with Browser(gw) as b:
        assert (await b.get(path)).status == 404


async def test_setup_is_closed_once_any_staff_exists(gw):
    path = await setup_path(gw)
    await make_staff(gw)
    async with Browser(gw) as b:
        assert (await b.get(path)).status == 404


async def test_setup_validates_and_keeps_the_token_usable(gw):
    path = await setup_path(gw)
    async with Browser(gw) as b:
        weak = await b.post(path, {**FORM, "password": "short"})
        assert weak.status == 422 and "password" in await weak.text()
        taken = await b.post(path, {**FORM, "sms_number": gw.org.sms_sender})
        assert taken.status == 422 and "sms_number" in await taken.text()
        ok = await b.post(path, FORM, csrf_from=path)
        assert ok.status == 303


async def test_setup_form_needs_csrf(gw):
    path = await setup_path(gw)
    async with Browser(gw) as b:
        await b.get(path)
        resp = await b.session.post(b.url(path), data=FORM, allow_redirects=False)
        assert resp.status == 403
    assert await gw.store.staff.count_documents({}) == 0


def test_setup_url_is_printed_by_serve():
    source = open("gateway/runtime/cli.py").read()
    assert re.search(r"first_run_url\(services\.store, services\.clock, url\)", source)
