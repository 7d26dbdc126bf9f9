"""Email replies processed in batches: the same outcome as one at a time, O(1) round trips.

Replies arrive through the gateway's real SMTP listener; the test then claims every stored
event as one batch (what the worker does under backlog) and checks what each reply became.
"""

from __future__ import annotations

from collections import Counter

from gateway.clock import FrozenClock
from gateway.messaging.delivery import Delivery
from gateway.messaging.incoming_files import IncomingFiles
from gateway.messaging.reply_context import ReplyContext
from gateway.runtime.config import Config
from gateway.security.crypto import Keyring
from gateway.security.tokens import token_hash
from gateway.storage.intake import InboundEventQueue
from gateway.storage.store import Doc, Store
from inbound.email_reply import EmailReplyHandler
from inbound.processor import InboundProcessor
from tests.inbound.test_batching import Counted, audit_entries, claim_all
from tests.inbound.test_email_replies import (
    OTHER_EMAIL,
    deliver,
    dsn_for,
    email_thread,
    reply_address,
    reply_token_of,
    simple_reply,
    with_attachments,
)
from tests.support.harness import CLIENT_EMAIL, ORG_NUMBER, Gateway

SECURE_CLIENT = CLIENT_EMAIL
STANDARD_CLIENT = "sam@client.test"
FLIPPING_CLIENT = "casey@client.test"


async def inbound_by_provider_id(gw: Gateway) -> dict[str, Doc]:
    return {d["provider_id"]: d async for d in gw.store.messages.find({"direction": "inbound"})}


async def body_of(gw: Gateway, message: Doc) -> str:
    return await gw.services.conversations.open_body(message)


async def test_a_batch_of_email_replies_lands_like_one_at_a_time(gw: Gateway) -> None:
    port = await gw.start_smtp()
    secure_sent, secure_notice = await email_thread(gw, to=SECURE_CLIENT)
    standard_sent, standard_notice = await email_thread(gw, to=STANDARD_CLIENT, secure=False)
    flip_sent, flip_notice = await email_thread(gw, to=FLIPPING_CLIENT, secure=False)
    to_secure = reply_address(reply_token_of(secure_notice))
    to_standard = reply_address(reply_token_of(standard_notice))
    to_flip = reply_address(reply_token_of(flip_notice))
    mails_before = len(gw.mail.messages)
    plan = [  # (rcpt, mail, Message-ID)
        (to_secure, simple_reply(to_secure, "Tuesday works.", message_id="<s1@client.test>")),
        (to_standard, simple_reply(to_standard, "See you then.", frm=STANDARD_CLIENT,
                                   message_id="<p1@client.test>")),
        (to_flip, simple_reply(to_flip, "Quick question about parking.", frm=FLIPPING_CLIENT,
                               message_id="<f1@client.test>")),
        (to_flip, simple_reply(to_flip, "My SSN is 123-45-6789 for the form.", frm=FLIPPING_CLIENT,
                               message_id="<f2@client.test>")),
        (to_secure, simple_reply(to_secure, "I am out of the office.", message_id="<s2@client.test>",
                                 headers={"Auto-Submitted": "auto-replied"})),
        (to_standard, simple_reply(to_standard, "Sent from a shared mailbox.", frm=OTHER_EMAIL,
                                   message_id="<p2@client.test>")),
        (to_flip, simple_reply(to_flip, "Thanks again.", frm=FLIPPING_CLIENT, message_id="<f3@client.test>")),
        (to_secure, with_attachments(to_secure, [("form.pdf", "application/pdf", b"%PDF-1.4 form")])),
    ]
    for rcpt, mail in plan:
        assert (await deliver(port, rcpt, mail)).startswith("2.0.0")
    standard_mid = str(standard_notice["Message-ID"])
    assert (await deliver(port, to_standard, dsn_for(standard_mid, to_standard))).startswith("2.0.0")
    events = await claim_all(gw)
    assert len(events) == len(plan) + 1
    await gw.runtime.processor.process_batch(events)
    await gw.drain()

    stored = await inbound_by_provider_id(gw)
    assert len(stored) == len(plan)  # the bounce is no message
    expect = {  # provider id -> (thread, body, secure, flags)
        "s1@client.test": (secure_sent, "Tuesday works.", True, []),
        "p1@client.test": (standard_sent, "See you then.", False, []),
        "f1@client.test": (flip_sent, "Quick question about parking.", False, []),
        "f2@client.test": (flip_sent, "My SSN is 123-45-6789 for the form.", True, ["classified_sensitive"]),
        "s2@client.test": (secure_sent, "I am out of the office.", True, ["auto_reply"]),
        "p2@client.test": (standard_sent, "Sent from a shared mailbox.", False, ["sender_mismatch"]),
        "f3@client.test": (flip_sent, "Thanks again.", True, []),
    }
    for mid, (sent, body, secure, flags) in expect.items():
        message = stored[mid]
        assert message["thread_id"] == sent["thread_id"], mid
        assert await body_of(gw, message) == body, mid
        assert message["secure"] is secure and message["flags"] == flags, mid
        assert message["channel"] == "email"
    with_file = next(m for mid, m in stored.items() if mid not in expect)
    assert with_file["thread_id"] == secure_sent["thread_id"]
    assert await gw.store.attachments.count_documents({"message_id": with_file["_id"]}) == 1

    # A link-only answer for each secure reply that is not an auto-reply, threaded under it.
    answered = {"s1@client.test", "f2@client.test", "f3@client.test", with_file["provider_id"]}
    acks = [m["message"] for m in gw.mail.messages[mails_before:]]
    assert sorted(str(a["In-Reply-To"]) for a in acks) == sorted(f"<{mid}>" for mid in answered)
    ack_jobs = [j async for j in gw.store.outbox.find({"template": "inbound_ack"})]
    assert sorted(j["_id"] for j in ack_jobs) == sorted(f"{stored[mid]['_id']}:ack" for mid in answered)

    # Threads: unread counts and the flip to secure.
    for sent, unread, secure in ((secure_sent, 3, True), (standard_sent, 2, False), (flip_sent, 3, True)):
        thread = await gw.store.threads.find_one({"_id": sent["thread_id"]})
        assert (thread["unread_staff"], thread["secure"], thread["preview"]) == (unread, secure, "New reply")

    # The bounce failed the standard notice, with the DSN status.
    notice = await gw.store.messages.find_one({"_id": standard_sent["id"]})
    assert notice["status"] == "failed" and notice["error_code"] == "5.1.1"

    # One "received" entry per reply, one "link.issued" per answer, and the chain holds.
    received = await audit_entries(gw, "message.received")
    assert sorted(e["message_id"] for e in received) == sorted(m["_id"] for m in stored.values())
    mismatch = next(e for e in received if e["message_id"] == stored["p2@client.test"]["_id"])
    assert mismatch["detail"]["sender_mismatch"] is True
    issued = [e for e in await audit_entries(gw, "link.issued") if e["detail"]["template"] == "inbound_ack"]
    assert sorted(e["message_id"] for e in issued) == sorted(stored[mid]["_id"] for mid in answered)
    assert await gw.services.audit.verify(gw.org.id) is None
    assert await gw.store.inbound_events.count_documents({"state": "done", "raw": {"$exists": True}}) == 0


async def test_rerunning_a_batch_cut_short_sends_each_answer_once(gw: Gateway) -> None:
    port = await gw.start_smtp()
    _, notice = await email_thread(gw)
    rcpt = reply_address(reply_token_of(notice))
    for i in range(6):
        await deliver(port, rcpt, simple_reply(rcpt, f"Reply {i}", message_id=f"<r{i}@client.test>"))
    events = sorted(await claim_all(gw), key=lambda e: e["_id"])
    handler: EmailReplyHandler = gw.runtime.processor._handlers["email"]  # type: ignore[assignment]
    done, rest = await handler.batch(events[:3])  # a worker finished three, then died
    assert len(done) == 3 and rest == []
    gw.clock.advance(seconds=120)  # every lease has run out: all six run again
    await gw.drain()

    stored = await inbound_by_provider_id(gw)
    assert sorted(stored) == sorted(f"r{i}@client.test" for i in range(6))
    acks = [j async for j in gw.store.outbox.find({"template": "inbound_ack"})]
    assert sorted(j["_id"] for j in acks) == sorted(f"{e['_id']}:ack" for e in events)
    assert len(gw.mail_to()) == 1 + 6
    received = await audit_entries(gw, "message.received")
    assert sorted(e["message_id"] for e in received) == sorted(e["_id"] for e in events)
    assert await gw.services.audit.verify(gw.org.id) is None


# -- round trips --------------------------------------------------------------------------------


class CountedEmail(Counted):
    """Counted services with the email handler, and reply addresses of a few conversations."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        s = self.services
        delivery = Delivery(s.store, s.contacts, s.audit, s.clock, keep_done_days=s.config.outbox.keep_done_days)
        handler = EmailReplyHandler(self.events, s.orgs, s.contacts, s.conversations, s.reply_tokens, s.audit,
                                    delivery,
                                    IncomingFiles(s.store, s.vault),
                                    ReplyContext(s.store))
        self.processor = InboundProcessor(InboundEventQueue(s.store), s.clock, {"email": handler}, owner="test")  # type: ignore[dict-item]
        self.scopes: list[tuple[str, str]] = []  # (token hash, the contact's address)
        self.sent = 0

    async def conversations(self, org_id: str, n: int) -> None:
        s = self.services
        for i in range(n):
            address = f"client{i}@client.test"
            contact, _ = await s.contacts.find_or_create(org_id, email=address)
            thread = await s.conversations.thread_for(org_id, contact.id, "email")
            await s.store.threads.update_one({"_id": thread["_id"]}, {"$set": {"secure": True}})
            doc, token = s.reply_tokens.new(org_id=org_id, thread_id=thread["_id"], contact_id=contact.id)
            await s.reply_tokens.insert(doc)
            self.scopes.append((token_hash(token), address))

    async def accept_mail(self, org_id: str, i: int) -> None:
        digest, address = self.scopes[i % len(self.scopes)]
        self.sent += 1
        raw = simple_reply("reply@x.test", f"Reply number {i}: see you Tuesday.", frm=address,
                           message_id=f"<m{self.sent}@client.test>").as_bytes()
        await self.events.store_event(provider="smtp", provider_id=f"m{self.sent}|{digest}", org_id=org_id,
                                 kind="email", raw=raw, payload={"mail_from": address, "token_hash": digest})


async def email_round_trips(counted: CountedEmail, org_id: str, n: int) -> list[str]:
    for i in range(n):
        await counted.accept_mail(org_id, i)
    handled, commands = await counted.process()
    assert handled == n
    return commands


async def test_a_batch_of_email_replies_costs_a_constant_number_of_round_trips(
        mongo_uri: str, store: Store, config: Config, keyring: Keyring, clock: FrozenClock) -> None:
    counted = CountedEmail(mongo_uri, store, config, keyring, clock)
    try:
        s = counted.services
        org = await s.orgs.create("Batch Clinic", ORG_NUMBER, email_from="care@clinic.test",
                                  reply_domain="reply.clinic.test")
        await counted.conversations(org.id, 6)
        ten = await email_round_trips(counted, org.id, 10)
        fifty = await email_round_trips(counted, org.id, 50)
        assert len(fifty) <= 22, Counter(fifty)
        assert len(fifty) <= len(ten) + 1, (Counter(ten), Counter(fifty))
        assert await s.store.messages.count_documents({"channel": "email", "direction": "inbound"}) == 60
        assert await s.store.outbox.count_documents({"template": "inbound_ack"}) == 60
        assert await s.audit.verify(org.id) is None
    finally:
        await counted.client.close()
