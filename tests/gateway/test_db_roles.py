"""Least privilege in the database (docs/security-model.md, 'Database and transport'): with its
own database user the gateway works,
but cannot change or delete audit entries, drop collections or databases, or manage users.

A SecantusDB server with access control (`--auth`) of its own: users are created before access
control is turned on (SecantusDB has no localhost exception), then the server restarts with it.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from gateway.clock import FrozenClock
from gateway.runtime.cli import main
from gateway.security.audit import SYSTEM, AuditLog
from gateway.security.crypto import Keyring, Sealer
from gateway.storage.store import Store
from gateway.tenancy.orgs import Orgs
from tests.support.database import _free_port

DB = "hushlink"
ADMIN_PASSWORD = "admin-passphrase-0042"
APP_PASSWORD = "app-passphrase-0042-long"
UNAUTHORIZED = 13


class AuthServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def uri(self, user: str | None = None, password: str | None = None) -> str:
        creds = f"{user}:{password}@" if user else ""
        return f"mongodb://{creds}127.0.0.1:{self.port}/?authSource=admin&directConnection=true"

    def start(self, *, auth: bool) -> None:
        binary = Path(sys.executable).parent / "secantusd-py"
        self.proc = subprocess.Popen([str(binary), "--host", "127.0.0.1", "--port", str(self.port),
                                      "--storage-path", str(self.path), *(["--auth"] if auth else [])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client: MongoClient[dict[str, Any]] = MongoClient(self.uri(), serverSelectionTimeoutMS=300)
        try:
            for _ in range(300):
                try:
                    client.admin.command("ping")
                    return
                except PyMongoError:
                    time.sleep(0.1)
            raise RuntimeError("SecantusDB did not start")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AuthServer]:
    srv = AuthServer(tmp_path / "db")
    srv.start(auth=False)
    admin: MongoClient[dict[str, Any]] = MongoClient(srv.uri())
    admin.admin.command("createUser", "admin", pwd=ADMIN_PASSWORD, roles=["root"])
    admin.close()
    srv.stop()
    srv.start(auth=True)
    yield srv
    srv.stop()


@pytest.fixture
async def app_store(server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Store]:
    """The gateway's user, made by `hushlink admin create-db-user` with the admin's URI."""
    monkeypatch.setenv("HUSHLINK_DATABASE__URI", server.uri("admin", ADMIN_PASSWORD))
    monkeypatch.setenv("HUSHLINK_DATABASE__NAME", DB)
    monkeypatch.setenv("HUSHLINK_SERVER__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("HUSHLINK_CONFIG", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(APP_PASSWORD + "\n"))
    assert await asyncio.to_thread(main, ["admin", "create-db-user", "--user", "gateway", "--password-stdin"]) == 0
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri("gateway", APP_PASSWORD), tz_aware=True)
    store = Store(client, DB)
    await store.ensure_indexes()
    yield store
    await client.close()


async def test_the_gateway_user_works_and_appends_to_the_audit_log(app_store: Store) -> None:
    clock = FrozenClock()
    audit = AuditLog(app_store, Sealer(Keyring.generate()), clock)
    org = await Orgs(app_store, clock).create("Riverside Clinic", "+15005550006")
    entry = await audit.append(org.id, "org.created", SYSTEM)
    await audit.flush()
    assert entry["seq"] == 1 and await audit.verify(org.id) is None
    await app_store.messages.insert_one({"_id": "m1", "org_id": org.id, "idempotency_key": "k1"})
    await app_store.messages.update_one({"_id": "m1"}, {"$set": {"status": "sent"}})
    await app_store.messages.delete_one({"_id": "m1"})
    async with await app_store.threads.watch():
        pass  # live updates follow change streams


async def test_the_gateway_user_cannot_rewrite_the_audit_log_or_drop_anything(app_store: Store) -> None:
    await app_store.audit.insert_one({"_id": "e1", "org_id": "o", "seq": 1, "action": "org.created"})
    attempts = {
        "update an audit entry": lambda: app_store.audit.update_one({"_id": "e1"}, {"$set": {"action": "x"}}),
        "replace an audit entry": lambda: app_store.audit.replace_one({"_id": "e1"}, {"seq": 1}),
        "delete an audit entry": lambda: app_store.audit.delete_one({"_id": "e1"}),
        "drop the audit log": lambda: app_store.audit.drop(),
        "drop the audit database": lambda: app_store.client.drop_database(DB + "_audit"),
        "drop a collection": lambda: app_store.messages.drop(),
        "drop the database": lambda: app_store.client.drop_database(DB),
        "create a user": lambda: app_store.client.admin.command("createUser", "x", pwd="y" * 20, roles=["root"]),
        "grant itself a role": lambda: app_store.client.admin.command(
            "grantRolesToUser", "gateway", roles=[{"role": "root", "db": "admin"}]),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OperationFailure) as refused:
            await attempt()
        assert refused.value.code == UNAUTHORIZED, what
    assert await app_store.audit.find_one({"_id": "e1"}) == {"_id": "e1", "org_id": "o", "seq": 1,
                                                             "action": "org.created"}


def test_create_db_user_refuses_the_embedded_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HUSHLINK_DATABASE__URI", "")
    monkeypatch.setenv("HUSHLINK_SERVER__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("HUSHLINK_CONFIG", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(APP_PASSWORD + "\n"))
    assert main(["admin", "create-db-user", "--user", "gateway", "--password-stdin"]) == 2
    assert "database.uri" in capsys.readouterr().err


async def test_moving_an_old_audit_log_copies_it_even_when_the_user_may_not_drop_the_old_one(
        app_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    await app_store.db["audit"].insert_many([{"_id": f"e{i}", "org_id": "o", "seq": i} for i in range(1, 4)])
    assert await app_store.move_old_audit_log() == 3
    assert await app_store.audit.count_documents({}) == 3
    assert "left in place" in caplog.text  # an administrator drops it
