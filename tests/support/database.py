"""The test database server: one SecantusDB process per test session (or $HUSHLINK_TEST_MONGODB_URI)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SecantusServer:
    """A real MongoDB-wire server (SecantusDB) on loopback, with stop/start for outage tests."""

    def __init__(self, log_dir: Path) -> None:
        self.port = _free_port()
        self.log = log_dir / "secantusd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        # Without its TTL monitor (tests/support/secantusd_test.py says why).
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.secantusd_test", "--port", str(self.port)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT,
            )
        deadline = time.monotonic() + 60
        client: MongoClient[dict[str, object]] = MongoClient(self.uri, serverSelectionTimeoutMS=500)
        try:
            while True:
                try:
                    client.admin.command("ping")
                    return
                except PyMongoError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"SecantusDB did not start; see {self.log}") from None
                    time.sleep(0.2)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def external_uri() -> str | None:
    return os.environ.get("HUSHLINK_TEST_MONGODB_URI") or None
