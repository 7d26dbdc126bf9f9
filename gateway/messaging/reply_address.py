"""The reply-address format: "reply+<token>@<reply domain>", built for outgoing mail and parsed
at the SMTP listener (one place for the rule both sides must agree on).

The token is a reply token (gateway/security/tokens.py, gateway/messaging/reply_tokens.py); this module only knows
its shape, never whether it is live.
"""

from __future__ import annotations

import re

from gateway.security.tokens import looks_like_token

REPLY_PREFIX = "reply+"
# A DNS name: labels of letters, digits and inner hyphens (IDNs arrive here as A-labels).
_DOMAIN = re.compile(
    r"(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?",
    re.IGNORECASE,
)


def check_domain(domain: str) -> None:
    """Raise ValueError unless `domain` is a DNS name (as put in an address or a Message-ID)."""
    if not _DOMAIN.fullmatch(domain):
        raise ValueError("not a domain name")


def reply_address(token: str, reply_domain: str) -> str:
    """The address a client replies to: "reply+<token>@<reply_domain>"."""
    if not looks_like_token(token):
        raise ValueError("reply token must be 43 URL-safe characters")
    check_domain(reply_domain)
    return f"{REPLY_PREFIX}{token}@{reply_domain.lower()}"


def parse_reply_address(addr: str, reply_domain: str) -> str | None:
    """The token in "reply+<token>@<reply_domain>", or None for any other address.

    The domain compares case-insensitively (RFC 5321 2.4); the token does not, it is
    case-sensitive base64url. A trailing dot on either domain is ignored.
    """
    local, at, domain = addr.strip().rpartition("@")
    if not at or domain.lower().rstrip(".") != reply_domain.lower().rstrip("."):
        return None
    if local[: len(REPLY_PREFIX)].lower() != REPLY_PREFIX:
        return None
    token = local[len(REPLY_PREFIX) :]
    return token if looks_like_token(token) else None
