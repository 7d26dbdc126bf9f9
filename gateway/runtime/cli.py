"""The `hushlink` command: `serve` and `admin ...`. Bad config exits 2 before any port is bound."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.clock import SystemClock
from gateway.errors import ConfigError, HushlinkError, ValidationError
from gateway.runtime.config import Config, load_config
from gateway.runtime.embedded import EmbeddedDatabase
from gateway.runtime.services import Services, build_services
from gateway.security.crypto import load_or_create_keyring, write_keyring
from gateway.security.redact import configure_logging
from gateway.storage.store import Store, make_client

logger = logging.getLogger("hushlink")

DEMO_NUMBER = "+15005550006"
DEMO_STAFF = "admin@demo.hushlink.test"
DEMO_PAYLOAD = '{"to": {"phone": "+15551230001", "name": "Alex"}, "body": "Your lab results are ready."}'


def keyring_path(config: Config) -> Path:
    return Path(config.keys.keyring_file) if config.keys.keyring_file else config.data_dir / "keyring.json"


@contextlib.asynccontextmanager
async def open_services(config: Config, *, own_database: bool = False) -> AsyncIterator[Services]:
    """Connect (starting the embedded database when no URI is set) and yield the services."""
    embedded = None
    uri = config.database.uri
    if not uri:
        embedded = EmbeddedDatabase(config.data_dir)
        running = None if own_database else await embedded.running_uri()
        uri = running or await embedded.start()
        if running:
            embedded = None  # someone else's (e.g. `serve`): don't stop it
    keyring = load_or_create_keyring(keyring_path(config))
    client = make_client(uri, config.database.timeout_seconds)
    store = Store(client, config.database.name)
    services = None
    try:
        await store.ensure_indexes()
        if moved := await store.move_old_audit_log():
            logger.info("audit log moved to its own database", extra={"fields": {"entries": moved}})
        services = build_services(config, store, keyring, SystemClock())
        yield services
    finally:
        if services is not None:
            await services.audit.flush()
        await client.close()
        if embedded is not None:
            await embedded.stop()


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data) if getattr(args, "json", False) else text)


# -- serve ----------------------------------------------------------------------------------
async def serve(config: Config, role: str) -> int:
    from gateway.runtime.app import build_runtime, create_app, metrics_app

    async with open_services(config, own_database=True) as services:
        runtime = build_runtime(services)
        srv = config.server
        runners = [await _listen(create_app(runtime, role=role), srv.host, srv.port, "server.port", config)]
        if srv.metrics_port:
            try:
                runners.append(await _listen(metrics_app(services), srv.metrics_host, srv.metrics_port,
                                             "server.metrics_port", config))
            except ConfigError:
                await runners[0].cleanup()
                raise
        url = services.public_url
        print(f"Hushlink is running: {url}  (role {role}; database "
              f"{'embedded' if not config.database.uri else 'external'})", flush=True)
        if runtime.sandbox_enabled:
            if srv.sandbox:
                print(sandbox_warning(sys.stdout.isatty()), flush=True)
            if runtime.sandbox is not None and not await services.orgs.all():
                await _demo_org(services, url)
            print(f"Sandbox phone and mailbox (see what was sent, answer as the contact): {url}/sandbox", flush=True)
        if role in ("all", "web"):
            from gateway.security.staff_auth import SETUP_TTL_SECONDS, first_run_url

            setup_url = await first_run_url(services.store, services.clock, url)
            if setup_url:
                print(f"First run: no staff account exists yet. Create your organization and its first admin at\n"
                      f"  {setup_url}\n(one use, valid {SETUP_TTL_SECONDS // 60} minutes; restart to get a new one)",
                      flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("shutting down: draining workers")
        for runner in reversed(runners):
            await runner.cleanup()
        await runtime.close()
    return 0


async def _listen(app: web.Application, host: str, port: int, key: str, config: Config) -> web.AppRunner:
    """Serve `app` on host:port with the connection limits of [server]; a port in use exits 2 naming `key`."""
    from portal.listener import start_http

    try:
        runner, _ = await start_http(app, host, port, header_timeout=config.server.header_timeout_seconds,
                                     keepalive_timeout=config.server.keepalive_timeout_seconds)
    except OSError as err:
        raise ConfigError(key, f"cannot listen on {host}:{port}: {err.strerror}") from None
    return runner


def sandbox_warning(tty: bool) -> str:
    """The line `serve` prints when [server] sandbox = true: red on a terminal, plain in a log."""
    text = ("WARNING: [server] sandbox = true: /sandbox is on although a real provider is configured; "
            "anyone who can reach it can read sandbox messages and inject replies as any contact. "
            "Never in production.")
    return f"\033[1;31m{text}\033[0m" if tty else text


async def _demo_org(services: Services, url: str) -> None:
    """Sandbox quick start: a demo org, an API key and a staff admin, their secrets printed once."""
    import secrets as pysecrets

    from gateway.security.api_keys import ApiKeys
    from gateway.tenancy.staff import Staff

    org = await services.orgs.create("Demo Clinic", DEMO_NUMBER)
    key, _ = await ApiKeys(services.store, services.clock).create(org.id, "quick start")
    password = "-".join(pysecrets.token_urlsafe(6) for _ in range(4))
    await Staff(services.store, services.clock).create(org.id, DEMO_STAFF, "admin", password)
    print(f"Sandbox mode (no Twilio account configured). Demo org {org.id} with number {DEMO_NUMBER}.")
    print(f"API key (shown once): {key}")
    print(f"Staff portal: {url}/staff/login as {DEMO_STAFF}, password (shown once): {password}")
    print("Send a secure message:\n"
          f"  curl -s -X POST {url}/api/v1/messages -H 'Authorization: Bearer {key}' "
          "-H 'Content-Type: application/json' "
          "-d '" + DEMO_PAYLOAD + "'")


# -- admin ----------------------------------------------------------------------------------
async def admin(config: Config, args: argparse.Namespace) -> int:
    from gateway.security.api_keys import ApiKeys
    from gateway.security.audit import SYSTEM, Actor
    from gateway.tenancy.staff import Staff

    async with open_services(config) as s:
        if args.command == "create-org":
            org = await s.orgs.create(args.name, args.sms_number, messaging_service_sid=args.messaging_service_sid,
                                      email_from=args.email_from, reply_domain=args.reply_domain,
                                      timezone=args.timezone)
            await s.audit.append(org.id, "org.created", SYSTEM)
            _print(args, {"id": org.id}, org.id)
        elif args.command in ("update-org", "set-policy"):
            return await _org_settings(s, args)
        elif args.command == "create-api-key":
            org = await s.orgs.get(args.org)
            key, doc = await ApiKeys(s.store, s.clock).create(org.id, args.name)
            await s.audit.append(org.id, "api_key.created", SYSTEM, detail={"key_id": doc["_id"]})
            _print(args, {"key": key, "id": doc["_id"]}, key)
        elif args.command == "create-staff":
            org = await s.orgs.get(args.org)
            if not args.password_stdin:
                raise ValidationError("--password-stdin", "is required (the password is read from standard input)")
            password = sys.stdin.readline().rstrip("\r\n")
            member = await Staff(s.store, s.clock).create(org.id, args.email, args.role, password)
            await s.audit.append(org.id, "staff.created", SYSTEM, staff_id=member.id, detail={"role": member.role})
            _print(args, {"id": member.id}, member.id)
        elif args.command == "rotate-keys":
            path = keyring_path(config)
            ring = s.sealer.keyring.rotated()
            write_keyring(path, ring)
            from gateway.security.crypto import Sealer
            from gateway.security.vault import Vault

            n = await Vault(s.store, Sealer(ring), s.clock).rewrap_all()
            _print(args, {"active": ring.active, "rewrapped": n}, f"active key {ring.active}; re-wrapped {n} data keys")
        elif args.command == "verify-audit":
            orgs = [await s.orgs.get(args.org)] if args.org else await s.orgs.all()
            result = {}
            for org in orgs:
                bad = await s.audit.verify(org.id)
                head = await s.audit.head(org.id)
                result[org.id] = {"ok": bad is None, "first_bad_seq": bad,
                                  "head_seq": head["seq"] if head else 0, "head_mac": head["mac"] if head else None}
            _print(args, result, "\n".join(
                f"{k}: {'ok' if v['ok'] else 'BROKEN at seq ' + str(v['first_bad_seq'])} "
                f"(head seq {v['head_seq']} {v['head_mac']})" for k, v in result.items()))
            return 0 if all(v["ok"] for v in result.values()) else 1
        elif args.command == "create-db-user":
            from gateway.storage.db_roles import create_app_user, role_name

            if not config.database.uri:
                raise ValidationError("database.uri", "create-db-user is for an external MongoDB server "
                                                      "(the embedded database has its own user, made on first start)")
            if not args.password_stdin:
                raise ValidationError("--password-stdin", "is required (the password is read from standard input)")
            password = sys.stdin.readline().rstrip("\r\n")
            if len(password) < 16:
                raise ValidationError("password", "must be at least 16 characters")
            await create_app_user(s.store.client, config.database.name, args.user, password)
            _print(args, {"user": args.user, "role": role_name(config.database.name)},
                   f"user {args.user} (role {role_name(config.database.name)}, in admin): connect the gateway "
                   f"with it, authSource=admin")
        elif args.command == "purge-expired":
            orgs = [await s.orgs.get(args.org)] if args.org else await s.orgs.all()
            purged = {org.id: await s.retention.purge_org(org) for org in orgs}
            _print(args, purged, "\n".join(f"{k}: {v['messages']} messages, {v['attachments']} attachments"
                                           for k, v in purged.items()))
        elif args.command == "export-contact":
            org = await s.orgs.get(args.org)
            data = await s.subject_data.export_contact(org.id, args.contact)
            await s.audit.append(org.id, "contact.exported", Actor("system", "cli"), contact_id=args.contact)
            text = json.dumps(data, indent=2, ensure_ascii=False)
            if args.output:
                _write_private(Path(args.output), text + "\n")
            else:
                print(text)
    return 0


async def _org_settings(s: Services, args: argparse.Namespace) -> int:
    """`update-org` and `set-policy`: the same service, parsing and audit as the staff Settings page."""
    from dataclasses import asdict

    from gateway.security.audit import Actor
    from gateway.tenancy.org_settings import OrgSettings
    from gateway.tenancy.orgs import DetailChanges

    settings = OrgSettings(s.orgs, s.staff, s.sessions, s.audit)
    actor = Actor("system", "cli")
    org = await s.orgs.get(args.org)
    if args.command == "set-policy":
        raw: dict[str, object] = {}
        for item in args.set or []:
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValidationError("--set", f"expects KEY=VALUE, got {item[:80]!r}")
            if key.strip() in raw:
                raise ValidationError(key.strip(), "is set twice")
            raw[key.strip()] = value
        if not raw:
            raise ValidationError("--set", "give at least one KEY=VALUE")
        result = await settings.change_policy(org.id, raw, actor)
        policy = asdict(result.org.policy)
        print(json.dumps(policy) if args.json else json.dumps(policy, indent=2))
        return 0
    changes = DetailChanges(
        name=args.name, add_numbers=tuple(args.add_number or ()), remove_numbers=tuple(args.remove_number or ()),
        add_messaging_services=tuple(args.messaging_service_sid or ()),
        remove_messaging_services=tuple(args.remove_messaging_service_sid or ()), send_from=args.send_from,
        email_from=args.email_from, reply_domain=args.reply_domain, timezone=args.timezone)
    try:
        org = await settings.change_details(org.id, changes, actor)
    except ValidationError as err:  # named as the option that carried it
        raise ValidationError("--" + err.field.replace("_", "-"), err.message) from None
    data = {"id": org.id, "name": org.name, "sms_numbers": list(org.sms_numbers),
            "messaging_service_sids": list(org.messaging_service_sids), "send_from": org.sms_sender or None,
            "email_from": org.email_from, "reply_domain": org.reply_domain, "timezone": org.timezone}
    _print(args, data, "\n".join(f"{k}: {', '.join(v) if isinstance(v, list) else ('' if v is None else v)}"
                                  for k, v in data.items()))
    return 0


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds a person's data in the clear)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hushlink", description="Self-hosted secure messaging gateway")
    p.add_argument("--config", help="TOML config file (default: $HUSHLINK_CONFIG, else built-in defaults)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve", help="run the gateway")
    sp.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
    sp.add_argument("--role", choices=("all", "web", "worker", "smtp"), default="all")
    ap = sub.add_parser("admin", help="administration")
    ap.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
    asub = ap.add_subparsers(dest="command", required=True)

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = asub.add_parser(name, help=help_)
        c.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
        c.add_argument("--json", action="store_true", help="print one JSON object")
        return c

    c = cmd("create-org", "create an organization")
    c.add_argument("--name", required=True)
    c.add_argument("--sms-number", help="the org's Twilio number, E.164")
    c.add_argument("--messaging-service-sid")
    c.add_argument("--email-from")
    c.add_argument("--reply-domain")
    c.add_argument("--timezone", default="UTC", help="IANA time zone for times shown to staff and clients")
    c = cmd("update-org", "change an organization's name, numbers, sender, mail settings or time zone")
    c.add_argument("--org", required=True)
    c.add_argument("--name")
    c.add_argument("--add-number", action="append", help="E.164; repeatable")
    c.add_argument("--remove-number", action="append", help="E.164; repeatable")
    c.add_argument("--messaging-service-sid", action="append", help="add a Twilio Messaging Service; repeatable")
    c.add_argument("--remove-messaging-service-sid", action="append")
    c.add_argument("--send-from", help="the number (E.164) or Messaging Service SID to send from")
    c.add_argument("--email-from", help="From address of mail ('' clears: the server default)")
    c.add_argument("--reply-domain", help="domain of reply addresses ('' clears: the server default)")
    c.add_argument("--timezone", help="IANA time zone, e.g. America/New_York")
    c = cmd("set-policy", "change org policy settings; prints the effective policy as JSON")
    c.add_argument("--org", required=True)
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="a policy field and its value; repeatable")
    c = cmd("create-api-key", "create an API key (printed once)")
    c.add_argument("--org", required=True)
    c.add_argument("--name", required=True)
    c = cmd("create-staff", "create a staff account (password on standard input)")
    c.add_argument("--org", required=True)
    c.add_argument("--email", required=True)
    c.add_argument("--role", choices=("admin", "agent"), required=True)
    c.add_argument("--password-stdin", action="store_true")
    cmd("rotate-keys", "add a new key-encryption key and re-wrap every data key")
    c = cmd("verify-audit", "verify the audit hash chain; prints the head to anchor elsewhere")
    c.add_argument("--org")
    c = cmd("create-db-user", "create the gateway's least-privilege database user (run with admin credentials)")
    c.add_argument("--user", required=True)
    c.add_argument("--password-stdin", action="store_true")
    c = cmd("purge-expired", "remove message content older than each org's retention_days (serve does it hourly)")
    c.add_argument("--org")
    c = cmd("export-contact", "everything stored about one contact, opened, as JSON (right of access)")
    c.add_argument("--org", required=True)
    c.add_argument("--contact", required=True)
    c.add_argument("--output", help="write to this file (mode 0600) instead of standard output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config_path = getattr(args, "config_sub", None) or args.config or os.environ.get("HUSHLINK_CONFIG")
    try:
        config = load_config(config_path, os.environ)
        configure_logging(config.server.log_level)
        if args.cmd == "serve":
            return asyncio.run(serve(config, args.role))
        return asyncio.run(admin(config, args))
    except ConfigError as err:
        print(f"hushlink: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        print(f"hushlink: {err.field}: {err.message}", file=sys.stderr)
        return 2
    except HushlinkError as err:
        print(f"hushlink: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
