"""Break-glass alerts mailed to the org's admins through the outbox (docs/security-model.md, 'Staff access').

Every alert is also one "staff_alert" outbox job per enabled admin: the mail is neutral (the org
and where to review, no client, thread or reason), goes to the admin's account address read at
send time, is retried like any mail, and goes out once however often the dispatcher runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import bson
import pytest

from gateway.messaging.alerts import STAFF_ALERT, staff_alert_job_id
from gateway.runtime.app import build_dispatcher, build_runtime, create_app
from gateway.runtime.services import build_services
from gateway.security.api_keys import ApiKeys
from gateway.security.audit import SYSTEM
from outbound.compose_email import render_staff_alert
from outbound.sandbox import SandboxEmailSender
from outbound.twilio_sms import TwilioSmsSender
from tests.conftest import make_config
from tests.portal.test_break_glass import CLIENT_NAME, MINUTES, REASON, SECRET, THEIRS, break_glass
from tests.portal.test_staff_support import make_staff, signed_in
from tests.support.harness import ORG_EMAIL, ORG_NUMBER, PUBLIC_URL, Gateway

CLIENT_MAIL = "robin.q@client.test"
REVIEW_URL = PUBLIC_URL + "/staff/settings/emergency-access"
SUBJECT = "Security alert: emergency access used in Riverside Clinic"
ADMINS = ("ada@riverside.test", "bo@riverside.test")
# Nothing of the client, the conversation or the reason may reach a mail or a job.
LEAKS = ("canary-r3as0n", "distress", "canary-b7g1", "biopsy", CLIENT_NAME, "Robin", "Quillfeather",
         CLIENT_MAIL, "client.test", THEIRS, THEIRS[2:])


async def grant(gw: Gateway, *, admins: tuple[str, ...] = ADMINS, disabled: tuple[str, ...] = ()) -> dict[str, Any]:
    """Admins (some disabled), an agent who breaks the glass on a colleague's email thread."""
    await gw.services.orgs.update_policy(gw.org.id, agent_scope="assigned", break_glass_minutes=MINUTES)
    members = {email: await make_staff(gw, email, "admin") for email in (*admins, *disabled)}
    for email in disabled:
        await gw.services.staff.set_disabled(gw.org.id, members[email].id, True)
    colleague = await make_staff(gw, "colleague@riverside.test")
    sent = await gw.services.conversations.send(gw.org, channel="email", body=SECRET, actor=SYSTEM,
                                                to_email=CLIENT_MAIL, to_phone=THEIRS, name=CLIENT_NAME,
                                                secure=True, allow_sensitive=True)
    thread_id = str(sent.thread["_id"])
    await gw.services.conversations.assign(gw.org.id, thread_id, colleague.id, SYSTEM)
    await gw.drain()  # the client's own notice goes out now: what follows is the alert alone
    before = len(gw.mail.messages) if gw.mail is not None else 0
    browser, agent = await signed_in(gw)
    async with browser as b:
        assert (await break_glass(b, thread_id)).status == 303
    return {"members": members, "agent": agent, "colleague": colleague, "thread_id": thread_id, "before": before}


def alert_mail(gw: Gateway, since: int) -> list[dict[str, Any]]:
    return gw.mail.messages[since:]


def decoded(message: EmailMessage) -> str:
    """Every header and every text part of a mail, decoded (raw bytes may be quoted-printable)."""
    parts = [f"{k}: {v}" for k, v in message.items()]
    for part in message.walk():
        if part.get_content_maintype() == "text":
            parts.append(part.get_content())
    return "\n".join(parts)


async def staff_jobs(gw: Gateway) -> list[dict[str, Any]]:
    return [j async for j in gw.store.outbox.find({"kind": STAFF_ALERT}).sort("_id", 1)]


async def test_each_enabled_admin_gets_one_neutral_mail_at_their_address(gw):
    s = await grant(gw, disabled=("off@riverside.test",))
    members, agent = s["members"], s["agent"]
    alert = await gw.store.alerts.find_one({})
    jobs = await staff_jobs(gw)
    # One job per enabled admin, named by (alert, admin); none for the disabled admin or agents.
    assert sorted(j["_id"] for j in jobs) == sorted(staff_alert_job_id(alert["_id"], members[a].id) for a in ADMINS)
    for job in jobs:
        raw = bson.encode(job)
        assert job["template"] == "breakglass.grant" and job["alert_id"] == alert["_id"]
        assert job["contact_id"] is None and job["state"] == "pending"
        for address in (*ADMINS, "off@riverside.test", agent.email, "@riverside.test"):
            assert address.encode() not in raw, (address, job)  # no address in clear in the job
        for leak in LEAKS:
            assert leak.encode() not in raw, (leak, job)

    await gw.drain()
    mails = alert_mail(gw, s["before"])
    assert sorted(r for m in mails for r in m["rcpt_tos"]) == sorted(ADMINS)
    for address in ADMINS:
        [mail] = gw.mail_to(address)
        assert str(mail["To"]) == address and mail["Subject"] == SUBJECT
        assert mail["Auto-Submitted"] == "auto-generated" and mail["Reply-To"] is None
        assert ORG_EMAIL in str(mail["From"])
        text = mail.get_body(("plain",)).get_content()
        html = mail.get_body(("html",)).get_content()
        assert "Emergency access was used in Riverside Clinic." in text and REVIEW_URL in text
        assert f'href="{REVIEW_URL}"' in html
    for address in ("off@riverside.test", agent.email, s["colleague"].email):
        assert gw.mail_to(address) == []
    for m in mails:
        text = decoded(m["message"])
        for leak in (*LEAKS, REASON, agent.email, s["thread_id"], alert["_id"], alert["ids"]["grant_id"]):
            assert leak.encode() not in m["data"], leak
            assert leak not in text, leak

    jobs = await staff_jobs(gw)
    assert {j["state"] for j in jobs} == {"sent"}
    assert all(j["provider_id"].startswith("<" + j["mail_key"] + "@") for j in jobs)
    sent_raw = b"".join(bson.encode(j) for j in jobs)
    assert not [a for a in (*ADMINS, *LEAKS) if a.encode() in sent_raw]
    # The dispatcher ran again (and later): nobody is mailed twice.
    await gw.drain()
    gw.clock.advance(3600)
    await gw.drain()
    assert len(gw.mail.messages) == s["before"] + len(ADMINS)
    # The banner is unchanged: the alert is still open until an admin reviews it.
    assert await gw.store.alerts.count_documents({"reviewed": False}) == 1


async def test_a_lone_admin_is_mailed_on_the_one_job_path(gw):
    s = await grant(gw, admins=ADMINS[:1])
    [job] = await staff_jobs(gw)
    await gw.runtime.dispatcher.deliver_batch([await gw.runtime.dispatcher.worker.claim_id(job["_id"])])
    [mail] = gw.mail_to(ADMINS[0])
    assert mail["Subject"] == SUBJECT
    assert len(alert_mail(gw, s["before"])) == 1
    assert (await gw.store.outbox.find_one({"_id": job["_id"]}))["state"] == "sent"
    await gw.drain()
    assert len(alert_mail(gw, s["before"])) == 1


@pytest.mark.parametrize("path", ["one", "batch"])
async def test_an_admin_disabled_deleted_or_demoted_since_the_alert_fails_the_job_without_mail(gw, path):
    admins = ("ada@riverside.test", "bo@riverside.test", "cy@riverside.test", "dee@riverside.test")
    s = await grant(gw, admins=admins)
    members = s["members"]
    await gw.services.staff.set_disabled(gw.org.id, members[admins[0]].id, True)
    await gw.store.staff.delete_one({"_id": members[admins[1]].id})
    await gw.services.staff.set_role(gw.org.id, members[admins[2]].id, "agent")
    dispatcher = gw.runtime.dispatcher
    if path == "batch":
        jobs = await dispatcher.worker.claim_batch(await dispatcher.worker.due_ids())
        assert len(jobs) == 4
        await dispatcher.deliver_batch(jobs)
    else:
        for job in await staff_jobs(gw):
            await dispatcher.deliver_batch([await dispatcher.worker.claim_id(job["_id"])])
    await gw.drain()
    assert [r for m in alert_mail(gw, s["before"]) for r in m["rcpt_tos"]] == [admins[3]]
    outcome = {j["staff_id"]: (j["state"], (j["last_error"] or {}).get("code")) for j in await staff_jobs(gw)}
    assert outcome == {
        members[admins[0]].id: ("failed", "staff_disabled"),
        members[admins[1]].id: ("failed", "staff_deleted"),
        members[admins[2]].id: ("failed", "staff_not_admin"),
        members[admins[3]].id: ("sent", None),
    }


async def test_a_refusing_relay_is_retried_after_backoff_and_mails_once(gw):
    s = await grant(gw, admins=ADMINS[:1])
    gw.mail.reject_next(451, "4.3.0 try again later", stage="RCPT")
    await gw.drain()
    assert alert_mail(gw, s["before"]) == []
    [job] = await staff_jobs(gw)
    assert job["state"] == "pending" and job["last_error"]["code"] == "smtp_4xx" and job["attempts"] == 1
    await gw.drain()  # not due yet
    assert alert_mail(gw, s["before"]) == []
    gw.clock.advance((job["next_attempt_at"] - gw.clock.now()).total_seconds() + 0.001)
    await gw.drain()
    [mail] = gw.mail_to(ADMINS[0])
    # The retry is the same mail: its Message-ID was fixed when the job was queued.
    assert str(mail["Message-ID"]).startswith("<" + job["mail_key"] + "@")
    job = await gw.store.outbox.find_one({"_id": job["_id"]})
    assert job["state"] == "sent" and job["attempts"] == 2
    gw.clock.advance(3600)
    await gw.drain()
    assert len(alert_mail(gw, s["before"])) == 1


async def test_a_dispatcher_without_a_mail_sender_fails_the_job_visibly(gw):
    await grant(gw, admins=ADMINS[:1])
    [job] = await staff_jobs(gw)
    bare = build_dispatcher(gw.services, gw.runtime.sms, owner="no-mail")
    await bare.deliver_batch([await bare.worker.claim_id(job["_id"])])
    job = await gw.store.outbox.find_one({"_id": job["_id"]})
    assert (job["state"], job["last_error"]["code"]) == ("failed", "no_sender")


async def test_an_alert_is_mailed_only_to_admins_of_its_own_org(gw):
    other = await gw.services.orgs.create("Hillside Clinic", "+15005550009")
    await make_staff(gw, "hill-admin@hillside.test", "admin", org_id=other.id)
    s = await grant(gw, admins=ADMINS[:1])
    await gw.drain()
    assert [r for m in alert_mail(gw, s["before"]) for r in m["rcpt_tos"]] == [ADMINS[0]]
    assert gw.mail_to("hill-admin@hillside.test") == []


@pytest.fixture
async def sandbox_gw(store, keyring, clock, twilio, aiohttp_client) -> AsyncIterator[Gateway]:
    """A gateway with no SMTP relay configured: mail goes to the sandbox (/sandbox, on by
    [server] sandbox = true, since SMS goes to a real provider)."""
    services = build_services(make_config(twilio, sandbox=True), store, keyring, clock)
    sender = TwilioSmsSender(twilio.account_sid, twilio.auth_token, api_base=twilio.base_url, timeout=3)
    runtime = build_runtime(services, sms=sender)
    assert isinstance(runtime.email, SandboxEmailSender)
    client = await aiohttp_client(create_app(runtime, workers=False))
    org = await services.orgs.create("Riverside Clinic", ORG_NUMBER, email_from=ORG_EMAIL)
    key, _ = await ApiKeys(services.store, clock).create(org.id, "tests")
    yield Gateway(client, services, runtime, twilio, clock, org, key)
    await sender.close()


async def test_with_the_sandbox_mailer_the_alert_shows_at_sandbox(sandbox_gw):
    gw = sandbox_gw
    await grant(gw, admins=ADMINS[:1])
    await gw.drain()
    mails = [m for m in await gw.runtime.sandbox_mail.messages() if m["subject"] == SUBJECT]
    assert [m["to"] for m in mails] == [ADMINS[0]] and REVIEW_URL in mails[0]["text"]
    page = await (await gw.client.get("/sandbox")).text()
    assert SUBJECT in page and ADMINS[0] in page
    raw = b"".join([bson.encode(d) async for d in gw.store.sandbox_mail.find({})])
    assert ADMINS[0].encode() not in raw  # the sandbox keeps its mail sealed


def test_the_alert_mail_escapes_the_org_name_and_knows_only_its_alert_kinds():
    subject, text, html = render_staff_alert("breakglass.grant", org_name="<b>River\r\nside</b>",
                                             public_url="https://hushlink.example/")
    assert subject == "Security alert: emergency access used in <b>River side</b>"  # one header line
    assert "&lt;b&gt;River side&lt;/b&gt;" in html and "<b>River" not in html
    assert 'href="https://hushlink.example/staff/settings/emergency-access"' in html
    assert "https://hushlink.example/staff/settings/emergency-access\n" in text
    with pytest.raises(ValueError):
        render_staff_alert("link.locked", org_name="Riverside Clinic", public_url=PUBLIC_URL)
