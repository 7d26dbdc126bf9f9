"""Secrets handed to people: link tokens, reply tokens, API keys, session ids (one place for the rules).

Tokens are 256 bits from the OS CSPRNG (ASVS 5.0 11.5.1); only their SHA-256 is stored, which
NIST 800-63B allows for secrets of 112 bits or more.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32


def new_token() -> str:
    """A 256-bit URL-safe random token (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", errors="surrogateescape")).hexdigest()


def looks_like_token(value: str) -> bool:
    """Cheap shape check before any database lookup (43 URL-safe characters)."""
    return len(value) == 43 and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)


def new_api_key() -> tuple[str, str]:
    """Return (key shown once to the user, its stored hash). The prefix makes leaks greppable."""
    key = "hlk_" + secrets.token_urlsafe(TOKEN_BYTES)
    return key, token_hash(key)


def csrf_token(secret: bytes, binding: str) -> str:
    """A synchronizer token bound to a session (or a link) by HMAC."""
    return hmac.new(secret, f"csrf|{binding}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: bytes, binding: str, presented: str) -> bool:
    return hmac.compare_digest(csrf_token(secret, binding), presented)
