"""EmailSender over an SMTP relay (aiosmtplib), with STARTTLS, AUTH and optional DKIM signing.

Headers are built from OutgoingEmail's fields through the email package's header registry,
never by joining strings: an address or a display name holding CR or LF is refused before
any connection is made, and extra headers must be on a short allow-list (docs/security-model.md,
'Notifications carry no content').
Every mail says it was sent by a machine (RFC 3834 Auto-Submitted, and Microsoft's
X-Auto-Response-Suppress) so vacation responders do not answer into a thread.

SMTP errors are translated here and nowhere else (gateway/errors.py):

    4xx reply to any command (421, 450, 451, 452, 454)  -> ProviderTransient(code="smtp_4xx")
    5xx reply to any command, incl. a refused recipient -> ProviderPermanent(code="smtp_5xx")
    connection refused/reset, timeouts                  -> ProviderTransient(code="network")
    TLS failure: certificate not trusted, handshake
      failed, or no STARTTLS offered while required     -> ProviderTransient(code="tls")
    AUTH not offered or no usable mechanism,
      a DKIM signing error                              -> ProviderTransient(code="smtp_config")
    a feature the mail needs is not offered (SMTPUTF8)  -> ProviderPermanent(
                                                             code="smtp_unsupported")
    a mail that cannot be built safely (CR/LF, a
      header not on the allow-list, a bad address)      -> ProviderPermanent(code="invalid_mail")

TLS and configuration failures are transient on purpose: they are the relay's or the
operator's to fix (a renewed certificate, a corrected CA bundle), not the message's, so the
outbox keeps the mail and retries with backoff rather than failing it; the code makes them
visible. Certificates
are always validated (F5); `tls_context` only chooses what to trust.

The relay's reply text can quote the recipient ("550 5.1.1 <jane@...>: user unknown"), so it
never reaches our messages or logs: they carry the reply code and a masked address only.
"""

from __future__ import annotations

import asyncio
import email.policy
import importlib
import logging
import re
import ssl
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from types import ModuleType

import aiosmtplib

from gateway.errors import ConfigError, ProviderPermanent, ProviderTransient, ValidationError
from gateway.messaging.phone import mask_email
from gateway.ports import Clock, OutgoingEmail

try:
    # dkimpy is optional: without it DkimSigner refuses to be built (a ConfigError).
    _dkim: ModuleType | None = importlib.import_module("dkim")
except ImportError:  # pragma: no cover - depends on the environment
    _dkim = None

logger = logging.getLogger(__name__)

# 7bit: bodies go out quoted-printable or base64, so no relay re-encodes them on the way
# (which would break a DKIM body hash) and no 8BITMIME support is needed.
_POLICY = email.policy.SMTP.clone(cte_type="7bit")

# Headers a caller may add, with their canonical spelling. Everything else (From, To, Bcc,
# Subject, Content-*...) comes only from OutgoingEmail's own fields.
ALLOWED_HEADERS = {
    name.lower(): name
    for name in (
        "Auto-Submitted",
        "X-Auto-Response-Suppress",
        "In-Reply-To",
        "References",
        "List-Id",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "Precedence",
    )
}
DEFAULT_HEADERS = (
    ("Auto-Submitted", "auto-generated"),  # RFC 3834 section 5
    ("X-Auto-Response-Suppress", "All"),  # [MS-OXCMAIL] 2.2.3.2.20
)
_MAX_LINE = 998  # RFC 5322 2.1.1
_MESSAGE_ID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")  # printable ASCII without < > and space


class _UtcClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class DkimSigner:
    """Signs a serialized mail with DKIM (RFC 6376, rsa-sha256, relaxed/relaxed) via dkimpy."""

    def __init__(self, selector: str, domain: str, private_key_pem: str | bytes) -> None:
        if _dkim is None:
            raise ConfigError("smtp.dkim", "needs the dkimpy package")
        for key, value in (("smtp.dkim_selector", selector), ("smtp.dkim_domain", domain)):
            if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", value):
                raise ConfigError(key, "must be a DNS name")
        pem = private_key_pem
        if isinstance(pem, str):
            pem = pem.encode("ascii")
        try:
            _dkim.crypto.parse_pem_private_key(pem)
        except Exception as err:  # dkimpy raises its own and ASN.1 errors; never echo the key
            raise ConfigError("smtp.dkim_private_key", "is not a PEM RSA private key") from err
        self.selector = selector
        self.domain = domain.lower()
        self._key = pem

    def __repr__(self) -> str:
        return f"DkimSigner(selector={self.selector!r}, domain={self.domain!r})"

    def sign(self, message: bytes) -> bytes:
        """Return `message` with a DKIM-Signature header prepended."""
        assert _dkim is not None  # checked in __init__
        signer = _dkim.DKIM(message, linesep=b"\r\n")
        # RFC 8058 section 4: the one-click unsubscribe headers must be covered by the signature
        # (dkimpy signs List-Unsubscribe by default, not List-Unsubscribe-Post).
        signer.should_sign.add(b"list-unsubscribe-post")
        signature: bytes = signer.sign(
            self.selector.encode("ascii"),
            self.domain.encode("ascii"),
            self._key,
            canonicalize=(b"relaxed", b"relaxed"),
        )
        return signature + message


class SmtpEmailSender:
    """Send mail through one SMTP relay, STARTTLS and certificate validation on by default."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str = "",
        password: str = "",
        starttls: bool = True,
        timeout: float = 15.0,
        dkim: DkimSigner | None = None,
        tls_context: ssl.SSLContext | None = None,
        clock: Clock | None = None,
        local_hostname: str | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if bool(username) != bool(password):
            raise ValueError("username and password go together")
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._starttls = starttls
        self._timeout = timeout
        self._dkim = dkim
        self._tls_context = tls_context
        self._clock: Clock = clock or _UtcClock()
        self._local_hostname = local_hostname

    def __repr__(self) -> str:
        return f"SmtpEmailSender(host={self._host!r}, port={self._port}, starttls={self._starttls})"

    async def send_email(self, mail: OutgoingEmail) -> str:
        """Send `mail` to its one recipient and return its Message-ID once the relay accepts it.

        `timeout` bounds the whole conversation, from connect to the reply to DATA.
        """
        try:
            message = build_message(mail, date=self._clock.now())
            data = message.as_bytes(policy=_POLICY)
        except (ValidationError, ValueError) as err:
            field = err.field if isinstance(err, ValidationError) else "mail"
            logger.warning(
                "smtp mail refused before sending",
                extra={"fields": {"field": field, "message_id": _safe_id(mail.message_id)}},
            )
            raise ProviderPermanent(
                f"smtp send refused: invalid {field}", code="invalid_mail"
            ) from err
        if self._dkim is not None:
            try:
                data = self._dkim.sign(data)
            except Exception as err:  # dkimpy's own errors; the key was checked at startup
                raise _config_error("dkim", mail) from err
        try:
            sender = Address(addr_spec=mail.return_path or mail.from_address).addr_spec
        except (ValueError, IndexError, HeaderParseError) as err:  # CR/LF, or not one plain address
            raise ProviderPermanent("smtp send refused: invalid return path", code="invalid_mail") from err
        recipient = Address(addr_spec=mail.to_address).addr_spec
        try:
            async with asyncio.timeout(self._timeout):
                await aiosmtplib.send(
                    data,
                    sender=sender,
                    recipients=[recipient],
                    hostname=self._host,
                    port=self._port,
                    username=self._username or None,
                    password=self._password or None,
                    local_hostname=self._local_hostname or mail.from_address.rpartition("@")[2],
                    use_tls=False,
                    start_tls=self._starttls,
                    validate_certs=True,
                    tls_context=self._tls_context,
                    timeout=self._timeout,
                )
        except aiosmtplib.SMTPRecipientsRefused as err:
            code = err.recipients[0].code if err.recipients else 550
            raise _reply_error(code, mail) from err
        except aiosmtplib.SMTPResponseException as err:
            # Before ConnectionError: SMTPConnectResponseError (a 4xx/5xx greeting) is both.
            raise _reply_error(err.code, mail) from err
        except ssl.SSLError as err:
            raise _tls_error(type(err).__name__, mail) from err
        except aiosmtplib.SMTPNotSupported as err:
            # e.g. SMTPUTF8 not offered: this relay will never take this mail as it is.
            _log_config("unsupported", mail)
            raise ProviderPermanent(
                "smtp send failed: unsupported", code="smtp_unsupported"
            ) from err
        except (
            aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, TimeoutError
        ) as err:
            raise _network_error(err, mail) from err
        except aiosmtplib.SMTPException as err:
            # aiosmtplib raises the bare class for "SMTP STARTTLS extension not supported by
            # server." and for AUTH problems. Either way nothing was sent, never in clear text.
            if "starttls" in str(err).lower():
                raise _tls_error("starttls_unavailable", mail) from err
            raise _config_error("smtp", mail) from err
        except OSError as err:
            raise _network_error(err, mail) from err
        logger.info(
            "smtp relay accepted mail",
            extra={"fields": {"message_id": mail.message_id, "to": mask_email(mail.to_address)}},
        )
        return mail.message_id


def build_message(mail: OutgoingEmail, *, date: datetime) -> EmailMessage:
    """Build the MIME message for `mail`: headers from its fields, text and optional HTML.

    Raises ValidationError naming the field that cannot go into a header safely.
    """
    message = EmailMessage(policy=_POLICY)
    message["From"] = _address("from_address", mail.from_address, mail.from_name, "from_name")
    message["To"] = _address("to_address", mail.to_address)
    message["Subject"] = _header_text("subject", mail.subject)
    message["Date"] = format_datetime(date)
    if not _MESSAGE_ID.fullmatch(mail.message_id):
        raise ValidationError("message_id", "must look like <id@domain>")
    message["Message-ID"] = mail.message_id
    if mail.reply_to is not None:
        message["Reply-To"] = _address("reply_to", mail.reply_to)
    for name, value in _extra_headers(mail.headers):
        message[name] = value
    message.set_content(mail.text)
    if mail.html is not None:
        message.add_alternative(mail.html, subtype="html")
    return message


def _address(field: str, addr_spec: str, display_name: str = "", name_field: str = "") -> Address:
    _header_text(name_field or field, display_name)
    if not addr_spec.isascii():
        # No SMTPUTF8 (RFC 6531) here: the email package would RFC 2047-encode the domain,
        # which no one can deliver. IDN domains must arrive as A-labels (xn--...).
        raise ValidationError(field, "must be an ASCII address")
    _header_text(field, addr_spec)
    try:
        address = Address(display_name=display_name, addr_spec=addr_spec)
    except (ValueError, IndexError) as err:
        # Address refuses CR/LF and anything beyond one addr-spec ("a@b, c@d").
        raise ValidationError(field, "is not a single email address") from err
    if not address.username or not address.domain:
        raise ValidationError(field, "is not a single email address")
    return address


def _header_text(field: str, value: str) -> str:
    if any(_is_control(ch) for ch in value):  # CR and LF above all (header injection)
        raise ValidationError(field, "must not contain line breaks or control characters")
    return value


def _extra_headers(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    chosen = dict(DEFAULT_HEADERS)
    seen: set[str] = set()
    for raw_name, value in headers:
        name = ALLOWED_HEADERS.get(raw_name.lower())
        if name is None or raw_name.strip() != raw_name:
            raise ValidationError("headers", "header is not on the allow-list")
        if name in seen:
            raise ValidationError("headers", f"{name} given twice")
        seen.add(name)
        _header_text("headers", value)
        if not value.isascii() or len(name) + 2 + len(value) > _MAX_LINE:
            raise ValidationError("headers", f"{name} must be ASCII and at most one line")
        chosen[name] = value
    return list(chosen.items())


def _is_control(ch: str) -> bool:
    return ch != "\t" and (ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "\u2028\u2029")


def _safe_id(message_id: str) -> str:
    return message_id if _MESSAGE_ID.fullmatch(message_id) else "[invalid]"


def _reply_error(code: int, mail: OutgoingEmail) -> ProviderTransient | ProviderPermanent:
    # Deliberately not the reply text: relays quote the recipient in it.
    permanent = 500 <= code < 600
    logger.warning(
        "smtp relay refused mail",
        extra={"fields": {
            "smtp_code": code, "retryable": not permanent,
            "message_id": _safe_id(mail.message_id), "to": mask_email(mail.to_address),
        }},
    )
    if permanent:
        return ProviderPermanent(f"smtp send failed: reply {code}", code="smtp_5xx")
    # 4xx, and anything else unexpected (a 2xx/3xx where a refusal was meant): try again later.
    return ProviderTransient(f"smtp send failed: reply {code}", code="smtp_4xx")


def _network_error(err: BaseException, mail: OutgoingEmail) -> ProviderTransient:
    kind = "timeout" if isinstance(err, TimeoutError) else type(err).__name__
    logger.warning(
        "smtp relay unreachable",
        extra={"fields": {"error": kind, "message_id": _safe_id(mail.message_id),
                          "to": mask_email(mail.to_address)}},
    )
    return ProviderTransient(f"smtp send failed: {kind}", code="network")


def _tls_error(kind: str, mail: OutgoingEmail) -> ProviderTransient:
    logger.warning(
        "smtp relay TLS failed",
        extra={"fields": {"error": kind, "message_id": _safe_id(mail.message_id)}},
    )
    return ProviderTransient(f"smtp send failed: TLS ({kind})", code="tls")


def _config_error(kind: str, mail: OutgoingEmail) -> ProviderTransient:
    _log_config(kind, mail)
    return ProviderTransient(f"smtp send failed: {kind}", code="smtp_config")


def _log_config(kind: str, mail: OutgoingEmail) -> None:
    logger.warning(
        "smtp relay cannot take mail as configured",
        extra={"fields": {"error": kind, "message_id": _safe_id(mail.message_id)}},
    )
