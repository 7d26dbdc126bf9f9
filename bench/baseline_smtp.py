"""Baseline for the inbound email benchmark: an aiosmtpd handler doing one insert_one per message."""

from __future__ import annotations

import argparse
import asyncio

from aiosmtpd.smtp import SMTP, Envelope, Session
from bson import Binary
from pymongo import AsyncMongoClient, WriteConcern


class InsertHandler:
    def __init__(self, uri: str) -> None:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri)
        self.coll = client.get_database("baseline", write_concern=WriteConcern("majority", j=True)).mail

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self.coll.insert_one({"rcpt": envelope.rcpt_tos, "raw": Binary(envelope.original_content or b"")})
        return "250 2.0.0 OK"


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--uri", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    handler = InsertHandler(args.uri)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, decode_data=False), "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
