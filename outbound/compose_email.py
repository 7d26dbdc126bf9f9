"""Email texts for every outbox template, and the addresses and ids a mail carries.

Link notices (secure_notice, inbound_ack, link_renewal) carry the org name and the link,
nothing else: the subject is neutral and no message content can reach them (docs/security-model.md,
'Notifications carry no content').
Only the "message" template (a standard send) carries a body. Staff alerts (render_staff_alert)
go to the org's admins, not to contacts: they name the org and the staff portal page to review,
never a client, a thread, a reason typed by staff or any content. Templates live in
outbound/templates/email/; the HTML ones are autoescaped, the text ones are not.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

# The reply-address format lives in the core (gateway/messaging/reply_address.py): the SMTP
# listener parses what the senders build.
from gateway.messaging.reply_address import check_domain

SUBJECTS = {
    "secure_notice": "New secure message from {org}",
    "inbound_ack": "{org} received your reply",
    "link_renewal": "Your new secure link from {org}",
    "message": "Message from {org}",
}

# Staff alerts (gateway/messaging/alerts.py), by alert kind: subject, template, and the staff portal page
# where an admin reviews it (reached through sign-in, so the mail itself is no capability).
STAFF_ALERTS = {
    "breakglass.grant": ("Security alert: emergency access used in {org}", "breakglass_alert",
                         "/staff/settings/emergency-access"),
}

LINK_TEMPLATES = frozenset({"secure_notice", "inbound_ack", "link_renewal"})
CONTENT_TEMPLATES = frozenset({"message"})

_NAME_MAX = 80
_URL_MAX = 2000
_HIDDEN = ("Zl", "Zp")  # line and paragraph separators; "C*" (control, format...) too

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates" / "email"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def clean_org_name(name: str) -> str:
    """The org name fit for a subject line: no control, format or line-separator characters.

    CR/LF would break a header; bidi overrides (Unicode "Cf") could make a subject read as
    something else. Each becomes a space, runs of whitespace collapse to one, and an empty
    result gets a default.
    """
    kept = (
        " " if unicodedata.category(ch) in _HIDDEN or unicodedata.category(ch)[0] == "C" else ch
        for ch in unicodedata.normalize("NFC", name)
    )
    cleaned = " ".join("".join(kept).split())[:_NAME_MAX].rstrip()
    return cleaned or "Secure messages"


def render_email(
    template: str, *, org_name: str, url: str | None = None, body: str | None = None
) -> tuple[str, str, str]:
    """Return (subject, text, html) for `template`.

    Link templates need `url` and refuse `body`, so content cannot leak into a notice; the
    "message" template needs `body` and takes no link.
    """
    if template not in SUBJECTS:
        raise ValueError(f"unknown email template {template!r}")
    if template in LINK_TEMPLATES:
        if body is not None:
            raise ValueError(f"template {template} carries no content")
        if not url:
            raise ValueError(f"template {template} needs a link")
        _check_url(url)
    elif body is None:
        raise ValueError(f"template {template} needs a body")
    elif url is not None:
        raise ValueError(f"template {template} takes no link")
    org = clean_org_name(org_name)
    subject = SUBJECTS[template].format(org=org)
    context = {"org": org, "subject": subject, "url": url, "body": body}
    text = _env.get_template(f"{template}.txt").render(context)
    html = _env.get_template(f"{template}.html").render(context)
    return subject, text, html


def render_staff_alert(kind: str, *, org_name: str, public_url: str) -> tuple[str, str, str]:
    """Return (subject, text, html) of the mail that tells an admin about an alert of `kind`.

    Takes no ids and no content on purpose: the mail says what happened and where to review it.
    """
    if kind not in STAFF_ALERTS:
        raise ValueError(f"alert kind {kind!r} has no email form")
    subject_format, template, path = STAFF_ALERTS[kind]
    url = public_url.rstrip("/") + path
    _check_url(url)
    org = clean_org_name(org_name)
    subject = subject_format.format(org=org)
    context = {"org": org, "subject": subject, "url": url}
    text = _env.get_template(f"{template}.txt").render(context)
    html = _env.get_template(f"{template}.html").render(context)
    return subject, text, html


def make_message_id(domain: str, key: str | None = None) -> str:
    """An RFC 5322 Message-ID, "<128 random bits in hex@domain>" (the bits given as `key`, or new)."""
    check_domain(domain)
    if key is not None and not re.fullmatch(r"[0-9a-f]{32}", key):
        raise ValueError("not a message key")
    return f"<{key or secrets.token_hex(16)}@{domain.lower()}>"


def _check_url(url: str) -> None:
    # The link lands in an href: only web links, and nothing that could end the attribute
    # or a header line (autoescaping handles quotes, this keeps javascript: and CR/LF out).
    if len(url) > _URL_MAX or not url.startswith(("https://", "http://")):
        raise ValueError("link must be an http(s) URL")
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in url):
        raise ValueError("link must not contain spaces or control characters")
