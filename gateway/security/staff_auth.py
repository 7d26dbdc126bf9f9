"""Staff sign-in rules: login throttling, single-use TOTP, and the first-run setup token.

Everything here lives in MongoDB (no in-memory state needed for correctness: docs/architecture.md,
'Processes and roles'), so
the limits hold across any number of web processes.

Throttling (docs/security-model.md, 'Staff authentication'; ASVS 5.0 6.1.1/6.3.1; NIST 800-63B
§5.2.2) counts *failures* in fixed
windows under three keys, and refuses an attempt (even with the right password) while any key is
at its limit:

    pair     account + client IP     5 per 15 min   stops online guessing from one place
    account  account, any IP        50 per hour     bounds distributed guessing (ASVS: <= 100/h)
    ip       client IP, any account 100 per 15 min  bounds password spraying from one place

The low limit sits on the (account, IP) pair, so an attacker elsewhere has to spend 50 failures an
hour to lock the real user out, and is itself stopped at 5; the real user's own success clears
its pair counter. Counter ids are SHA-256 of the key, so no email or IP is stored in the clear.

TOTP (RFC 6238; NIST 800-63B §5.1.4.2): a code is accepted within one 30 s step either side, and only if
its step is newer than the last step used by that account (a conditional update), so a code can
never be replayed — not even concurrently.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyotp
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from gateway.ports import Clock
from gateway.security.tokens import looks_like_token, new_token, token_hash
from gateway.security.vault import Vault
from gateway.storage.store import Doc, Store


@dataclass(frozen=True, slots=True)
class ThrottleRule:
    scope: str  # pair | account | ip
    limit: int  # failures allowed in one window
    window_seconds: int


DEFAULT_RULES = (
    ThrottleRule("pair", 5, 900),
    ThrottleRule("account", 50, 3600),
    ThrottleRule("ip", 100, 900),
)


class LoginThrottle:
    """Failure counters per (account, IP), account and IP, in fixed windows."""

    def __init__(self, store: Store, clock: Clock, rules: tuple[ThrottleRule, ...] = DEFAULT_RULES) -> None:
        self._store = store
        self._clock = clock
        self.rules = rules

    def _ids(self, email_norm: str, ip: str) -> list[tuple[ThrottleRule, str, datetime]]:
        now = self._clock.now().timestamp()
        out = []
        for rule in self.rules:
            subject = {"pair": f"{email_norm}|{ip}", "account": email_norm, "ip": ip}[rule.scope]
            window = int(now // rule.window_seconds)
            ends = datetime.fromtimestamp((window + 1) * rule.window_seconds, tz=self._clock.now().tzinfo)
            out.append((rule, f"{rule.scope}:{window}:{token_hash(rule.scope + '|' + subject)}", ends))
        return out

    async def retry_after(self, email_norm: str, ip: str) -> int | None:
        """Seconds until a new attempt is allowed, or None when attempts are allowed now."""
        now = self._clock.now()
        wait = 0.0
        for rule, key, ends in self._ids(email_norm, ip):
            doc = await self._store.login_throttle.find_one({"_id": key}, projection={"count": 1})
            if doc is not None and int(doc["count"]) >= rule.limit:
                wait = max(wait, (ends - now).total_seconds())
        return max(1, int(wait)) if wait > 0 else None

    async def failed(self, email_norm: str, ip: str) -> None:
        for _, key, ends in self._ids(email_norm, ip):
            try:
                await self._store.login_throttle.update_one(
                    {"_id": key}, {"$inc": {"count": 1}, "$setOnInsert": {"expires_at": ends}}, upsert=True
                )
            except DuplicateKeyError:  # two first failures raced on the upsert; count once more
                await self._store.login_throttle.update_one({"_id": key}, {"$inc": {"count": 1}})

    async def succeeded(self, email_norm: str, ip: str) -> None:
        """The real user got in from here: clear the (account, IP) counter only."""
        for rule, key, _ in self._ids(email_norm, ip):
            if rule.scope == "pair":
                await self._store.login_throttle.delete_one({"_id": key})


# -- TOTP ---------------------------------------------------------------------------------------
TOTP_STEP = 30
TOTP_ISSUER = "Hushlink"


def totp_step_for(secret: str, code: str, now: datetime) -> int | None:
    """The time step whose code matches (one step of clock drift either side), or None."""
    code = code.strip().replace(" ", "")
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, interval=TOTP_STEP)
    for drift in (0, -1, 1):
        at = now + timedelta(seconds=drift * TOTP_STEP)
        if totp.verify(code, for_time=at, valid_window=0):
            return int(totp.timecode(at))
    return None


class Totp:
    """Enrol, verify (single use) and reset a staff member's authenticator app."""

    def __init__(self, store: Store, vault: Vault, clock: Clock) -> None:
        self._store = store
        self._vault = vault
        self._clock = clock

    async def _seal(self, org_id: str, staff_id: str, field: str, secret: str) -> Any:
        return await self._vault.seal(await self._vault.org_key(org_id), org_id, "staff", staff_id, field, secret)

    async def _open(self, doc: Doc, field: str) -> str | None:
        if not doc.get(field):
            return None
        return await self._vault.open(doc["org_id"], "staff", doc["_id"], field, doc[field])

    async def begin(self, org_id: str, staff_id: str) -> str:
        """A new secret, stored sealed as pending until a code from it is confirmed."""
        secret = pyotp.random_base32()
        await self._store.staff.update_one(
            {"_id": staff_id, "org_id": org_id},
            {"$set": {"totp_pending": await self._seal(org_id, staff_id, "totp_pending", secret)}},
        )
        return secret

    async def pending_secret(self, doc: Doc) -> str | None:
        return await self._open(doc, "totp_pending")

    async def confirm(self, doc: Doc, code: str) -> bool:
        """Turn the pending secret on when `code` matches it."""
        secret = await self._open(doc, "totp_pending")
        if secret is None:
            return False
        step = totp_step_for(secret, code, self._clock.now())
        if step is None:
            return False
        res = await self._store.staff.update_one(
            {"_id": doc["_id"], "org_id": doc["org_id"], "totp_pending": doc["totp_pending"]},
            {"$set": {"totp_secret": await self._seal(doc["org_id"], doc["_id"], "totp_secret", secret),
                      "totp_last_step": step, "totp_enabled_at": self._clock.now()},
             "$unset": {"totp_pending": ""}},
        )
        return res.modified_count == 1

    async def verify(self, doc: Doc, code: str) -> bool:
        """True once per code: the matched step must be newer than the last one used."""
        secret = await self._open(doc, "totp_secret")
        if secret is None:
            return False
        step = totp_step_for(secret, code, self._clock.now())
        if step is None:
            return False
        res = await self._store.staff.update_one(
            {"_id": doc["_id"], "totp_last_step": {"$not": {"$gte": step}}}, {"$set": {"totp_last_step": step}}
        )
        return res.modified_count == 1

    async def reset(self, org_id: str, staff_id: str) -> bool:
        res = await self._store.staff.update_one(
            {"_id": staff_id, "org_id": org_id},
            {"$set": {"totp_secret": None},
             "$unset": {"totp_pending": "", "totp_last_step": "", "totp_enabled_at": ""}},
        )
        return res.modified_count == 1


def totp_uri(secret: str, email: str) -> str:
    """The otpauth:// URI an authenticator app accepts (typed in or pasted)."""
    return pyotp.TOTP(secret, interval=TOTP_STEP).provisioning_uri(name=email, issuer_name=TOTP_ISSUER)


# -- first-run setup --------------------------------------------------------------------------
SETUP_TTL_SECONDS = 3600


class SetupTokens:
    """One-use, short-lived tokens that let a browser create the first organization and admin.

    Only the SHA-256 of a token is stored; a token is usable only while no staff account exists.
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def issue(self, ttl_seconds: int = SETUP_TTL_SECONDS) -> str:
        token = new_token()
        now = self._clock.now()
        await self._store.setup_tokens.insert_one({
            "_id": token_hash(token), "created_at": now, "expires_at": now + timedelta(seconds=ttl_seconds),
            "used_at": None,
        })
        return token

    async def usable(self, token: str) -> bool:
        if not looks_like_token(token):
            return False
        doc = await self._store.setup_tokens.find_one({"_id": token_hash(token)})
        return bool(doc and doc["used_at"] is None and self._clock.now() < doc["expires_at"]
                    and await self._store.staff.count_documents({}, limit=1) == 0)

    async def claim(self, token: str) -> bool:
        """Mark the token used (atomically: of two concurrent claims only one wins)."""
        if not looks_like_token(token):
            return False
        now = self._clock.now()
        doc = await self._store.setup_tokens.find_one_and_update(
            {"_id": token_hash(token), "used_at": None, "expires_at": {"$gt": now}},
            {"$set": {"used_at": now}}, return_document=ReturnDocument.AFTER,
        )
        return doc is not None

    async def release(self, token: str) -> None:
        """Give a claimed token back (the setup failed after the claim)."""
        await self._store.setup_tokens.update_one({"_id": token_hash(token)}, {"$set": {"used_at": None}})


async def first_run_url(store: Store, clock: Clock, public_url: str) -> str | None:
    """With no staff account anywhere, a one-time URL that sets up the first org and admin; else None."""
    if await store.staff.count_documents({}, limit=1):
        return None
    token = await SetupTokens(store, clock).issue()
    return f"{public_url.rstrip('/')}/staff/setup/{token}"
