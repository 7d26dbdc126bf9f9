"""Organizations: their numbers, reply domain and policies."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pymongo.errors import DuplicateKeyError

from gateway.errors import NotFound, ValidationError
from gateway.ids import new_id
from gateway.phone import normalize_e164
from gateway.ports import Clock
from gateway.store import Doc, Store

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$")
LINK_TTL_CHOICES = (3600, 86400, 7 * 86400, 10 * 86400, 180 * 86400, 365 * 86400)
# Which threads an agent may open (admins open every thread): "all" of the org's, or only those
# "assigned" to them or to nobody (HIPAA minimum necessary; others need break-glass, gateway/access.py).
AGENT_SCOPES = ("all", "assigned")


@dataclass(frozen=True, slots=True)
class OrgPolicy:
    secure_default: bool = True
    secure_forced: bool = False  # "always secure": every message secure, whatever is asked (gateway/rules/secure.py)
    pin_required: bool = False  # every link needs the contact's PIN (else only per-message PINs)
    link_ttl_seconds: int = 86400  # Apptoto's default: 24 h
    lock_threshold: int = 5  # wrong PINs before a link locks (NIST ceiling is 100)
    provider_redaction: bool = False  # remove inbound bodies at Twilio once stored
    sensitive_terms: tuple[str, ...] = ()
    client_idle_seconds: int = 900
    staff_idle_seconds: int = 900
    staff_absolute_seconds: int = 12 * 3600
    require_totp: bool = False
    agent_scope: str = "all"
    break_glass_minutes: int = 30  # how long an emergency (break-glass) grant opens a thread
    retention_days: int = 0  # message content older than this is removed (gateway/retention.py); 0 keeps it

    def validate(self) -> OrgPolicy:
        if not 60 <= self.link_ttl_seconds <= 366 * 86400:
            raise ValidationError("link_ttl_seconds", "must be between 60 s and 366 days")
        if not 1 <= self.lock_threshold <= 100:
            raise ValidationError("lock_threshold", "must be between 1 and 100")
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
        return self


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    name: str
    sms_numbers: tuple[str, ...]
    messaging_service_sids: tuple[str, ...]
    email_from: str | None
    reply_domain: str | None
    policy: OrgPolicy = field(default_factory=OrgPolicy)

    @property
    def sms_sender(self) -> str:
        """What we send from: the first number, else the first Messaging Service."""
        return (self.sms_numbers or self.messaging_service_sids or ("",))[0]


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
    ) -> Org:
        doc: Doc = {
            "_id": new_id(),
            "name": validate_name(name),
            "sms_numbers": [normalize_e164(sms_number, field="sms_number")] if sms_number else [],
            "messaging_service_sids": [],
            "email_from": validate_email(email_from, "email_from") if email_from else None,
            "reply_domain": validate_domain(reply_domain) if reply_domain else None,
            "policy": asdict((policy or OrgPolicy()).validate()),
            "created_at": self._clock.now(),
        }
        if messaging_service_sid:
            if not re.fullmatch(r"MG[0-9a-f]{32}", messaging_service_sid):
                raise ValidationError("messaging_service_sid", "must look like MG followed by 32 hex digits")
            doc["messaging_service_sids"] = [messaging_service_sid]
        try:
            await self._store.orgs.insert_one(doc)
        except DuplicateKeyError:
            raise ValidationError("sms_number", "is already used by another organization") from None
        return _org_from_doc(doc)

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

    async def update_policy(self, org_id: str, **changes: Any) -> Org:
        org = await self.get(org_id)
        policy = replace(org.policy, **changes).validate()
        await self._store.orgs.update_one({"_id": org_id}, {"$set": {"policy": asdict(policy)}})
        self._cache.pop(org_id, None)
        self._by_recipient.clear()
        return replace(org, policy=policy)

    async def update(self, org_id: str, **changes: Any) -> None:
        allowed = {"name", "email_from", "reply_domain", "sms_numbers", "messaging_service_sids"}
        if set(changes) - allowed:
            raise ValueError(f"cannot change {sorted(set(changes) - allowed)}")
        await self._store.orgs.update_one({"_id": org_id}, {"$set": changes})
        self._cache.pop(org_id, None)
        self._by_recipient.clear()
