"""Staff accounts: unique normalized email, argon2id password, role (admin or agent)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pymongo.errors import DuplicateKeyError

from gateway.errors import NotFound, ValidationError
from gateway.ids import new_id
from gateway.ports import Clock
from gateway.security.pins import hash_secret, needs_rehash
from gateway.storage.store import Doc, Store
from gateway.tenancy.orgs import validate_email

ROLES = ("admin", "agent")
MIN_PASSWORD = 12  # issue 3: at least 12 characters, no composition rules
MAX_PASSWORD = 128
DIRECTORY_SECONDS = 5.0  # how long pages may show the team as it was (changes made here show at once)
_COMMON_FILE = Path(__file__).parent.parent / "data" / "common-passwords.txt"
_common: frozenset[str] | None = None


def common_passwords() -> frozenset[str]:
    global _common
    if _common is None:
        try:
            _common = frozenset(line.strip().lower() for line in _COMMON_FILE.read_text().splitlines() if line.strip())
        except FileNotFoundError:
            _common = frozenset()
    return _common


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValidationError("password", f"must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ValidationError("password", f"must be at most {MAX_PASSWORD} characters")
    if password.lower() in common_passwords() or len(set(password)) < 4:
        raise ValidationError("password", "is too common; choose a longer, less predictable passphrase")
    return password


@dataclass(frozen=True, slots=True)
class StaffMember:
    id: str
    org_id: str
    email: str
    role: str
    disabled: bool
    has_totp: bool = False


Members = list[StaffMember]  # (inside Staff, `list` names its method)


def _member(doc: Doc) -> StaffMember:
    return StaffMember(doc["_id"], doc["org_id"], doc["email"], doc["role"], bool(doc.get("disabled")),
                       bool(doc.get("totp_secret")))


class Staff:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._directory: dict[str, tuple[float, Members]] = {}  # org id -> (read at, members)

    async def create(self, org_id: str, email: str, role: str, password: str) -> StaffMember:
        if role not in ROLES:
            raise ValidationError("role", "must be admin or agent")
        addr = validate_email(email)
        doc: Doc = {
            "_id": new_id(), "org_id": org_id, "email": addr, "email_norm": addr.lower(), "role": role,
            "password_hash": hash_secret(validate_password(password)), "disabled": False,
            "totp_secret": None, "created_at": self._clock.now(),
        }
        try:
            await self._store.staff.insert_one(doc)
        except DuplicateKeyError:
            raise ValidationError("email", "is already used by another staff account") from None
        self._changed(org_id)
        return _member(doc)

    async def get(self, org_id: str, staff_id: str) -> StaffMember:
        doc = await self._store.staff.find_one({"_id": staff_id, "org_id": org_id})
        if doc is None:
            raise NotFound("staff")
        return _member(doc)

    async def count(self) -> int:
        return int(await self._store.staff.count_documents({}))

    # -- used by the staff portal (issue 3) ----------------------------------------------------
    async def find_login(self, email: str) -> Doc | None:
        """The stored account for a sign-in email (with its hash), or None."""
        if not isinstance(email, str) or len(email) > 320:
            return None
        return await self._store.staff.find_one({"email_norm": email.strip().lower()})

    async def doc(self, org_id: str, staff_id: str) -> Doc:
        doc = await self._store.staff.find_one({"_id": staff_id, "org_id": org_id})
        if doc is None:
            raise NotFound("staff")
        return doc

    async def active_admins(self, org_id: str) -> list[StaffMember]:
        """The org's admins whose accounts are not disabled (who staff alerts go to)."""
        return [_member(d) async for d in self._store.staff.find(
            {"org_id": org_id, "role": "admin", "disabled": False}).sort("_id", 1)]

    async def get_many(self, org_id: str, staff_ids: list[str]) -> dict[str, StaffMember]:
        """The org's members among `staff_ids`, by id, with one read (unknown ids are left out)."""
        return {d["_id"]: _member(d) async for d in self._store.staff.find(
            {"org_id": org_id, "_id": {"$in": list(dict.fromkeys(staff_ids))}})}

    async def list(self, org_id: str) -> list[StaffMember]:
        return [_member(d) async for d in self._store.staff.find({"org_id": org_id}).sort("email_norm", 1)]

    async def without_totp(self, org_id: str) -> Members:
        """The org's members who have no authenticator app (what "require TOTP" makes enrol)."""
        return [m for m in await self.list(org_id) if not m.has_totp]

    async def directory(self, org_id: str) -> Members:
        """The org's members for display (authors' names, assignees, the assignee picker), kept a
        few seconds: inbox and thread pages show it on every view, and it changes only when an
        admin edits the team. Never for deciding access: that reads the member itself (get)."""
        hit = self._directory.get(org_id)
        if hit is not None and time.monotonic() - hit[0] < DIRECTORY_SECONDS:
            return list(hit[1])
        members = await self.list(org_id)
        self._directory[org_id] = (time.monotonic(), members)
        return list(members)

    def _changed(self, org_id: str) -> None:
        self._directory.pop(org_id, None)

    async def enabled_admins(self, org_id: str) -> int:
        return int(await self._store.staff.count_documents({"org_id": org_id, "role": "admin", "disabled": False}))

    async def set_disabled(self, org_id: str, staff_id: str, disabled: bool) -> StaffMember:
        """Disable or re-enable an account (the caller ends the account's sessions)."""
        res = await self._store.staff.update_one({"_id": staff_id, "org_id": org_id},
                                                 {"$set": {"disabled": bool(disabled)}})
        self._changed(org_id)
        if res.matched_count == 0:
            raise NotFound("staff")
        return await self.get(org_id, staff_id)

    async def set_role(self, org_id: str, staff_id: str, role: str) -> StaffMember:
        if role not in ROLES:
            raise ValidationError("role", "must be admin or agent")
        res = await self._store.staff.update_one({"_id": staff_id, "org_id": org_id}, {"$set": {"role": role}})
        self._changed(org_id)
        if res.matched_count == 0:
            raise NotFound("staff")
        return await self.get(org_id, staff_id)

    async def set_password(self, org_id: str, staff_id: str, password: str) -> None:
        res = await self._store.staff.update_one(
            {"_id": staff_id, "org_id": org_id},
            {"$set": {"password_hash": hash_secret(validate_password(password)),
                      "password_changed_at": self._clock.now()}},
        )
        if res.matched_count == 0:
            raise NotFound("staff")

    async def rehash(self, doc: Doc, password: str) -> None:
        """Store a fresh hash when the parameters changed (called after a successful sign-in)."""
        if needs_rehash(doc["password_hash"]):
            await self._store.staff.update_one({"_id": doc["_id"]}, {"$set": {"password_hash": hash_secret(password)}})
