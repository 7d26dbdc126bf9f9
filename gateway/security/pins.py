"""Client PINs: policy, generation and argon2id hashing (NIST 800-63B §5.1.1, OWASP parameters)."""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.errors import ValidationError

# OWASP Password Storage Cheat Sheet row: m=19 MiB, t=2, p=1.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)

MIN_NUMERIC_PIN = 6  # system-style numeric PINs: at least 6 digits
MIN_CHOSEN_SECRET = 8  # anything that is not all digits: at least 8 characters
MAX_PIN = 64


def validate_pin(pin: str, field: str = "pin") -> str:
    """Return the PIN if it meets policy; raise ValidationError naming the field otherwise."""
    if not isinstance(pin, str):
        raise ValidationError(field, "must be a string")
    if len(pin) > MAX_PIN:
        raise ValidationError(field, f"must be at most {MAX_PIN} characters")
    if pin.isdigit() and pin.isascii():
        if len(pin) < MIN_NUMERIC_PIN:
            raise ValidationError(field, f"a numeric PIN needs at least {MIN_NUMERIC_PIN} digits")
    elif len(pin) < MIN_CHOSEN_SECRET:
        raise ValidationError(field, f"a non-numeric PIN needs at least {MIN_CHOSEN_SECRET} characters")
    if any(ord(c) < 32 for c in pin):
        raise ValidationError(field, "must not contain control characters")
    return pin


def generate_pin(digits: int = 6) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(max(digits, MIN_NUMERIC_PIN)))


def hash_secret(secret: str) -> str:
    return _HASHER.hash(secret)


def verify_secret(stored_hash: str, presented: str) -> bool:
    try:
        return _HASHER.verify(stored_hash, presented)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _HASHER.check_needs_rehash(stored_hash)
