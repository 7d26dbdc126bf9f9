"""An SMTP server on loopback (aiosmtpd) that keeps what it receives, for tests of outbound mail.

It runs in the test's own event loop, on a free port of 127.0.0.1, and can be told to refuse
the next MAIL, RCPT or DATA with any reply, to stall before replying, to offer STARTTLS with a
self-signed certificate (and require it), and to require AUTH.

    async with SmtpSink() as sink:
        sender = SmtpEmailSender(sink.host, sink.port, starttls=False)
        sink.reject_next(451, "4.3.0 try again later", stage="RCPT")
        ...
        assert sink.messages[0]["message"]["Subject"] == "..."
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import ipaddress
import ssl
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Stage = Literal["MAIL", "RCPT", "DATA"]


def make_self_signed_cert(tmpdir: Path | str) -> tuple[Path, Path]:
    """Write a self-signed certificate for localhost / 127.0.0.1 and its key; return their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hushlink smtp sink")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = Path(tmpdir)
    cert_path, key_path = directory / "sink-cert.pem", directory / "sink-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def trusting_context(cert_path: Path | str) -> ssl.SSLContext:
    """A client context that trusts exactly `cert_path` (hostname checking stays on)."""
    return ssl.create_default_context(cafile=str(cert_path))


@dataclass
class _Fault:
    stage: Stage
    reply: str | None  # None: only the delay
    delay: float


class _Handler:
    """aiosmtpd handler: replies from the sink's fault queue, else stores the message."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if (reply := await self._sink._fault("MAIL")) is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if (reply := await self._sink._fault("RCPT")) is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if (reply := await self._sink._fault("DATA")) is not None:
            return reply
        data = envelope.original_content or b""
        message = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        login = session.auth_data  # what the authenticator accepted (AuthResult.auth_data)
        self._sink.messages.append({
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "data": data,
            "message": message,
            "tls": session.ssl is not None,
            "login": login.login.decode() if isinstance(login, LoginPassword) else None,
        })
        return "250 OK: queued"


class SmtpSink:
    """A real SMTP server on 127.0.0.1 that records every accepted message."""

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        tls_cert: tuple[Path, Path] | None = None,
        require_starttls: bool = False,
        auth: tuple[str, str] | None = None,
        hostname: str = "sink.test",
    ) -> None:
        self.port = 0
        self.messages: list[dict[str, Any]] = []
        self.auth_attempts: list[tuple[str, bool]] = []  # (login, accepted)
        self._faults: deque[_Fault] = deque()
        self._tls: ssl.SSLContext | None = None
        if tls_cert is not None:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(str(tls_cert[0]), str(tls_cert[1]))
        self._require_starttls = require_starttls
        self._auth = auth
        self._hostname = hostname
        self._handler = _Handler(self)
        self._server: asyncio.Server | None = None
        self._connections: list[SMTP] = []

    # -- fault injection ------------------------------------------------------------------
    def reject_next(self, code: int, text: str, *, stage: Stage = "RCPT") -> None:
        """Answer the next `stage` command with `code text` instead of accepting it."""
        self._faults.append(_Fault(stage, f"{code} {text}", 0.0))

    def delay_next(self, seconds: float, *, stage: Stage = "DATA") -> None:
        """Wait `seconds` before answering the next `stage` command (then answer normally)."""
        self._faults.append(_Fault(stage, None, seconds))

    async def _fault(self, stage: Stage) -> str | None:
        for fault in self._faults:
            if fault.stage == stage:
                self._faults.remove(fault)
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                return fault.reply
        return None

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop any connection still open (a stalled handler included)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in self._connections:
            if connection.transport is not None:
                connection.transport.close()
        await server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost run for the transports just closed

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _protocol(self) -> SMTP:
        auth = self._auth is not None
        smtp = SMTP(
            self._handler,
            hostname=self._hostname,
            tls_context=self._tls,
            require_starttls=self._require_starttls,
            auth_required=auth,
            # Allow AUTH without TLS only when the sink offers no TLS at all.
            auth_require_tls=auth and self._tls is not None,
            authenticator=self._authenticate if auth else None,
            loop=asyncio.get_running_loop(),
        )
        self._connections.append(smtp)
        return smtp

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self._auth is not None
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        ok = (login, password) == self._auth
        self.auth_attempts.append((login, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)
