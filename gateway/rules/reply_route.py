"""Which channel a reply or link-only notice goes to: the one place that decides.

The channel names the address too: a contact has at most one phone (SMS) and one email address.
A channel is *reachable* when the contact has its address and has not opted out of it.

Precedence (first that applies wins):

1. `thread`    the thread's channel, if reachable: the conversation stays where it is (an
               inbound reply sets the thread's channel, so an acknowledgement answers on the
               channel the contact just wrote on);
2. `last_used` the channel the contact last used, if reachable;
3. `fallback`  SMS if reachable, else email if reachable, else SMS if the contact has a phone,
               else email. A fallback that is not reachable lets the send refuse it with the
               precise reason (opted out, no address).

Used by staff replies, link re-issues by staff, and link renewals the client asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

CHANNELS = ("sms", "email")
RouteSource = Literal["thread", "last_used", "fallback"]


class RouteContact(Protocol):
    """What the rule reads of a contact (gateway.messaging.contacts.Contact has it)."""

    @property
    def has_phone(self) -> bool: ...

    @property
    def has_email(self) -> bool: ...

    @property
    def last_channel(self) -> str | None: ...

    def opted_out(self, channel: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Route:
    channel: str  # "sms" or "email"
    source: RouteSource


def reachable(contact: RouteContact, channel: str | None) -> bool:
    """The contact has this channel's address and has not opted out of it."""
    if channel == "sms":
        return contact.has_phone and not contact.opted_out("sms")
    if channel == "email":
        return contact.has_email and not contact.opted_out("email")
    return False


def reply_route(contact: RouteContact, *, thread_channel: str | None) -> Route:
    """The channel a reply or notice to this contact goes to (precedence in the module docstring)."""
    if reachable(contact, thread_channel):
        assert thread_channel is not None
        return Route(thread_channel, "thread")
    if reachable(contact, contact.last_channel):
        assert contact.last_channel is not None
        return Route(contact.last_channel, "last_used")
    for channel in CHANNELS:
        if reachable(contact, channel):
            return Route(channel, "fallback")
    return Route("sms" if contact.has_phone else "email", "fallback")
