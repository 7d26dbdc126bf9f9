"""SMS texts for every outbox template. Link-only notices carry the org name and the link, nothing else.

Every notice must fit one GSM-7 segment (160 characters): the org name is reduced to GSM-7
characters and shortened as needed; the link is never shortened.
"""

from __future__ import annotations

import unicodedata

from gateway.messaging.gsm7 import is_gsm7

SEGMENT = 160

TEMPLATES = {
    "secure_notice": "{org}: you have a new secure message. Open it here: {url}",
    "inbound_ack": "{org}: we received your reply securely. View the conversation: {url}",
    "link_renewal": "{org}: here is your new secure link: {url}",
    "help": "{org}: secure messages from your provider. Reply STOP to opt out, START to opt back in.",
    "start_confirm": "{org}: you are subscribed to messages again. Reply STOP to opt out.",
}

LINK_TEMPLATES = frozenset({"secure_notice", "inbound_ack", "link_renewal"})


def gsm7_name(name: str) -> str:
    """The org name in GSM-7: accents stripped, anything else outside the alphabet dropped."""
    out = []
    for ch in unicodedata.normalize("NFKD", name):
        if is_gsm7(ch) and ch not in "{}[]~\\|^€":  # extension chars cost two septets; skip them
            out.append(ch)
    return " ".join("".join(out).split()) or "Secure messages"


def sms_text(template: str, *, org_name: str, url: str | None = None) -> str:
    """The SMS for a content-free template, in one GSM-7 segment."""
    pattern = TEMPLATES[template]
    if template in LINK_TEMPLATES and not url:
        raise ValueError(f"template {template} needs a link")
    name = gsm7_name(org_name)
    text = pattern.format(org=name, url=url or "")
    while len(text) > SEGMENT and len(name) > 4:  # "abc." is as short as it gets (> 3 looped forever)
        name = name[: max(3, len(name) - (len(text) - SEGMENT) - 1)].rstrip() + "."
        text = pattern.format(org=name, url=url or "")
    if len(text) > SEGMENT:
        raise ValueError("the link is too long for one SMS segment")
    return text
