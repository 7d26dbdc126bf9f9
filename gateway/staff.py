"""Staff accounts: unique normalized email, argon2id password, role (admin or agent)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pymongo.errors import DuplicateKeyError

from gateway.errors import NotFound, ValidationError
from gateway.ids import new_id
from gateway.orgs import validate_email
from gateway.pins import hash_secret
from gateway.ports import Clock
from gateway.store import Doc, Store

ROLES = ("admin", "agent")
MIN_PASSWORD = 12  # issue 3: at least 12 characters, no composition rules
MAX_PASSWORD = 128
_COMMON_FILE = Path(__file__).parent / "data" / "common-passwords.txt"
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


def _member(doc: Doc) -> StaffMember:
    return StaffMember(doc["_id"], doc["org_id"], doc["email"], doc["role"], bool(doc.get("disabled")))


class Staff:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

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
        return _member(doc)

    async def get(self, org_id: str, staff_id: str) -> StaffMember:
        doc = await self._store.staff.find_one({"_id": staff_id, "org_id": org_id})
        if doc is None:
            raise NotFound("staff")
        return _member(doc)

    async def count(self) -> int:
        return int(await self._store.staff.count_documents({}))
