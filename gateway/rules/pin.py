"""Which PIN a link asks for: the one place that decides (docs/security-model.md, links and PINs).

Precedence (first that is set wins):

1. `thread`  a per-message PIN: given with the message being sent (API `pin`), or given with an
             earlier message of the thread, or set by staff for the thread. It guards the whole
             thread, since every later link to it (a renewal, the answer to a texted reply) opens
             the same content;
2. `contact` the contact's own PIN (set by staff on the contact);
3. `none`    no PIN: the link opens with the token alone, unless the org requires a PIN
             (`pin_required`), in which case a secure send is refused (gateway/rules/may_send.py).

Only a PIN given with the message is written on its link (`link_pin_hash`): a thread or contact
PIN is looked up when the link is opened, so staff rotating or clearing it reaches every link
already sent (a leaked PIN can be replaced; NIST 800-63B 5.1.1.2 on changing a compromised
secret).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PinSource = Literal["thread", "contact", "none"]


@dataclass(frozen=True, slots=True)
class PinDecision:
    source: PinSource
    pin_hash: str | None  # the hash the link asks for (None: no PIN)
    required: bool  # the org requires a PIN on every secure link
    link_pin_hash: str | None  # what to write on the new link (a PIN given with this message only)

    @property
    def missing(self) -> bool:
        """The org requires a PIN and there is none to ask for."""
        return self.required and self.source == "none"


def pin_for_link(*, given_pin_hash: str | None, thread_pin_hash: str | None, contact_pin_hash: str | None,
                 pin_required: bool) -> PinDecision:
    """The PIN the next link of a thread asks for, and where it comes from."""
    if given_pin_hash:
        return PinDecision("thread", given_pin_hash, pin_required, given_pin_hash)
    if thread_pin_hash:
        return PinDecision("thread", thread_pin_hash, pin_required, None)
    if contact_pin_hash:
        return PinDecision("contact", contact_pin_hash, pin_required, None)
    return PinDecision("none", None, pin_required, None)
