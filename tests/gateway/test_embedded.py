"""The embedded database (gateway/runtime/embedded.py) runs with access control, and its data directory
is private: credentials made on first start (mode 0600) and reused, directory 0700, files 0600."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from gateway.runtime.embedded import EmbeddedDatabase, uri_for

UNAUTHORIZED = (13, 18)  # Unauthorized, AuthenticationFailed


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir(mode=0o755)  # made by hand, too open: start tightens it
    return path


async def insert_and_count(uri: str, marker: str) -> int:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        coll = client["hushlink"]["probe"]
        await coll.insert_one({"marker": marker})
        return await coll.count_documents({})
    finally:
        await client.close()


def modes(root: Path) -> dict[str, int]:
    """Permission bits of the directory and everything under it."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


async def test_first_start_makes_credentials_and_a_second_start_reuses_them(data_dir: Path) -> None:
    first = EmbeddedDatabase(data_dir)
    uri = await first.start()
    try:
        creds = json.loads((data_dir / "embedded-db.credentials").read_text())
        assert creds["user"] == "hushlink" and len(creds["password"]) >= 43
        assert creds["password"] not in (data_dir / "embedded-db.json").read_text()
        assert await insert_and_count(uri, "first run") == 1
    finally:
        await first.stop()
    second = EmbeddedDatabase(data_dir)
    uri = await second.start()
    try:
        assert json.loads((data_dir / "embedded-db.credentials").read_text()) == creds
        assert await insert_and_count(uri, "second run") == 2  # same data, same user
        # An admin command attaches to the running server through the state file.
        attached = await EmbeddedDatabase(data_dir).running_uri()
        assert attached is not None and await insert_and_count(attached, "admin") == 3
    finally:
        await second.stop()


async def test_the_data_directory_is_0700_and_its_files_0600(data_dir: Path) -> None:
    db = EmbeddedDatabase(data_dir)
    uri = await db.start()
    try:
        await insert_and_count(uri, "x")  # the storage engine writes its files
        found = modes(data_dir)
    finally:
        await db.stop()
    assert found["."] == 0o700
    assert found["embedded-db.credentials"] == 0o600
    assert any(name.startswith("db" + os.sep) for name in found), found  # the server's own files are there
    too_open = {name: oct(mode) for name, mode in found.items() if mode & 0o077}
    assert too_open == {}


async def test_a_client_without_the_credentials_is_refused(data_dir: Path) -> None:
    db = EmbeddedDatabase(data_dir)
    uri = await db.start()
    port = int(json.loads((data_dir / "embedded-db.json").read_text())["port"])
    try:
        await insert_and_count(uri, "secret")
        for anonymous_or_wrong in (uri_for(port), uri_for(port, "not-the-password")):
            client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(anonymous_or_wrong,
                                                                           serverSelectionTimeoutMS=3000)
            try:
                with pytest.raises(OperationFailure) as err:
                    await client["hushlink"]["probe"].find_one({})
                assert err.value.code in UNAUTHORIZED
            finally:
                await client.close()
    finally:
        await db.stop()


async def test_lost_credentials_are_made_again_for_the_same_database(data_dir: Path) -> None:
    db = EmbeddedDatabase(data_dir)
    await insert_and_count(await db.start(), "kept")
    await db.stop()
    (data_dir / "embedded-db.credentials").unlink()
    again = EmbeddedDatabase(data_dir)
    uri = await again.start()
    try:
        assert await insert_and_count(uri, "after") == 2
    finally:
        await again.stop()
