"""Contacts: sealed name/phone/email, blind indexes for lookup, consent per channel, PIN."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from gateway.errors import IntegrityError, LegalHold, NotFound
from gateway.ids import new_id
from gateway.messaging.phone import mask_email, mask_phone, normalize_e164
from gateway.ports import Clock
from gateway.security.crypto import Sealer
from gateway.security.pins import hash_secret, validate_pin
from gateway.security.vault import Vault
from gateway.storage.recent import FLOOR_MARGIN, Recent, oid_at, oid_time
from gateway.storage.store import Doc, Store, insert_new
from gateway.tenancy.orgs import validate_email

OPTED_IN = "opted_in"
NO_VALUE = "none:"  # placeholder for an absent blind index (keeps the unique index plain)
OPTED_OUT = "opted_out"


def consent_order(at: datetime, tiebreak: str) -> str:
    """A sortable mark for a consent change: its time (UTC, milliseconds, as BSON keeps it) then a
    tiebreak (an ObjectId hex: the arrival order of messages stored within one millisecond)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z|{tiebreak}"


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """What record_consent did: whether the state changed, and the state before it."""

    changed: bool
    previous: str | None


@dataclass(frozen=True, slots=True)
class Contact:
    id: str
    org_id: str
    dek_id: str
    phone_hint: str | None
    email_hint: str | None
    has_phone: bool
    has_email: bool
    has_pin: bool
    pin_hash: str | None
    consent: dict[str, Any]
    last_channel: str | None
    created_at: datetime

    def opted_out(self, channel: str) -> bool:
        return bool(self.consent.get(channel, {}).get("state") == OPTED_OUT)


def _contact(doc: Doc) -> Contact:
    return Contact(
        id=doc["_id"], org_id=doc["org_id"], dek_id=doc["dek_id"],
        phone_hint=doc.get("phone_hint"), email_hint=doc.get("email_hint"),
        has_phone=bool(doc.get("phone")), has_email=bool(doc.get("email")),
        has_pin=bool(doc.get("pin_hash")), pin_hash=doc.get("pin_hash"),
        consent=doc.get("consent", {}), last_channel=doc.get("last_channel"),
        created_at=doc["created_at"],
    )


LABEL_FIELDS = {"name": 1, "phone_hint": 1, "email_hint": 1, "erased_at": 1}


class Contacts:
    def __init__(self, store: Store, vault: Vault, sealer: Sealer, clock: Clock) -> None:
        self._store = store
        self._vault = vault
        self._sealer = sealer
        self._clock = clock
        # Newest-first pages of the contact list, one index window at a time (gateway/storage/recent.py).
        self._recent = Recent()

    def phone_index(self, org_id: str, e164: str) -> str:
        return self._sealer.blind_index(org_id, "phone", e164)

    def email_index(self, org_id: str, email: str) -> str:
        return self._sealer.blind_index(org_id, "email", email.lower())

    async def get(self, org_id: str, contact_id: str) -> Contact:
        doc = await self._store.contacts.find_one({"_id": contact_id, "org_id": org_id})
        if doc is None or doc.get("erased_at"):
            raise NotFound("contact")
        return _contact(doc)

    async def get_many(self, org_id: str, contact_ids: list[str]) -> dict[str, Contact]:
        """get() for several contacts with one read; unknown or erased ones are absent."""
        docs = self._store.contacts.find({"_id": {"$in": list(dict.fromkeys(contact_ids))}, "org_id": org_id})
        return {d["_id"]: _contact(d) async for d in docs if not d.get("erased_at")}

    async def get_many_revealed(self, org_id: str, contact_ids: list[str], fields: tuple[str, ...]
                                ) -> dict[str, tuple[Contact, dict[str, str | None]]]:
        """get_many() plus the opened `fields` of each contact (e.g. the address on file), one read."""
        docs = self._store.contacts.find({"_id": {"$in": list(dict.fromkeys(contact_ids))}, "org_id": org_id})
        out: dict[str, tuple[Contact, dict[str, str | None]]] = {}
        async for d in docs:
            if not d.get("erased_at"):
                out[d["_id"]] = (_contact(d), {
                    f: await self._vault.open(org_id, "contacts", d["_id"], f, d[f]) if d.get(f) else None
                    for f in fields})
        return out

    async def get_revealed(self, org_id: str, contact_id: str, fields: tuple[str, ...]
                           ) -> tuple[Contact, dict[str, str | None]]:
        """get() plus the opened `fields`, with one read; NotFound as get() would raise it."""
        found = (await self.get_many_revealed(org_id, [contact_id], fields)).get(contact_id)
        if found is None:
            raise NotFound("contact")
        return found

    async def record(self, org_id: str, contact_id: str) -> Doc | None:
        """The contact as stored (consent log, legal hold, hints; sealed fields stay sealed), or None."""
        return await self._store.contacts.find_one({"_id": contact_id, "org_id": org_id})

    async def row_labels(self, org_id: str, contact_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Names (opened) and masked address hints of the given contacts, for the rows of one page."""
        out: dict[str, dict[str, Any]] = {}
        if not contact_ids:
            return out
        # Only what a row shows (a contact carries sealed addresses, blind indexes, consent history...).
        async for doc in self._store.contacts.find({"org_id": org_id, "_id": {"$in": contact_ids}},
                                                   projection=LABEL_FIELDS):
            name = None
            if doc.get("name") and not doc.get("erased_at"):
                try:
                    name = await self._vault.open(org_id, "contacts", doc["_id"], "name", doc["name"])
                except IntegrityError:
                    name = None
            out[doc["_id"]] = {"name": name, "phone_hint": doc.get("phone_hint"), "email_hint": doc.get("email_hint"),
                               "erased": bool(doc.get("erased_at"))}
        return out

    async def newest(self, org_id: str, before: str | None, limit: int) -> list[Doc]:
        """The org's newest `limit` contacts (not erased) older than the contact id `before`.

        Contact ids are ObjectId hex, so they sort by creation: the read is one window of
        (org_id, _id) at a time (gateway/storage/recent.py), and a page costs the same with 50 contacts or
        50,000 (a plain sorted, limited query reads them all on SecantusDB).
        """
        now = datetime.now(UTC)  # ids carry the real time, not the service clock
        created = oid_time(org_id)
        upper_at = oid_time(before) if before else None
        return await self._recent.newest(
            self._store.contacts, {"org_id": org_id}, "_id", limit=limit, order=[("_id", -1)],
            key=("contacts", org_id), now=now, floor=created - FLOOR_MARGIN if created else None, bound=oid_at,
            at_of=lambda d: oid_time(d["_id"]) or now, upper=("$lt", before) if before else None,
            upper_at=upper_at + timedelta(seconds=1) if upper_at else None, keep=lambda d: not d.get("erased_at"))

    async def by_phone(self, org_id: str, e164: str) -> Contact | None:
        doc = await self._store.contacts.find_one({"org_id": org_id, "phone_bidx": self.phone_index(org_id, e164)})
        return _contact(doc) if doc else None

    async def by_email(self, org_id: str, email: str) -> Contact | None:
        doc = await self._store.contacts.find_one({"org_id": org_id, "email_bidx": self.email_index(org_id, email)})
        return _contact(doc) if doc else None

    async def find_or_create(
        self, org_id: str, *, phone: str | None = None, email: str | None = None, name: str | None = None
    ) -> tuple[Contact, bool]:
        """Find the contact by phone (else email); create it if new. Returns (contact, created)."""
        if phone:
            phone = normalize_e164(phone, field="to.phone")
        if email:
            email = validate_email(email, "to.email")
        existing = (await self.by_phone(org_id, phone) if phone else None) or (
            await self.by_email(org_id, email) if email else None
        )
        if existing:
            if (email and not existing.has_email) or (phone and not existing.has_phone) or name:
                await self._fill_missing(existing, phone=phone, email=email, name=name)
                return await self.get(org_id, existing.id), False
            return existing, False
        cid = new_id()
        dek_id = await self._vault.create_key(f"contact:{cid}", org_id)
        doc: Doc = {
            "_id": cid, "org_id": org_id, "dek_id": dek_id, "consent": {},
            "consent_log": [], "created_at": self._clock.now(), "last_channel": None,
        }
        await self._set_fields(doc, phone=phone, email=email, name=name)
        doc.setdefault("phone_bidx", NO_VALUE + cid)  # see gateway/storage/store.py: unique, never partial
        doc.setdefault("email_bidx", NO_VALUE + cid)
        try:
            await self._store.contacts.insert_one(doc)
        except DuplicateKeyError:
            # Created concurrently (same phone/email): use the winner, drop our unused key.
            await self._vault.destroy(dek_id)
            again = (await self.by_phone(org_id, phone) if phone else None) or (
                await self.by_email(org_id, email) if email else None
            )
            if again is None:
                raise
            return again, False
        return _contact(doc), True

    async def by_phones(self, org_id: str, phones: list[str]) -> dict[str, Contact]:
        """Contacts for several normalized (E.164) numbers with one query; unknown ones are absent."""
        bidx = {self.phone_index(org_id, p): p for p in phones}
        if not bidx:
            return {}
        docs = self._store.contacts.find({"org_id": org_id, "phone_bidx": {"$in": list(bidx)}})
        return {bidx[d["phone_bidx"]]: _contact(d) async for d in docs}

    async def find_or_create_phones(self, org_id: str, phones: list[str]) -> dict[str, tuple[Contact, bool]]:
        """find_or_create for several normalized numbers: one lookup, one insert for the new ones.

        Returns {phone: (contact, created)}. Each new contact still gets its own data key (one
        write each: keys are created one by one by the vault).
        """
        found = await self.by_phones(org_id, phones)
        out: dict[str, tuple[Contact, bool]] = {p: (c, False) for p, c in found.items()}
        missing = [p for p in dict.fromkeys(phones) if p not in found]
        if not missing:
            return out
        cids = [new_id() for _ in missing]
        dek_ids = await asyncio.gather(*(self._vault.create_key(f"contact:{cid}", org_id) for cid in cids))
        docs: list[Doc] = []
        for phone, cid, dek_id in zip(missing, cids, dek_ids, strict=True):
            doc: Doc = {
                "_id": cid, "org_id": org_id, "dek_id": dek_id, "consent": {},
                "consent_log": [], "created_at": self._clock.now(), "last_channel": None,
            }
            await self._set_fields(doc, phone=phone, email=None, name=None)
            doc["email_bidx"] = NO_VALUE + cid  # see gateway/storage/store.py: unique, never partial
            docs.append(doc)
        lost: set[str] = set()
        for doc, new in zip(docs, await insert_new(self._store.contacts, docs), strict=True):
            if not new:  # created concurrently (same phone): the stored contact wins, our key goes
                lost.add(doc["_id"])
                await self._vault.destroy(doc["dek_id"])
        for doc, phone in zip(docs, missing, strict=True):
            if doc["_id"] not in lost:
                out[phone] = (_contact(doc), True)
        if lost:
            winners = await self.by_phones(org_id, [p for d, p in zip(docs, missing, strict=True) if d["_id"] in lost])
            out.update({p: (c, False) for p, c in winners.items()})
        return out

    async def touch_channels(self, contacts: list[Contact], channel: str) -> None:
        """touch_channel for several contacts of one org with one write."""
        stale = list(dict.fromkeys(c.id for c in contacts if c.last_channel != channel))
        if stale:
            await self._store.contacts.update_many(
                {"_id": {"$in": stale}, "org_id": contacts[0].org_id}, {"$set": {"last_channel": channel}}
            )

    async def _set_fields(self, doc: Doc, *, phone: str | None, email: str | None, name: str | None) -> None:
        org_id, cid, dek = doc["org_id"], doc["_id"], doc["dek_id"]
        if phone:
            doc["phone"] = await self._vault.seal(dek, org_id, "contacts", cid, "phone", phone)
            doc["phone_bidx"] = self.phone_index(org_id, phone)
            doc["phone_hint"] = mask_phone(phone)
        if email:
            doc["email"] = await self._vault.seal(dek, org_id, "contacts", cid, "email", email)
            doc["email_bidx"] = self.email_index(org_id, email)
            doc["email_hint"] = mask_email(email)
        if name:
            doc["name"] = await self._vault.seal(dek, org_id, "contacts", cid, "name", name.strip()[:120])

    async def _fill_missing(self, c: Contact, *, phone: str | None, email: str | None, name: str | None) -> None:
        """Add a phone/email/name the contact did not have yet (never overwrite an address)."""
        doc = await self._store.contacts.find_one({"_id": c.id, "org_id": c.org_id})
        assert doc is not None
        update: Doc = {"_id": c.id, "org_id": c.org_id, "dek_id": c.dek_id}
        await self._set_fields(
            update,
            phone=phone if phone and not doc.get("phone") else None,
            email=email if email and not doc.get("email") else None,
            name=name if name and not doc.get("name") else None,
        )
        changes = {k: v for k, v in update.items() if k not in ("_id", "org_id", "dek_id")}
        if changes:
            try:
                await self._store.contacts.update_one({"_id": c.id, "org_id": c.org_id}, {"$set": changes})
            except DuplicateKeyError:
                pass  # that address belongs to another contact already; keep them apart

    async def reveal(self, contact: Contact | str, org_id: str | None = None) -> dict[str, str | None]:
        """Open the contact's name, phone and email (for rendering or sending, never for logging)."""
        cid = contact.id if isinstance(contact, Contact) else contact
        oid = contact.org_id if isinstance(contact, Contact) else org_id
        doc = await self._store.contacts.find_one({"_id": cid, "org_id": oid})
        if doc is None:
            raise NotFound("contact")
        out: dict[str, str | None] = {}
        for f in ("name", "phone", "email"):
            out[f] = await self._vault.open(doc["org_id"], "contacts", cid, f, doc[f]) if doc.get(f) else None
        return out

    async def set_consent(self, org_id: str, contact_id: str, channel: str, state: str, source: str, *,
                          at: datetime | None = None, event_id: str | None = None) -> bool:
        """Record consent; returns True when the state changed. See record_consent."""
        change = await self.record_consent(org_id, contact_id, channel, state, source, at=at, event_id=event_id)
        return change.changed

    async def record_consent(self, org_id: str, contact_id: str, channel: str, state: str, source: str, *,
                             at: datetime | None = None, event_id: str | None = None) -> ConsentChange:
        """Record that the contact's consent on `channel` is `state`, as expressed at `at`.

        Monotonic: a change applies only if it is newer than the last one recorded for the channel
        (by `at`, then by `event_id`, the arrival order of the message that carried it), so an
        opt-out is never undone by an earlier message processed later (CTIA and TCPA: an opt-out
        is honoured from the moment it is sent). A message saying what is already recorded moves
        the mark forward without a new history entry. Changes made here and now (staff, provider
        reports) pass neither and count from the current time.
        """
        at = at or self._clock.now()
        key = consent_order(at, event_id or new_id())
        newer = {"$or": [{f"consent.{channel}.order": {"$lt": key}}, {f"consent.{channel}.order": {"$exists": False}}]}
        where: Doc = {"_id": contact_id, "org_id": org_id, "erased_at": None}
        mark = {"state": state, "at": at, "source": source, "order": key}
        entry = {"channel": channel, "state": state, "at": at, "source": source}
        for _ in range(4):  # each pass either applies or sees the change that beat it
            before = await self._store.contacts.find_one_and_update(
                {**where, f"consent.{channel}.state": {"$ne": state}, **newer},
                {"$set": {f"consent.{channel}": mark}, "$push": {"consent_log": entry}},
                projection={f"consent.{channel}": 1}, return_document=ReturnDocument.BEFORE)
            if before is not None:
                return ConsentChange(True, (before.get("consent", {}).get(channel) or {}).get("state"))
            res = await self._store.contacts.update_one(
                {**where, f"consent.{channel}.state": state, **newer}, {"$set": {f"consent.{channel}.order": key}})
            if res.matched_count:
                return ConsentChange(False, state)
            doc = await self._store.contacts.find_one(where, projection={f"consent.{channel}": 1})
            now = (doc or {}).get("consent", {}).get(channel) or {}
            if doc is None or str(now.get("order", "")) >= key:  # unknown or erased; or a newer change won
                return ConsentChange(False, now.get("state"))
        raise RuntimeError("consent kept changing under us")  # pragma: no cover - needs 4 races in a row

    async def set_pin(self, org_id: str, contact_id: str, pin: str | None) -> None:
        if pin is None:
            update: Doc = {"$unset": {"pin_hash": ""}}
        else:
            update = {"$set": {"pin_hash": hash_secret(validate_pin(pin))}}
        res = await self._store.contacts.update_one({"_id": contact_id, "org_id": org_id}, update)
        if res.matched_count == 0:
            raise NotFound("contact")

    async def erase(self, org_id: str, contact_id: str) -> bool:
        """Right to erasure by crypto-shredding (GDPR Art. 17; docs/security-model.md, 'Erasure and legal hold');
        True if this call erased the contact.

        Destroys the contact's data key (nothing it sealed, fields or messages, opens again), drops
        what identifies the person outside the seal (sealed fields, hints, blind indexes, PIN hash),
        deletes its reply tokens, client sessions and PIN guards, and revokes its links. Each step is repeatable,
        and erased_at is set last, conditionally: a call cut short is completed by the next one, and
        once erased a call returns False and changes nothing.
        """
        doc = await self._store.contacts.find_one({"_id": contact_id, "org_id": org_id},
                                                  projection={"dek_id": 1, "erased_at": 1, "legal_hold": 1})
        if doc is None or doc.get("erased_at"):
            return False
        if doc.get("legal_hold"):
            raise LegalHold(contact_id)
        now = self._clock.now()
        await self._vault.destroy(doc["dek_id"])
        await self._store.reply_tokens.delete_many({"org_id": org_id, "contact_id": contact_id})
        await self._store.sessions.delete_many({"org_id": org_id, "kind": "client", "contact_id": contact_id})
        await self._store.links.update_many({"org_id": org_id, "contact_id": contact_id, "revoked_at": None},
                                            {"$set": {"revoked_at": now}})
        # The per-thread PIN guards (gateway/security/links.py) keyed by the contact: with every link
        # revoked they guard nothing, and they would outlive the person's record.
        await self._store.link_guards.delete_many({"org_id": org_id, "contact_id": contact_id})
        res = await self._store.contacts.update_one(
            {"_id": contact_id, "org_id": org_id, "erased_at": None},
            {"$set": {"erased_at": now, "phone_bidx": NO_VALUE + contact_id, "email_bidx": NO_VALUE + contact_id},
             "$unset": {"name": "", "phone": "", "email": "", "phone_hint": "", "email_hint": "", "pin_hash": ""}},
        )
        return res.modified_count == 1

    async def set_legal_hold(self, org_id: str, contact_id: str, held: bool, by: str) -> bool:
        """Place (or release) a legal hold: while held, erase() refuses (GDPR Art. 17(3);
        docs/security-model.md, 'Erasure and legal hold'). True if this call changed it; an erased
        contact has nothing left to hold."""
        if held:
            res = await self._store.contacts.update_one(
                {"_id": contact_id, "org_id": org_id, "erased_at": None, "legal_hold": None},
                {"$set": {"legal_hold": {"at": self._clock.now(), "by": by}}})
        else:
            res = await self._store.contacts.update_one(
                {"_id": contact_id, "org_id": org_id, "legal_hold": {"$ne": None}}, {"$set": {"legal_hold": None}})
        return res.modified_count == 1

    async def touch_channel(self, contact: Contact, channel: str) -> None:
        """Remember the channel the contact last used (where new links go by default)."""
        if contact.last_channel != channel:
            await self._store.contacts.update_one(
                {"_id": contact.id, "org_id": contact.org_id}, {"$set": {"last_channel": channel}}
            )
