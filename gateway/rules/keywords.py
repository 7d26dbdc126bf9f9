"""SMS keywords: recognize a one-word STOP / START / HELP reply (Twilio's default word lists).

Twilio's default lists ("Twilio support for opt-out keywords (SMS STOP filtering)", help
article 223134027): opt-out STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT;
opt-in START, UNSTOP, YES; help HELP, INFO. Like Twilio we act only on a message that is the
keyword alone, so our consent ledger never disagrees with Twilio's block list: "stop it" or
"Please stop" is a message for staff, who can opt the contact out by hand.

Email has no carrier list: a reply whose first word is STOP or UNSUBSCRIBE opts out of email
(is_email_opt_out; issue 9).
"""

from __future__ import annotations

import enum
import unicodedata


class Keyword(enum.Enum):
    STOP = "stop"
    START = "start"
    HELP = "help"


_WORDS: dict[str, Keyword] = {
    **dict.fromkeys(
        ("stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout"),
        Keyword.STOP,
    ),
    **dict.fromkeys(("start", "unstop", "yes"), Keyword.START),
    **dict.fromkeys(("help", "info"), Keyword.HELP),
}
# Longest body still worth normalizing: the longest word plus room for punctuation and
# invisible characters. Anything longer cannot be a keyword, and the cap keeps NFKC (whose
# canonical reordering is quadratic in a run of combining marks) away from large inputs.
_MAX_BODY = 64


# A mail reply that opts out of email: its first word (after the quoted history is stripped).
EMAIL_OPT_OUT_WORDS = frozenset({"stop", "unsubscribe"})


def parse_keyword(body: str) -> Keyword | None:
    """Return the keyword family `body` consists of, or None if it is anything else.

    Case-insensitive, full-width and compatibility forms folded (NFKC + casefold), surrounding
    whitespace, invisible format characters (zero-width space, BOM) and trailing punctuation
    ("STOP.", "Stop!!") ignored.
    """
    if not isinstance(body, str):
        return None
    text = body.strip()
    if not text or len(text) > _MAX_BODY:
        return None
    return _WORDS.get(_fold(text))


def is_email_opt_out(reply_text: str) -> bool:
    """Does a mail reply's text (quoted history already stripped) begin with STOP or UNSUBSCRIBE?

    Folded as parse_keyword folds ("Stop.", "UNSUBSCRIBE!", full-width forms). Unlike SMS, the
    first word is enough ("Stop sending me these"): there is no carrier list to agree with, and
    a mail client adds signatures and greetings after it.
    """
    if not isinstance(reply_text, str):
        return False
    words = "".join(c for c in reply_text[:_MAX_BODY] if unicodedata.category(c) != "Cf").split(maxsplit=1)
    return bool(words) and _fold(words[0]) in EMAIL_OPT_OUT_WORDS


def _fold(text: str) -> str:
    """A short text folded for comparison with the keyword lists."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    # casefold can produce unnormalized text ("ﬀ" → "ff" is fine, "İ" → "i̇" is not), so
    # normalize again afterwards.
    text = unicodedata.normalize("NFKC", text.casefold()).strip()
    end = len(text)
    while end and unicodedata.category(text[end - 1]).startswith("P"):
        end -= 1
    return text[:end].rstrip()
