"""May we send this to this contact: the one place that decides (consent, opt-out, PIN policy).

Checked in this order, the first refusal wins:

1. `opted_out`     the contact opted out of the channel (carrier rules, TCPA): nothing more on it;
2. `no_consent`    the purpose needs consent the contact has not given. Transactional messages
                   (about the contact's own care or case) need none; marketing (later) needs an
                   explicit opt-in on the channel;
3. `pin_required`  a secure message, under an org policy that requires a PIN, for a contact with
                   no PIN to ask for (gateway/rules/pin.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.rules.pin import PinDecision

Purpose = Literal["transactional", "marketing"]
DenyReason = Literal["opted_out", "no_consent", "pin_required"]
OPTED_IN = "opted_in"


class ConsentContact(Protocol):
    """What the rule reads of a contact (gateway.messaging.contacts.Contact has it)."""

    @property
    def consent(self) -> dict[str, Any]: ...

    def opted_out(self, channel: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class SendPermission:
    allowed: bool
    reason: DenyReason | None = None  # why not, when refused


ALLOWED = SendPermission(True)


def may_send(contact: ConsentContact, *, channel: str, secure: bool, pin: PinDecision | None,
             purpose: Purpose = "transactional") -> SendPermission:
    """Whether a message may go to the contact on the channel (reasons in the module docstring).

    `pin` may be None for a standard message (no link, so no PIN to decide).
    """
    if contact.opted_out(channel):
        return SendPermission(False, "opted_out")
    if purpose == "marketing" and (contact.consent.get(channel) or {}).get("state") != OPTED_IN:
        return SendPermission(False, "no_consent")
    if secure and pin is not None and pin.missing:
        return SendPermission(False, "pin_required")
    return ALLOWED
