"""Domain errors: one tree, no transport codes.

    HushlinkError
    ├── ConfigError              bad configuration (names the key)
    ├── ValidationError          bad input from any edge (names the field)
    ├── NotFound                 unknown or foreign object (never says which)
    ├── Forbidden                authenticated, but not allowed
    ├── OptedOut                 the contact has opted out of this channel
    ├── SensitiveContent         a standard send whose text looks sensitive
    ├── PinRequired              a secure send under pin_required, with no PIN to ask for
    ├── LinkUnavailable          unknown, expired, revoked or locked link (one error for all)
    ├── PinRejected              wrong PIN (carries tries left)
    ├── IntegrityError           a sealed field failed to open (tampered or moved)
    ├── StoreUnavailable         the database did not answer
    └── ProviderError            a provider call failed
        ├── ProviderTransient    retry later (429, 5xx, timeouts, 4xx SMTP)
        └── ProviderPermanent    do not retry (invalid number, opted out, 5xx SMTP)

Each edge maps these: an aiohttp middleware to HTTP, the SMTP handler to reply codes, the
outbox dispatcher to retry or fail.
"""

from __future__ import annotations


class HushlinkError(Exception):
    """Base of every error Hushlink raises on purpose."""


class ConfigError(HushlinkError):
    """Configuration is invalid; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config {key}: {problem}")
        self.key = key
        self.problem = problem


class ValidationError(HushlinkError):
    """Input is invalid; `field` names the offending field."""

    def __init__(self, field: str, message: str, code: str = "invalid") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.code = code


class Conflict(ValidationError):
    """Valid input that conflicts with what is stored (e.g. an address that belongs to another
    contact): 409 rather than 422, as the same request could succeed against other data."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message, code="conflict")


class NotFound(HushlinkError):
    """No such object in this organization (or in any: the caller can't tell)."""


class Forbidden(HushlinkError):
    """The caller is known but may not do this."""


class OptedOut(HushlinkError):
    """The contact opted out of the channel; nothing more may be sent on it."""


class LegalHold(HushlinkError):
    """The contact is under a legal hold: their data may not be erased until it is released."""


class SensitiveContent(HushlinkError):
    """A standard (non-secure) send whose content looks sensitive."""

    def __init__(self, kinds: list[str]) -> None:
        super().__init__("content looks sensitive: " + ", ".join(kinds))
        self.kinds = kinds


class PinRequired(HushlinkError):
    """The org requires a PIN on secure links and the contact has none (gateway/rules/pin.py)."""

    def __init__(self) -> None:
        super().__init__("this organization requires a PIN for secure messages; the contact has none")


class LinkUnavailable(HushlinkError):
    """The link is unknown, expired, revoked or locked; callers must not learn which."""


class PinRejected(HushlinkError):
    """The PIN was wrong."""

    def __init__(self, tries_left: int) -> None:
        super().__init__("wrong PIN")
        self.tries_left = tries_left


class IntegrityError(HushlinkError):
    """A sealed value failed authentication: tampered with, or moved from another document."""


class KeyErased(IntegrityError):
    """A sealed value whose data key was destroyed: the contact was erased (crypto-shredded)."""


class StoreUnavailable(HushlinkError):
    """The database could not be reached in time."""


class ProviderError(HushlinkError):
    """A provider (Twilio, SMTP relay) call failed."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ProviderTransient(ProviderError):
    """The call may succeed later: retry with backoff."""


class ProviderPermanent(ProviderError):
    """The call will not succeed as it is: fail without retrying."""
