"""Least privilege in the database (docs/security-model.md, 'Database and transport'): the role
the gateway's own database user has.

`hushlink admin create-db-user`, run with an administrator's `database.uri`, creates the role
`hushlinkApp_<database>` and a user that holds only it (both in `admin`; connect as that user with
`authSource=admin`). With it the gateway reads and writes its collections, creates its indexes
and follows change streams, but it cannot change or delete an audit entry, drop a collection or
a database, or manage users and roles: whoever takes over the application process still cannot
rewrite the audit trail (the hash chain makes such a change evident; this makes it impossible
through the gateway's own account).

The audit log is in a database of its own (`<database>_audit`, gateway/storage/store.py) where the role
may only find and insert: a database is a boundary every server enforces for a role's privileges
(SecantusDB matches custom-role privileges by database, not by collection). The chain's recorded
head stays in the main database and writable: it moves forward with every append and carries its
own MAC, so lowering it is detected (gateway/security/audit.py).
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.mongo_client import AsyncMongoClient
from pymongo.errors import OperationFailure

from gateway.storage.store import AUDIT_DB_SUFFIX, Doc

_DATABASE = ["listCollections", "createCollection"]
_READ_WRITE = ["find", "insert", "update", "remove", "createIndex", "listIndexes", "changeStream", "killCursors"]
_APPEND_ONLY = ["find", "insert", "createIndex", "listIndexes", "killCursors"]
_ROLE_EXISTS = 51002
_USER_EXISTS = 51003


def role_name(db: str) -> str:
    return f"hushlinkApp_{db}"


def app_privileges(db: str) -> list[dict[str, Any]]:
    return [
        {"resource": {"db": db, "collection": ""}, "actions": _READ_WRITE + _DATABASE},
        {"resource": {"db": db + AUDIT_DB_SUFFIX, "collection": ""}, "actions": _APPEND_ONLY + _DATABASE},
    ]


async def create_app_user(client: AsyncMongoClient[Doc], db: str, user: str, password: str) -> None:
    """Create (or bring up to date) the role for database `db`, then the user holding only it."""
    admin = client.admin
    role = role_name(db)
    try:
        await admin.command("createRole", role, privileges=app_privileges(db), roles=[])
    except OperationFailure as err:
        if err.code != _ROLE_EXISTS:
            raise
        await admin.command("updateRole", role, privileges=app_privileges(db), roles=[])
    roles = [{"role": role, "db": "admin"}]
    try:
        await admin.command("createUser", user, pwd=password, roles=roles)
    except OperationFailure as err:
        if err.code != _USER_EXISTS:
            raise
        await admin.command("updateUser", user, pwd=password, roles=roles)
