"""Configuration: TOML file + HUSHLINK_<SECTION>__<KEY> environment overrides, validated up front.

Every key is documented in config.example.toml. Secrets may come from a file named by the same
key with a `_file` suffix (e.g. `auth_token_file`). Invalid configuration raises ConfigError
naming the key, before anything binds a port.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pymongo.uri_parser import parse_uri

from gateway.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ServerConfig:
    public_url: str = "http://127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./data"
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: int = 1_000_000
    log_level: str = "INFO"
    # The sandbox (/sandbox) even with a real provider configured (gateway/runtime/app.py, Runtime.sandbox_enabled).
    sandbox: bool = False
    # Connection limits (portal/listener.py): the head of a request is due within
    # header_timeout_seconds; an idle keep-alive connection is closed after keepalive_timeout_seconds.
    header_timeout_seconds: float = 30.0
    keepalive_timeout_seconds: float = 75.0
    # /metrics: on the public site only with this bearer token; on metrics_host:metrics_port
    # (an internal listener, when metrics_port is set) without one.
    metrics_token: str = field(default="", repr=False)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0

    @property
    def is_https(self) -> bool:
        return self.public_url.startswith("https://")


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    uri: str = ""
    name: str = "hushlink"
    timeout_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class KeysConfig:
    keyring_file: str = ""


@dataclass(frozen=True, slots=True)
class TwilioConfig:
    account_sid: str = ""
    auth_token: str = field(default="", repr=False)
    api_base: str = ""
    timeout_seconds: float = 10.0

    @property
    def sandbox(self) -> bool:
        return not self.account_sid


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str = ""
    port: int = 587
    username: str = ""
    password: str = field(default="", repr=False)
    starttls: bool = True
    from_address: str = ""
    timeout_seconds: float = 15.0
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_private_key: str = field(default="", repr=False)
    # The envelope sender (MAIL FROM): "reply" (the mail's reply address, so bounces come back
    # and fail the message) or "from" (the From address, for relays that only accept that).
    return_path: str = "reply"

    @property
    def sandbox(self) -> bool:
        return not self.host


@dataclass(frozen=True, slots=True)
class InboundSmtpConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2525
    reply_domain: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    require_starttls: bool = False
    max_message_bytes: int = 10_000_000
    messages_per_minute_per_peer: int = 60
    # Per conversation (reply thread) per UTC day: over either, mail to it is deferred (452 4.2.2).
    thread_messages_per_day: int = 200
    thread_bytes_per_day: int = 20_000_000


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    max_attempts: int = 8
    base_backoff_seconds: float = 2.0
    max_backoff_seconds: float = 600.0
    lease_seconds: float = 60.0
    poll_seconds: float = 1.0
    sms_per_second: float = 10.0
    concurrency: int = 8
    # Finished jobs and processed inbound events are removed this long after they finish (TTL).
    keep_done_days: int = 30


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    twilio: TwilioConfig = field(default_factory=TwilioConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    inbound_smtp: InboundSmtpConfig = field(default_factory=InboundSmtpConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)


_SECTION_TYPES: dict[str, type[Any]] = {
    "server": ServerConfig,
    "database": DatabaseConfig,
    "keys": KeysConfig,
    "twilio": TwilioConfig,
    "smtp": SmtpConfig,
    "inbound_smtp": InboundSmtpConfig,
    "outbox": OutboxConfig,
}


def load_config(path: str | Path | None, environ: Mapping[str, str]) -> Config:
    """Read the TOML file (if any), apply environment overrides, validate, and return Config."""
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        p = Path(path)
        try:
            with p.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError("--config", f"file not found: {p}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError("--config", f"not valid TOML: {err}") from None
        for section, values in data.items():
            if section not in _SECTION_TYPES:
                raise ConfigError(section, "unknown section")
            if not isinstance(values, dict):
                raise ConfigError(section, "must be a table")
            raw[section] = dict(values)
    for name, value in environ.items():
        if not name.startswith("HUSHLINK_") or "__" not in name:
            continue
        section, _, key = name[len("HUSHLINK_") :].partition("__")
        section, key = section.lower(), key.lower()
        if section not in _SECTION_TYPES:
            # Not one of ours (e.g. HUSHLINK_TEST_MONGODB_URI has no "__" section split).
            raise ConfigError(f"{name}", "unknown section in environment override")
        raw.setdefault(section, {})[key] = value
    sections = {name: _build_section(name, cls, raw.get(name, {})) for name, cls in _SECTION_TYPES.items()}
    config = Config(**sections)
    _validate(config)
    return config


def _build_section(section: str, cls: type[Any], values: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key.endswith("_file") and key[: -len("_file")] in known and key not in known:
            target = key[: -len("_file")]
            try:
                value = Path(str(value)).read_text().strip()
            except OSError as err:
                raise ConfigError(f"{section}.{key}", f"cannot read secret file: {err.strerror}") from None
            key = target
        if key not in known:
            raise ConfigError(f"{section}.{key}", "unknown key")
        kwargs[key] = _coerce(f"{section}.{key}", known[key].default, value)
    return cls(**kwargs)


def _coerce(name: str, default: Any, value: Any) -> Any:
    """Turn a TOML or environment value into the type of the key's default."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(name, f"must be true or false, got {value!r}")
    if isinstance(default, int):
        try:
            if isinstance(value, float) or isinstance(value, bool):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"must be a whole number, got {value!r}") from None
    if isinstance(default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"must be a number, got {value!r}") from None
    if isinstance(default, tuple):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(name, "must be a list of strings")
    if not isinstance(value, str):
        raise ConfigError(name, f"must be a string, got {type(value).__name__}")
    return value


def _database_tls_or_local(uri: str) -> bool:
    """Does the connection use TLS, or stay on this machine? (mongodb+srv:// means TLS unless turned off.)"""
    query = {k.lower(): v.lower() for k, v in parse_qsl(urlsplit(uri).query)}
    if query.get("tls") == "true" or query.get("ssl") == "true":
        return True
    if uri.startswith("mongodb+srv://"):
        return query.get("tls") != "false" and query.get("ssl") != "false"
    try:
        hosts = [host for host, _ in parse_uri(uri)["nodelist"]]
    except Exception:  # noqa: BLE001 - a malformed URI fails when connecting, with the driver's message
        return True
    return all(host in ("localhost", "::1") or host.startswith("127.") for host in hosts)


def _validate(config: Config) -> None:
    s = config.server
    url = urlsplit(s.public_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError("server.public_url", "must be an absolute http(s) URL")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ConfigError("server.public_url", "must not have a path, query or fragment")
    for name, port in (("server.port", s.port), ("inbound_smtp.port", config.inbound_smtp.port),
                       ("smtp.port", config.smtp.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(name, f"must be between 0 and 65535, got {port}")
    if s.max_body_bytes < 1024:
        raise ConfigError("server.max_body_bytes", "must be at least 1024")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("server.log_level", "must be DEBUG, INFO, WARNING or ERROR")
    for name, seconds in (("server.header_timeout_seconds", s.header_timeout_seconds),
                          ("server.keepalive_timeout_seconds", s.keepalive_timeout_seconds)):
        if not 0 < seconds <= 3600:
            raise ConfigError(name, f"must be more than 0 and at most 3600, got {seconds}")
    if not 0 <= s.metrics_port <= 65535:
        raise ConfigError("server.metrics_port", f"must be between 0 and 65535, got {s.metrics_port}")
    if s.metrics_port and s.metrics_port == s.port:
        raise ConfigError("server.metrics_port", "must differ from server.port (the internal listener is separate)")
    if s.metrics_token and len(s.metrics_token) < 32:
        raise ConfigError("server.metrics_token", "must be at least 32 characters (e.g. openssl rand -hex 32)")
    db = config.database
    if db.uri and not db.uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError("database.uri", "must start with mongodb:// or mongodb+srv://")
    if db.uri and not _database_tls_or_local(db.uri):
        raise ConfigError("database.uri", "must use TLS (tls=true) for a database server that is not on this "
                                          "machine (HIPAA 164.312(e)(1))")
    if not db.name or any(c in db.name for c in '/\\. "$'):
        raise ConfigError("database.name", "must be a non-empty name without / \\ . space \" $")
    if db.timeout_seconds <= 0:
        raise ConfigError("database.timeout_seconds", "must be positive")
    tw = config.twilio
    if tw.account_sid and not tw.account_sid.startswith("AC"):
        raise ConfigError("twilio.account_sid", "must start with AC")
    if tw.account_sid and not tw.auth_token:
        raise ConfigError("twilio.auth_token", "is required when twilio.account_sid is set")
    if tw.api_base and not tw.api_base.startswith(("http://", "https://")):
        raise ConfigError("twilio.api_base", "must be an http(s) URL")
    if tw.timeout_seconds <= 0:
        raise ConfigError("twilio.timeout_seconds", "must be positive")
    sm = config.smtp
    if sm.host and not sm.starttls and sm.host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError("smtp.starttls", "must be true for a relay that is not on this machine (mail would "
                                           "cross the network unencrypted)")
    if sm.host and sm.from_address and "@" not in sm.from_address:
        raise ConfigError("smtp.from_address", "must be an email address")
    if sm.return_path not in ("reply", "from"):
        raise ConfigError("smtp.return_path", 'must be "reply" or "from"')
    if any((sm.dkim_selector, sm.dkim_domain, sm.dkim_private_key)) and not all(
            (sm.dkim_selector, sm.dkim_domain, sm.dkim_private_key)):
        raise ConfigError("smtp.dkim_private_key", "dkim_selector, dkim_domain and dkim_private_key go together")
    ib = config.inbound_smtp
    if bool(ib.tls_cert_file) != bool(ib.tls_key_file):
        raise ConfigError("inbound_smtp.tls_key_file", "tls_cert_file and tls_key_file go together")
    if ib.require_starttls and not ib.tls_cert_file:
        raise ConfigError("inbound_smtp.require_starttls", "needs tls_cert_file and tls_key_file")
    if ib.messages_per_minute_per_peer < 1:
        raise ConfigError("inbound_smtp.messages_per_minute_per_peer", "must be at least 1")
    if ib.max_message_bytes < 10_000:
        raise ConfigError("inbound_smtp.max_message_bytes", "must be at least 10000")
    if ib.thread_messages_per_day < 1:
        raise ConfigError("inbound_smtp.thread_messages_per_day", "must be at least 1")
    if ib.thread_bytes_per_day < ib.max_message_bytes:
        # Else a message the listener accepts by size could never fit into a conversation's day.
        raise ConfigError("inbound_smtp.thread_bytes_per_day", "must be at least max_message_bytes")
    ob = config.outbox
    if ob.max_attempts < 1:
        raise ConfigError("outbox.max_attempts", "must be at least 1")
    if ob.base_backoff_seconds <= 0 or ob.max_backoff_seconds < ob.base_backoff_seconds:
        raise ConfigError("outbox.max_backoff_seconds", "must be at least base_backoff_seconds (> 0)")
    if not 1 <= ob.concurrency <= 256:
        raise ConfigError("outbox.concurrency", "must be between 1 and 256")
    if ob.sms_per_second <= 0:
        raise ConfigError("outbox.sms_per_second", "must be positive")
    if not 2 <= ob.keep_done_days <= 3650:
        # Under two days a provider's late retry or status callback could outlive its record.
        raise ConfigError("outbox.keep_done_days", "must be between 2 and 3650")
