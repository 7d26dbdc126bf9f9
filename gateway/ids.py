"""Document ids: strings of ObjectId hex, so they sort by creation time and need no conversion."""

from __future__ import annotations

from bson import ObjectId


def new_id() -> str:
    return str(ObjectId())


def is_id(value: str) -> bool:
    return isinstance(value, str) and len(value) == 24 and all(c in "0123456789abcdef" for c in value)
