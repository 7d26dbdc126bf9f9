"""Organizations: their numbers, reply domain and policies."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pymongo.errors import DuplicateKeyError

from gateway.errors import NotFound, ValidationError
from gateway.ids import new_id
from gateway.messaging.phone import normalize_e164
from gateway.ports import Clock
from gateway.storage.store import Doc, Store

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$")
LINK_TTL_CHOICES = (3600, 86400, 7 * 86400, 10 * 86400, 180 * 86400, 365 * 86400)
# Which threads an agent may open (admins open every thread): "all" of the org's, or only those
# "assigned" to them or to nobody (HIPAA minimum necessary; others need break-glass, gateway/security/access.py).
AGENT_SCOPES = ("all", "assigned")
MAX_TERMS = 200  # sensitive_terms: at most this many, each up to 80 printable characters
_MESSAGING_SERVICE_SID = re.compile(r"MG[0-9a-f]{32}")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse_setting(name: str, current: object, value: object) -> object:
    """`value` (a typed value, or text from a form, the CLI or JSON) as the type of the field's `current`."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValidationError(name, "must be true or false")
    if isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 9:
            return int(value.strip())
        raise ValidationError(name, "must be a whole number")
    if isinstance(current, tuple):
        # Text: one item per line or comma (the form's textarea, `--set sensitive_terms=a,b`).
        items = re.split(r"[\n,]", value) if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ValidationError(name, "must be a list of terms")
        return tuple(dict.fromkeys(i.strip() for i in items if i.strip()))
    if isinstance(value, str):
        return value.strip()
    raise ValidationError(name, "must be text")


@dataclass(frozen=True, slots=True)
class OrgPolicy:
    secure_default: bool = True
    secure_forced: bool = False  # "always secure": every message secure, whatever is asked (gateway/rules/secure.py)
    pin_required: bool = False  # every link needs the contact's PIN (else only per-message PINs)
    link_ttl_seconds: int = 86400  # Apptoto's default: 24 h
    lock_threshold: int = 5  # wrong PINs before a link locks (NIST ceiling is 100)
    link_renewals_per_day: int = 3  # new links a client may ask for per thread in 24 h (0: none)
    provider_redaction: bool = False  # remove inbound bodies at Twilio once stored
    sensitive_terms: tuple[str, ...] = ()
    client_idle_seconds: int = 900
    staff_idle_seconds: int = 900
    staff_absolute_seconds: int = 12 * 3600
    require_totp: bool = False
    agent_scope: str = "all"
    break_glass_minutes: int = 30  # how long an emergency (break-glass) grant opens a thread
    retention_days: int = 0  # message content older than this is removed (gateway/compliance/retention.py); 0 keeps it

    def validate(self) -> OrgPolicy:
        if not 60 <= self.link_ttl_seconds <= 366 * 86400:
            raise ValidationError("link_ttl_seconds", "must be between 60 s and 366 days")
        if not 1 <= self.lock_threshold <= 100:
            raise ValidationError("lock_threshold", "must be between 1 and 100")
        if not 0 <= self.link_renewals_per_day <= 20:
            raise ValidationError("link_renewals_per_day", "must be between 0 and 20")
        for name in ("client_idle_seconds", "staff_idle_seconds"):
            if not 60 <= getattr(self, name) <= 8 * 3600:
                raise ValidationError(name, "must be between 60 s and 8 h")
        if not 3600 <= self.staff_absolute_seconds <= 24 * 3600:
            raise ValidationError("staff_absolute_seconds", "must be between 1 h and 24 h")
        if self.agent_scope not in AGENT_SCOPES:
            raise ValidationError("agent_scope", "must be all or assigned")
        if not 5 <= self.break_glass_minutes <= 240:
            raise ValidationError("break_glass_minutes", "must be between 5 and 240 minutes")
        if self.retention_days != 0 and not 30 <= self.retention_days <= 36500:
            raise ValidationError("retention_days", "must be 0 (keep) or between 30 and 36500 days")
        terms = self.sensitive_terms
        if len(terms) > MAX_TERMS or any(not t or len(t) > 80 or any(ord(c) < 32 for c in t) for t in terms):
            raise ValidationError("sensitive_terms", f"at most {MAX_TERMS} terms of up to 80 characters, one per line")
        return self

    def with_changes(self, **raw: object) -> OrgPolicy:
        """This policy with `raw` applied, each value parsed as its field's type and the whole
        validated: the one parser behind the settings form, `hushlink admin set-policy` and any
        other edge that changes a policy. An unknown name or a bad value is a ValidationError naming it."""
        known = {f.name for f in fields(OrgPolicy)}
        parsed: dict[str, Any] = {}
        for name, value in raw.items():
            if name not in known:
                raise ValidationError(name, "is not a policy setting")
            parsed[name] = _parse_setting(name, getattr(self, name), value)
        return replace(self, **parsed).validate()

    def changed_fields(self, other: OrgPolicy) -> list[str]:
        """The names of the fields whose values differ from `other`'s."""
        return sorted(f.name for f in fields(OrgPolicy) if getattr(self, f.name) != getattr(other, f.name))


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    name: str
    sms_numbers: tuple[str, ...]
    messaging_service_sids: tuple[str, ...]
    email_from: str | None
    reply_domain: str | None
    policy: OrgPolicy = field(default_factory=OrgPolicy)
    send_from: str | None = None  # one of the numbers or Messaging Services (None: the first)
    timezone: str = "UTC"  # IANA name; every time shown to staff and clients is in it

    @property
    def sms_sender(self) -> str:
        """What we send from: the chosen number or Messaging Service, else the first number, else
        the first Messaging Service."""
        if self.send_from and self.send_from in (*self.sms_numbers, *self.messaging_service_sids):
            return self.send_from
        return (self.sms_numbers or self.messaging_service_sids or ("",))[0]

    @property
    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):  # validated when set; a system without that zone since
            return ZoneInfo("UTC")


def _org_from_doc(doc: Doc) -> Org:
    known = {f.name for f in fields(OrgPolicy)}
    pol: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v)
                           for k, v in doc.get("policy", {}).items() if k in known}
    return Org(
        id=doc["_id"],
        name=doc["name"],
        sms_numbers=tuple(doc.get("sms_numbers", [])),
        messaging_service_sids=tuple(doc.get("messaging_service_sids", [])),
        email_from=doc.get("email_from"),
        reply_domain=doc.get("reply_domain"),
        policy=OrgPolicy(**pol),
        send_from=doc.get("send_from"),
        timezone=doc.get("timezone") or "UTC",
    )


def validate_name(name: str) -> str:
    name = (name or "").strip()
    if not 1 <= len(name) <= 80 or any(ord(c) < 32 for c in name):
        raise ValidationError("name", "must be 1 to 80 printable characters")
    return name


def validate_domain(domain: str, field_name: str = "reply_domain") -> str:
    d = domain.strip().lower().rstrip(".")
    if not _DOMAIN.match(d):
        raise ValidationError(field_name, "must be a domain name such as reply.example.org")
    return d


def validate_email(addr: str, field_name: str = "email") -> str:
    a = addr.strip()
    if not _EMAIL.match(a) or ".." in a:
        raise ValidationError(field_name, "must be an email address such as name@example.org")
    local, _, domain = a.rpartition("@")
    return f"{local}@{domain.lower()}"


@functools.cache
def zone_names() -> tuple[str, ...]:
    """Every IANA time zone name this system's zoneinfo knows, sorted (read once)."""
    return tuple(sorted(available_timezones()))


@functools.cache
def _zone_set() -> frozenset[str]:
    return frozenset(zone_names())


def validate_timezone(name: str, field_name: str = "timezone") -> str:
    """An IANA time zone name this system's zoneinfo knows (e.g. America/New_York, UTC)."""
    zone = (name or "").strip()
    if zone not in _zone_set():
        raise ValidationError(field_name, "must be an IANA time zone name such as America/New_York or UTC")
    ZoneInfo(zone)  # loads now: a zone that can't be read fails here, not on a page later
    return zone


def validate_messaging_service_sid(sid: str, field_name: str = "messaging_service_sid") -> str:
    sid = (sid or "").strip()
    if not _MESSAGING_SERVICE_SID.fullmatch(sid):
        raise ValidationError(field_name, "must look like MG followed by 32 hex digits")
    return sid


@dataclass(frozen=True, slots=True)
class DetailChanges:
    """Edits to an org's details (None: leave as it is; "" clears email_from / reply_domain)."""

    name: str | None = None
    add_numbers: tuple[str, ...] = ()
    remove_numbers: tuple[str, ...] = ()
    add_messaging_services: tuple[str, ...] = ()
    remove_messaging_services: tuple[str, ...] = ()
    send_from: str | None = None
    email_from: str | None = None
    reply_domain: str | None = None
    timezone: str | None = None


MAX_SENDERS = 50  # numbers plus Messaging Services per org


class Orgs:
    CACHE_SECONDS = 5.0  # other processes see policy changes within this long

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._cache: dict[str, tuple[float, Org]] = {}
        self._by_recipient: dict[str, tuple[float, Org]] = {}

    async def create(
        self,
        name: str,
        sms_number: str | None = None,
        *,
        messaging_service_sid: str | None = None,
        email_from: str | None = None,
        reply_domain: str | None = None,
        policy: OrgPolicy | None = None,
        timezone: str = "UTC",
    ) -> Org:
        doc: Doc = {
            "_id": new_id(),
            "name": validate_name(name),
            "sms_numbers": [normalize_e164(sms_number, field="sms_number")] if sms_number else [],
            "messaging_service_sids": [validate_messaging_service_sid(messaging_service_sid)]
            if messaging_service_sid else [],
            "email_from": validate_email(email_from, "email_from") if email_from else None,
            "reply_domain": validate_domain(reply_domain) if reply_domain else None,
            "timezone": validate_timezone(timezone),
            "policy": asdict((policy or OrgPolicy()).validate()),
            "created_at": self._clock.now(),
        }
        for number in doc["sms_numbers"]:
            await self._refuse_taken("sms_numbers", number, None, "sms_number")
        for sid in doc["messaging_service_sids"]:
            await self._refuse_taken("messaging_service_sids", sid, None, "messaging_service_sid")
        try:
            await self._store.orgs.insert_one(doc)
        except DuplicateKeyError:
            raise ValidationError("sms_number", "is already used by another organization") from None
        return _org_from_doc(doc)

    async def _refuse_taken(self, key: str, value: str, org_id: str | None, field_name: str) -> None:
        """A number or Messaging Service belongs to one org: inbound routing finds the org by it.
        (The unique indexes, gateway/storage/store.py, settle a race between two orgs adding the same one.)"""
        query: Doc = {key: value} if org_id is None else {key: value, "_id": {"$ne": org_id}}
        if await self._store.orgs.find_one(query, projection={"_id": 1}) is not None:
            raise ValidationError(field_name, f"{value} is already used by another organization")

    async def get(self, org_id: str) -> Org:
        hit = self._cache.get(org_id)
        if hit is not None and time.monotonic() - hit[0] < self.CACHE_SECONDS:
            return hit[1]
        doc = await self._store.orgs.find_one({"_id": org_id})
        if doc is None:
            raise NotFound("organization")
        org = _org_from_doc(doc)
        self._cache[org_id] = (time.monotonic(), org)
        return org

    async def all(self) -> list[Org]:
        return [_org_from_doc(d) async for d in self._store.orgs.find({}).sort("_id", 1)]

    async def by_recipient(self, to: str | None, messaging_service_sid: str | None) -> Org | None:
        """The org an inbound SMS belongs to: by its number, else by its Messaging Service."""
        key = f"{to}|{messaging_service_sid}"
        hit = self._by_recipient.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.CACHE_SECONDS:
            return hit[1]
        doc = None
        if to:
            doc = await self._store.orgs.find_one({"sms_numbers": to})
        if doc is None and messaging_service_sid:
            doc = await self._store.orgs.find_one({"messaging_service_sids": messaging_service_sid})
        if doc is None:
            return None  # not cached: a number added a moment ago must route at once
        org = _org_from_doc(doc)
        self._by_recipient[key] = (time.monotonic(), org)
        return org

    async def by_reply_domain(self, domain: str) -> list[Org]:
        return [_org_from_doc(d) async for d in self._store.orgs.find({"reply_domain": domain.lower()})]

    async def stored(self, org_id: str) -> Org:
        """The org as stored now (a change starts from this, never from the cached copy)."""
        doc = await self._store.orgs.find_one({"_id": org_id})
        if doc is None:
            raise NotFound("organization")
        return _org_from_doc(doc)

    def _forget(self, org_id: str) -> None:
        self._cache.pop(org_id, None)
        self._by_recipient.clear()

    async def update_policy(self, org_id: str, **changes: Any) -> Org:
        """Apply policy changes (typed values or text: OrgPolicy.with_changes parses and validates)."""
        return (await self.change_policy(org_id, changes))[0]

    async def change_policy(self, org_id: str, changes: Mapping[str, object]) -> tuple[Org, list[str]]:
        """update_policy, also returning the names of the fields whose stored values changed."""
        org = await self.stored(org_id)
        policy = org.policy.with_changes(**changes)
        changed = policy.changed_fields(org.policy)
        if changed:
            await self._store.orgs.update_one({"_id": org_id}, {"$set": {"policy": asdict(policy)}})
            self._forget(org_id)
        return replace(org, policy=policy), changed

    async def update(self, org_id: str, **changes: Any) -> None:
        """Set stored fields as given, unvalidated (tests plant hostile or over-long names with it);
        every edge goes through update_details."""
        allowed = {"name", "email_from", "reply_domain", "sms_numbers", "messaging_service_sids"}
        if set(changes) - allowed:
            raise ValueError(f"cannot change {sorted(set(changes) - allowed)}")
        await self._store.orgs.update_one({"_id": org_id}, {"$set": changes})
        self._forget(org_id)

    async def update_details(self, org_id: str, changes: DetailChanges) -> tuple[Org, list[str]]:
        """Apply `changes` to the org's name, numbers, Messaging Services, sender, mail settings and
        time zone; returns the org and the names of the fields that changed. Errors name the edit
        (add_number, remove_number, messaging_service_sid, remove_messaging_service_sid, send_from,
        email_from, reply_domain, timezone, name)."""
        org = await self.stored(org_id)
        numbers = list(org.sms_numbers)
        sids = list(org.messaging_service_sids)
        for raw in changes.remove_numbers:
            number = normalize_e164(raw, field="remove_number")
            if number not in numbers:
                raise ValidationError("remove_number", f"{number} is not one of this organization's numbers")
            numbers.remove(number)
        for raw in changes.add_numbers:
            number = normalize_e164(raw, field="add_number")
            await self._refuse_taken("sms_numbers", number, org_id, "add_number")
            if number not in numbers:
                numbers.append(number)
        for raw in changes.remove_messaging_services:
            sid = validate_messaging_service_sid(raw, "remove_messaging_service_sid")
            if sid not in sids:
                raise ValidationError("remove_messaging_service_sid",
                                      f"{sid} is not one of this organization's Messaging Services")
            sids.remove(sid)
        for raw in changes.add_messaging_services:
            sid = validate_messaging_service_sid(raw)
            await self._refuse_taken("messaging_service_sids", sid, org_id, "messaging_service_sid")
            if sid not in sids:
                sids.append(sid)
        if len(numbers) + len(sids) > MAX_SENDERS:
            raise ValidationError("add_number", f"at most {MAX_SENDERS} numbers and Messaging Services")
        send_from = org.send_from if org.send_from in (*numbers, *sids) else None  # a removed sender is dropped
        if changes.send_from is not None:
            wanted = changes.send_from.strip()
            if wanted.startswith("+") or wanted.isdigit():
                wanted = normalize_e164(wanted, field="send_from")
            if wanted not in (*numbers, *sids):
                raise ValidationError("send_from", "must be one of this organization's numbers or Messaging Services")
            send_from = wanted
        new: Doc = {"sms_numbers": numbers, "messaging_service_sids": sids, "send_from": send_from}
        if changes.name is not None:
            new["name"] = validate_name(changes.name)
        if changes.email_from is not None:
            new["email_from"] = validate_email(changes.email_from, "email_from") if changes.email_from.strip() else None
        if changes.reply_domain is not None:
            new["reply_domain"] = validate_domain(changes.reply_domain) if changes.reply_domain.strip() else None
        if changes.timezone is not None:
            new["timezone"] = validate_timezone(changes.timezone)
        before = {"name": org.name, "sms_numbers": list(org.sms_numbers),
                  "messaging_service_sids": list(org.messaging_service_sids), "send_from": org.send_from,
                  "email_from": org.email_from, "reply_domain": org.reply_domain, "timezone": org.timezone}
        changed = sorted(k for k, v in new.items() if before[k] != v)
        if changed:
            try:
                await self._store.orgs.update_one({"_id": org_id}, {"$set": {k: new[k] for k in changed}})
            except DuplicateKeyError:
                raise ValidationError("add_number", "is already used by another organization") from None
            self._forget(org_id)
        return await self.stored(org_id), changed
