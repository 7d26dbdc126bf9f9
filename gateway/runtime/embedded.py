"""The embedded database: a SecantusDB server run as a child process with its data under data_dir.

SecantusDB is GPL-2.0 and optional (`hushlink[embedded]`): it only ever runs as a separate
process, found on PATH or beside the Python interpreter; no module of ours imports it.

It runs with access control (`--auth`, SCRAM-SHA-256): on first start a random password for one
user ("hushlink", role root in admin) is generated and kept in <data_dir>/embedded-db.credentials
(mode 0600); every later start, and admin commands attaching to a running `serve`, read it there.
SecantusDB has no localhost exception, so the user is created by starting the server once
without `--auth` (on a random loopback port, for the second or two createUser takes), then
restarting it with `--auth`: a known window, once, in which a local process could reach it.
The data directory is made 0700, and the server runs with umask 077, so its files are 0600:
the data and the credentials are readable by the service's own account only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from urllib.parse import quote_plus

from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure, PyMongoError

from gateway.errors import ConfigError

logger = logging.getLogger(__name__)

EXECUTABLE = "secantusd-py"


def find_executable() -> str:
    beside = Path(sys.executable).parent / EXECUTABLE
    found = str(beside) if beside.exists() else shutil.which(EXECUTABLE)
    if not found:
        raise ConfigError("database.uri", "is empty, and the embedded database is not installed "
                                          "(pip install 'hushlink[embedded]', or set a MongoDB URI)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


USER = "hushlink"
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def uri_for(port: int, password: str | None = None) -> str:
    creds = f"{USER}:{quote_plus(password)}@" if password is not None else ""
    auth = "&authSource=admin" if password is not None else ""
    return f"mongodb://{creds}127.0.0.1:{port}/?directConnection=true{auth}"


async def answers(uri: str, wait_seconds: float = 1.0) -> bool:
    """Does a server answer at `uri`, and accept its credentials if it has any?"""
    ms = int(wait_seconds * 1000)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=ms)
    try:
        await client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        await client.close()


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700, tightening one that already exists."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


class EmbeddedDatabase:
    """Starts, finds and stops the SecantusDB child process for one data directory."""

    def __init__(self, data_dir: Path, storage: str | None = None) -> None:
        self.data_dir = data_dir
        self.storage = storage or str(data_dir / "db")
        self.state_file = data_dir / "embedded-db.json"
        self.credentials_file = data_dir / "embedded-db.credentials"
        self.log_file = data_dir / "embedded-db.log"
        self.process: asyncio.subprocess.Process | None = None
        self.uri: str | None = None

    def password(self) -> str | None:
        """The database password stored on first start, or None before it."""
        try:
            return str(json.loads(self.credentials_file.read_text())["password"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError("database.uri", f"is empty and {self.credentials_file} is unreadable "
                                              "(delete it to make new database credentials)") from None

    def state_uri(self) -> str | None:
        """The URI (with credentials) of the server the state file names, if its process lives."""
        try:
            state = json.loads(self.state_file.read_text())
            os.kill(int(state["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return uri_for(int(state["port"]), self.password())

    async def running_uri(self) -> str | None:
        """The URI of a server already running for this data directory (e.g. from `serve`)."""
        uri = self.state_uri()
        return uri if uri is not None and await answers(uri) else None

    async def start(self, wait_seconds: float = 60.0) -> str:
        make_private_dir(self.data_dir)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(self.storage, PRIVATE_DIR)  # made by an earlier build, before the umask
        password = self.password()
        if password is None:
            password = secrets.token_urlsafe(32)
            await self._create_user(password, wait_seconds)
            write_private(self.credentials_file, json.dumps({"user": USER, "password": password}))
        port = await self._spawn(wait_seconds, auth=True, password=password)
        self.uri = uri_for(port, password)
        write_private(self.state_file, json.dumps({"pid": self.process.pid if self.process else 0, "port": port}))
        logger.info("embedded database started", extra={"fields": {"port": port, "storage": self.storage}})
        return self.uri

    async def _create_user(self, password: str, wait_seconds: float) -> None:
        """First start: the server without access control, just long enough to create the user."""
        port = await self._spawn(wait_seconds, auth=False, password=None)
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri_for(port), serverSelectionTimeoutMS=5000)
        try:
            try:
                await client.admin.command("createUser", USER, pwd=password, roles=["root"])
            except OperationFailure as err:
                if err.code != _USER_EXISTS:
                    raise
                # Credentials file lost, database kept: the same user, a new password.
                await client.admin.command("updateUser", USER, pwd=password)
        finally:
            await client.close()
            await self.stop()

    async def _spawn(self, wait_seconds: float, *, auth: bool, password: str | None) -> int:
        port = free_port()
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
        with os.fdopen(fd, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                find_executable(), "--host", "127.0.0.1", "--port", str(port), "--storage-path", self.storage,
                "--log-level", "WARNING", "--sync-on-commit", *(["--auth"] if auth else []),
                stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, umask=0o077,
            )
        uri = uri_for(port, password)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while not await answers(uri, 0.5):
            if self.process.returncode is not None or loop.time() > deadline:
                await self.stop()
                raise ConfigError("database.uri", f"is empty and the embedded database did not start "
                                                  f"(see {self.log_file})")
            await asyncio.sleep(0.2)
        return port

    async def stop(self) -> None:
        proc, self.process = self.process, None
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


_USER_EXISTS = 51003  # MongoDB's "User already exists"
