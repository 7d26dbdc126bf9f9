"""The embedded database: a SecantusDB server run as a child process with its data under data_dir.

SecantusDB is GPL-2.0 and optional (`hushlink[embedded]`): it only ever runs as a separate
process, found on PATH or beside the Python interpreter; no module of ours imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

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


def uri_for(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


async def answers(uri: str, wait_seconds: float = 1.0) -> bool:
    ms = int(wait_seconds * 1000)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=ms)
    try:
        await client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        await client.close()


class EmbeddedDatabase:
    """Starts, finds and stops the SecantusDB child process for one data directory."""

    def __init__(self, data_dir: Path, storage: str | None = None) -> None:
        self.data_dir = data_dir
        self.storage = storage or str(data_dir / "db")
        self.state_file = data_dir / "embedded-db.json"
        self.process: asyncio.subprocess.Process | None = None
        self.uri: str | None = None

    async def running_uri(self) -> str | None:
        """The URI of a server already running for this data directory (e.g. from `serve`)."""
        try:
            state = json.loads(self.state_file.read_text())
            os.kill(int(state["pid"]), 0)
        except (OSError, ValueError, KeyError):
            return None
        uri = uri_for(int(state["port"]))
        return uri if await answers(uri) else None

    async def start(self, wait_seconds: float = 60.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log = (self.data_dir / "embedded-db.log").open("ab")  # noqa: ASYNC230 (once, at start-up)
        self.process = await asyncio.create_subprocess_exec(
            find_executable(), "--host", "127.0.0.1", "--port", str(port), "--storage-path", self.storage,
            "--log-level", "WARNING", "--sync-on-commit",
            stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )
        log.close()
        self.uri = uri_for(port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while not await answers(self.uri, 0.5):
            if self.process.returncode is not None or loop.time() > deadline:
                await self.stop()
                raise ConfigError("database.uri", f"is empty and the embedded database did not start "
                                                  f"(see {self.data_dir / 'embedded-db.log'})")
            await asyncio.sleep(0.2)
        self.state_file.write_text(json.dumps({"pid": self.process.pid, "port": port}))
        logger.info("embedded database started", extra={"fields": {"port": port, "storage": self.storage}})
        return self.uri

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
