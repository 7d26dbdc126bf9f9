"""Document ids: strings of ObjectId hex, so they sort by creation time and need no conversion.

The NewTypes name which document an id points at (mypy tells an org id from a thread id where a
record declares it, gateway/messaging/records.py); at run time they are plain strings.
"""

from __future__ import annotations

from typing import NewType

from bson import ObjectId

OrgId = NewType("OrgId", str)
ThreadId = NewType("ThreadId", str)
ContactId = NewType("ContactId", str)
MessageId = NewType("MessageId", str)


def new_id() -> str:
    return str(ObjectId())


def is_id(value: str) -> bool:
    return isinstance(value, str) and len(value) == 24 and all(c in "0123456789abcdef" for c in value)
