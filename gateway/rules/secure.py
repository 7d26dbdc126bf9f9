"""Secure or standard: the one place that decides, and says where the decision came from.

Precedence, outbound (first that applies wins):

1. `org_forced`    the org's "always secure" policy (secure_forced): nothing can send standard;
2. `thread`        the thread is secure already: a secure conversation never drops to plain text;
3. `message`       the sender's explicit choice (API `secure`, the staff checkbox);
4. `campaign_step` a campaign step's setting (not used yet: always None today);
5. `template`      a template's setting (not used yet: always None today);
6. `org_default`   the org's secure_default.

Inbound: the org's always-secure policy, else a secure thread, else content that looks sensitive
(`sensitive_reply`, which makes the thread secure from then on), else standard (`thread`: a
reply follows its thread).

The decision is stored on every message as `secure_source` and shown to staff and in the API.
The standard-send content check lives here too: a standard message whose text looks sensitive
is refused unless the sender confirmed it (`allow_sensitive`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.errors import SensitiveContent
from gateway.rules.classifier import find_sensitive

SecureSource = Literal["org_default", "org_forced", "template", "campaign_step", "message", "thread",
                       "sensitive_reply"]
SECURE_SOURCES: tuple[SecureSource, ...] = ("org_default", "org_forced", "template", "campaign_step", "message",
                                            "thread", "sensitive_reply")


class SecurePolicy(Protocol):
    """The org policy fields the decision reads (gateway.tenancy.orgs.OrgPolicy has them)."""

    @property
    def secure_default(self) -> bool: ...

    @property
    def secure_forced(self) -> bool: ...

    @property
    def sensitive_terms(self) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class SecureDecision:
    secure: bool
    source: SecureSource


def decide_outbound(
    policy: SecurePolicy, *, message: bool | None, thread_secure: bool,
    template: bool | None = None, campaign_step: bool | None = None,
) -> SecureDecision:
    """Secure or standard for an outgoing message (precedence in the module docstring)."""
    if policy.secure_forced:
        return SecureDecision(True, "org_forced")
    if thread_secure:
        return SecureDecision(True, "thread")
    if message is not None:
        return SecureDecision(bool(message), "message")
    if campaign_step is not None:
        return SecureDecision(bool(campaign_step), "campaign_step")
    if template is not None:
        return SecureDecision(bool(template), "template")
    return SecureDecision(bool(policy.secure_default), "org_default")


def decide_inbound(policy: SecurePolicy, *, thread_secure: bool, sensitive: bool) -> SecureDecision:
    """Secure or standard for a reply the contact sent (SMS, email or the portal)."""
    if policy.secure_forced:
        return SecureDecision(True, "org_forced")
    if thread_secure:
        return SecureDecision(True, "thread")
    if sensitive:
        return SecureDecision(True, "sensitive_reply")
    return SecureDecision(False, "thread")


def sensitive_kinds(text: str, policy: SecurePolicy) -> list[str]:
    """The kinds of sensitive content in a text, by the org's terms ([] if none)."""
    return find_sensitive(text, policy.sensitive_terms)


def check_standard_content(text: str, decision: SecureDecision, policy: SecurePolicy, *,
                           allow_sensitive: bool) -> None:
    """Refuse a standard message whose text looks sensitive, unless the sender confirmed it.

    Raises SensitiveContent (with the kinds found); a secure message is never checked, as its
    text travels sealed.
    """
    if decision.secure or allow_sensitive:
        return
    kinds = sensitive_kinds(text, policy)
    if kinds:
        raise SensitiveContent(kinds)


# What staff read on the timeline, per (secure, source).
_LABELS: dict[SecureSource, str] = {
    "org_default": "organization default", "org_forced": "always-secure policy", "template": "set by the template",
    "campaign_step": "set by the campaign step", "message": "chosen by sender", "thread": "thread is secure",
    "sensitive_reply": "sensitive content in reply",
}


def describe(secure: bool, source: str | None) -> str | None:
    """Plain words for a stored decision ("secure: organization default"); None for messages
    stored before the source was recorded."""
    if source not in _LABELS:
        return None
    if source == "thread" and not secure:
        return "standard: thread is standard"
    return f"{'secure' if secure else 'standard'}: {_LABELS[source]}"
