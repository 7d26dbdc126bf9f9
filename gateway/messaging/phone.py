"""Phone numbers and addresses: strict E.164 normalization, and the masked hints shown instead."""

from __future__ import annotations

from gateway.errors import ValidationError

# ITU-T E.164 §6.1: at most 15 digits; country codes never start with 0. Fewer than 8 digits is
# not a reachable subscriber number anywhere we send, so it is rejected as a typo.
_MIN_DIGITS = 8
_MAX_DIGITS = 15
# Formatting people type around the digits; anything else (letters, "/", "#", "ext") is refused.
_SEPARATORS = frozenset(" -.()")
_DIGITS = frozenset("0123456789")
# Longest input worth looking at: 15 digits with generous formatting. Bounds the work on junk.
_MAX_INPUT = 40


def normalize_e164(value: str, *, field: str = "phone") -> str:
    """Return `value` as strict E.164 ("+" and 8-15 digits), or raise ValidationError(field).

    Spaces, dashes, dots and parentheses are dropped; the first other character must be "+".
    The error message never repeats the value (it may be someone's number).
    """
    if not isinstance(value, str):
        raise ValidationError(field, "must be a phone number in E.164 form such as +14155550123")
    text = value.strip()
    if len(text) > _MAX_INPUT:
        raise ValidationError(field, "is too long for a phone number")
    kept = [c for c in text if c not in _SEPARATORS]
    if not kept or kept[0] != "+":
        raise ValidationError(field, "must start with + and the country code, e.g. +14155550123")
    digits = kept[1:]
    # Only ASCII digits: str.isdigit() would let "²" or Arabic-Indic digits through.
    if not all(c in _DIGITS for c in digits):
        raise ValidationError(field, "may contain only digits after the +")
    if len(digits) < _MIN_DIGITS:
        raise ValidationError(field, "is too short for an E.164 phone number")
    if len(digits) > _MAX_DIGITS:
        raise ValidationError(field, "is too long for an E.164 phone number")
    if digits[0] == "0":
        raise ValidationError(field, "country code cannot start with 0")
    return "+" + "".join(digits)


def mask_phone(e164: str) -> str:
    """Return a hint such as "+1********67": "+", the first digit, stars, the last two digits.

    Anything that is not "+" and at least 8 ASCII digits gives "[phone]", so a malformed value
    is never echoed.
    """
    digits = e164[1:] if e164.startswith("+") else ""
    if len(digits) < _MIN_DIGITS or not all(c in _DIGITS for c in digits):
        return "[phone]"
    return "+" + digits[0] + "*" * (len(digits) - 3) + digits[-2:]


def mask_email(addr: str) -> str:
    """Return a hint such as "j***@e***.com": first letters of local part and domain, and TLD.

    Without an "@" the result is "[email]", so a malformed value is never echoed.
    """
    local, at, domain = addr.strip().rpartition("@")
    if not at or not local or not domain:
        return "[email]"
    name, dot, tld = domain.rpartition(".")
    if not dot or not name or not tld:
        return f"{local[0]}***@{domain[0]}***"
    return f"{local[0]}***@{name[0]}***.{tld}"
