"""Baseline for the inbound benchmark: a bare aiohttp handler that does one insert_one per request."""

from __future__ import annotations

import argparse

from aiohttp import web
from pymongo import AsyncMongoClient, WriteConcern


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--uri", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(args.uri, tz_aware=True)
    coll = client.get_database("baseline", write_concern=WriteConcern("majority", j=True)).events

    async def handle(request: web.Request) -> web.Response:
        form = await request.post()
        await coll.insert_one({k: v for k, v in form.items() if isinstance(v, str)})
        return web.Response(text='<?xml version="1.0" encoding="UTF-8"?><Response/>', content_type="text/xml")

    app = web.Application()
    app.router.add_post("/webhooks/twilio/sms", handle)
    app.router.add_post("/api/v1/messages", handle)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
