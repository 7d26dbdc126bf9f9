"""Reply extraction: cut quoted history and signatures from the text of an email reply.

The scan is line by line and every look-ahead is bounded (at most a few lines, at most
``_SCAN_CHARS`` characters of a line), so the work is linear in the input; there are no regular
expressions at all. Rules, in the order a line meets them:

* ``>``-quoted lines are dropped wherever they are (inline replies keep the text between them).
* ``--`` alone on a line starts the signature (RFC 3676 section 4.3): everything after is cut.
* Separators cut the rest: ``-----Original Message-----`` and its localized and "Forwarded"
  variants, Apple's "Begin forwarded message:", and lines of underscores (Outlook's
  ``________________________________``, mailing-list footers, and the marker html_text emits
  for Gmail/Outlook quote containers).
* An Outlook header block (From:/Sent:/To:/Subject:, bold or not, localized) cuts the rest,
  together with a dash or underscore rule just above it.
* An attribution ("On <date>, <name> wrote:", wrapped over up to three lines, and its
  German/Danish/Swedish/Dutch/Polish/French/Spanish/Japanese variants) is dropped with the
  quote it introduces. When it follows the reply after a blank line (top-posting) the rest is
  cut; when it comes first, or straight after a greeting line, the text after the quote is
  kept (bottom-posting and inline replies). Without a quote after it, an attribution counts
  only when unmistakable (known verb, an address or opening word, a date or address), since
  the rest of the mail is then cut.
* A separator, header block or attribution before any reply text is skipped rather than cut,
  so a message that is only a pasted or forwarded mail keeps its body.
* Trailing mobile signatures ("Sent from my iPhone", "Get Outlook for iOS", ...) and a short
  ``-Name`` sign-off line are trimmed. Valedictions ("Regards,\\nJan") are the sender's own
  words and are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["extract_reply"]

# Only this much of a line is looked at when classifying it; longer lines are still kept whole.
_SCAN_CHARS = 1000
# An attribution is at most this many lines and characters.
_ATTRIBUTION_LINES = 3
_ATTRIBUTION_CHARS = 500
# A header block is looked for in this many lines after its From: line.
_HEADER_WINDOW = 5

_INVISIBLE = "\ufeff\u200b\u200c\u200d\u2060"

# Verbs that end an attribution ("..., Alice <a@example.com> wrote:").
_END_VERBS = (
    "wrote",
    "schrieb",
    "schreef",
    "skrev",
    "napisał",
    "napisała",
    "napisał(a)",
    "pisze",
    "a écrit",
    "escribió",
    "ha scritto",
    "escreveu",
    "kirjoitti",
    "のメッセージ",
    "が書きました",
    "написал",
    "написала",
)
# Verbs that sit between the date and the name ("Am <date> schrieb Alice <a@example.com>:").
_MID_VERBS = (" schrieb ", " skrev ", " schreef ", " napisał ", " napisała ", " escribió ")
# Words an attribution starts with, lowercased.
_ATTRIBUTION_PREFIXES = ("on ", "am ", "den ", "op ", "le ", "el ", "dnia ", "w dniu ", "em ", "il ")

_FROM_KEYS = frozenset({"from", "von", "fra", "van", "från", "od", "de", "da", "lähettäjä", "от"})
_HEADER_KEYS = frozenset(
    {
        # English
        "sent", "date", "to", "cc", "bcc", "subject", "reply-to",
        # German
        "gesendet", "datum", "an", "betreff", "kopie",
        # Danish / Norwegian
        "sendt", "dato", "til", "emne", "kopi",
        # Dutch
        "verzonden", "aan", "onderwerp",
        # Swedish
        "skickat", "till", "ämne", "kopia",
        # Polish
        "wysłano", "data", "do", "temat", "dw",
        # French
        "envoyé", "à", "objet",
        # Spanish / Italian / Portuguese
        "enviado", "fecha", "para", "asunto", "inviato", "oggetto", "a", "assunto",
    }
)

_SEPARATOR_PHRASES = frozenset(
    {
        "original message",
        "forwarded message",
        "original nachricht",
        "ursprüngliche nachricht",
        "weitergeleitete nachricht",
        "oprindelig meddelelse",
        "videresendt meddelelse",
        "videresendt besked",
        "opprinnelig melding",
        "oorspronkelijk bericht",
        "doorgestuurd bericht",
        "ursprungligt meddelande",
        "vidarebefordrat meddelande",
        "wiadomość oryginalna",
        "oryginalna wiadomość",
        "przekazana wiadomość",
        "message d'origine",
        "message transféré",
        "mensaje original",
        "mensaje reenviado",
        "messaggio originale",
        "messaggio inoltrato",
        "mensagem original",
        "mensagem encaminhada",
    }
)
_FORWARD_INTROS = frozenset(
    {
        "begin forwarded message",
        "anfang der weitergeleiteten nachricht",
        "début du message réexpédié",
        "début du message transféré",
        "inicio del mensaje reenviado",
        "begin doorgestuurd bericht",
        "videresendt meddelelse",
        "vidarebefordrat brev",
    }
)

# Mobile and webmail signatures: (lowercased prefix, most words allowed in the whole line).
_MOBILE_SIGNATURES = (
    ("sent from outlook", 8),
    ("get outlook for ", 6),
    ("sent from yahoo mail", 8),
    ("sent from mail for windows", 8),
    ("sent from samsung", 6),
    ("sent from the all new aol app", 10),
    ("sent from aol mobile mail", 8),
    ("sent with proton mail", 8),
    ("sent with protonmail", 8),
    ("sent via ", 6),
    ("von meinem ", 6),
    ("envoyé de mon ", 6),
    ("enviado desde mi ", 6),
    ("enviado do meu ", 6),
    ("verstuurd vanaf mijn ", 6),
    ("sendt fra min ", 6),
    ("skickat från min ", 6),
    ("wysłane z ", 6),
    ("inviato da ", 6),
    ("iphoneから送信", 2),
)


@dataclass(slots=True)
class _Extraction:
    text: str
    steps: int  # line inspections, so tests can check the scan stays linear without timing it


def extract_reply(text: str) -> str:
    """Return the reply's own text: quoted history, forwarded headers and signatures removed."""
    try:
        return _extract(text).text
    except Exception:  # the contract is "never raise"; a bug here must not drop the mail
        return text.strip() if isinstance(text, str) else ""


def _extract(text: str) -> _Extraction:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    scanner = _Scanner(lines)
    kept = scanner.run()
    scanner.steps += _trim_signature(kept)
    first = 0
    while first < len(kept) and not kept[first].strip():
        first += 1
    return _Extraction("\n".join(kept[first:]).rstrip(), scanner.steps)


class _Scanner:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.view = [_normalise(line[:_SCAN_CHARS]) for line in lines]
        self.steps = len(lines)
        # next_nonblank[i]: the first non-blank line at or after i (len(lines) if none).
        n = len(lines)
        nxt = [n] * (n + 1)
        for i in range(n - 1, -1, -1):
            nxt[i] = i if self.view[i] else nxt[i + 1]
        self.next_nonblank = nxt
        self._starts = [-2] * n  # memo of _best_start; -2: not worked out yet

    def run(self) -> list[str]:
        lines, view = self.lines, self.view
        n = len(lines)
        kept: list[str] = []
        has_text = False
        dropped = False
        i = 0
        while i < n:
            self.steps += 1
            s = view[i]
            if not s:
                # One blank line where a quote was dropped, not the blank lines on both sides.
                if not (dropped and kept and not kept[-1]):
                    kept.append("")
                i += 1
                continue
            if s[0] == ">":
                dropped = True
                i += 1
                continue
            if s == "--":
                break
            if _is_separator(s):
                if has_text:
                    break
                i += 1
                continue
            block_end = self._header_block_end(i)
            if block_end >= 0:
                if has_text:
                    _drop_rule_above(kept)
                    break
                # Nothing above it: the mail's own pasted header. Skip to the blank line after it.
                i = block_end
                while i < n and view[i] and i < block_end + _HEADER_WINDOW:
                    self.steps += 1
                    i += 1
                continue
            attribution_end = self._attribution_at(i)
            if attribution_end >= 0:
                after = self.next_nonblank[attribution_end + 1]
                if after < n and view[after][0] == ">":
                    if has_text and not view[i - 1]:  # top-posted: the rest is history
                        break
                    dropped = True
                    i = attribution_end + 1
                    continue
                if self._strong_attribution(i, attribution_end):
                    if has_text:
                        break
                    dropped = True
                    i = attribution_end + 1
                    continue
            kept.append(lines[i].rstrip())
            has_text = True
            dropped = False
            i += 1
        return kept

    def _header_block_end(self, i: int) -> int:
        """Return the index after an Outlook header block starting at line i, or -1."""
        if _header_key(self.view[i]) not in _FROM_KEYS:
            return -1
        keys = 0
        j = i + 1
        limit = min(len(self.view), i + 1 + _HEADER_WINDOW)
        while j < limit and self.view[j]:
            self.steps += 1
            if _header_key(self.view[j]) in _HEADER_KEYS:
                keys += 1
            j += 1
        if keys < 2:
            return -1
        return j

    def _attribution_at(self, i: int) -> int:
        """Return the last line of an attribution starting at line i, or -1."""
        view = self.view
        for end in range(i, min(len(view), i + _ATTRIBUTION_LINES)):
            self.steps += 1
            s = view[end]
            if not s or s[0] == ">":
                return -1
            if (s[-1] == ":" or s[-1] == "：") and self._best_start(end) == i:
                return end
        return -1

    def _best_start(self, end: int) -> int:
        """Pick where the attribution ending at line ``end`` starts: prefer one opening with a
        known word ("On", "Am", ...), else the shortest; -1 if none matches."""
        if self._starts[end] == -2:
            self._starts[end] = self._work_out_start(end)
        return self._starts[end]

    def _work_out_start(self, end: int) -> int:
        shortest = -1
        for start in range(end, max(-1, end - _ATTRIBUTION_LINES), -1):
            self.steps += 1
            s = self.view[start]
            if not s or s[0] == ">":
                break
            joined = self._joined(start, end)
            if joined is None or not _attribution_kind(joined):
                continue
            if joined.lower().startswith(_ATTRIBUTION_PREFIXES):
                return start
            if shortest < 0:
                shortest = start
        return shortest

    def _joined(self, start: int, end: int) -> str | None:
        parts: list[str] = []
        size = 0
        for k in range(start, end + 1):
            s = self.view[k]
            size += len(s) + 1
            if size > _ATTRIBUTION_CHARS:
                return None
            # A quoted-printable soft break left in the text ("w=" / "rote:") joins without a space.
            if parts and parts[-1].endswith("="):
                parts[-1] = parts[-1][:-1] + s
            else:
                parts.append(s)
        return " ".join(parts)

    def _strong_attribution(self, start: int, end: int) -> bool:
        joined = self._joined(start, end)
        return joined is not None and _attribution_kind(joined) == "strong"


def _normalise(line: str) -> str:
    return line.strip().strip(_INVISIBLE).strip()


def _attribution_kind(joined: str) -> str | None:
    """Classify a candidate attribution: "strong" (stands on its own), "weak" (only when a
    quote follows) or None."""
    core = joined.rstrip()[:-1].rstrip()
    low = core.lower()
    has_at = "@" in core
    has_digit = any(c.isdigit() for c in core)
    prefixed = low.startswith(_ATTRIBUTION_PREFIXES)
    verb = low.endswith(_END_VERBS) or (
        any(v in low for v in _MID_VERBS) and (core.endswith(">") or prefixed)
    )
    if verb and (prefixed or has_at) and (has_digit or has_at):
        return "strong"
    if verb or (core.endswith(">") and has_at and has_digit):
        # Gmail's Japanese attribution has no verb: "2022年1月1日(金) 9:00 田中太郎 <t@example.com>:".
        return "weak"
    return None


def _header_key(s: str) -> str:
    """Return the lowercased key of a "Key: value" line ("*From:* x" counts), or ""."""
    colon = s.find(":", 0, 40)
    if colon <= 0:
        return ""
    return s[:colon].strip("* \t").lower()


def _is_separator(s: str) -> bool:
    if len(s) >= 5 and s.strip("_") == "":
        return True
    first = s[0]
    if first in "-=_*" or s.endswith(":"):
        core = s.strip("-=_* \t:").lower()
        if first in "-=_" and core in _SEPARATOR_PHRASES:
            return True
        if s.endswith(":") and core in _FORWARD_INTROS:
            return True
    return False


def _is_rule(s: str) -> bool:
    return len(s) >= 5 and (s.strip("-") == "" or s.strip("_") == "")


def _drop_rule_above(kept: list[str]) -> None:
    """Remove blank lines and one dash or underscore rule left above a header block."""
    while kept and not kept[-1].strip():
        kept.pop()
    if kept and _is_rule(_normalise(kept[-1])):
        kept.pop()


def _trim_signature(kept: list[str]) -> int:
    """Drop trailing blank lines, then one mobile signature, then one "-Name" sign-off (unless
    it ends a list of such lines); return the number of lines looked at."""
    looked = _drop_trailing_blanks(kept)
    if kept and _is_mobile_signature(_normalise(kept[-1][:_SCAN_CHARS])):
        kept.pop()
        looked += _drop_trailing_blanks(kept)
    if kept and _is_dash_signoff(_normalise(kept[-1][:_SCAN_CHARS])):
        above = len(kept) - 2
        while above >= 0 and not kept[above].strip():
            above -= 1
            looked += 1
        if above < 0 or not kept[above].lstrip().startswith("-"):
            kept.pop()
            looked += _drop_trailing_blanks(kept)
    return looked


def _drop_trailing_blanks(kept: list[str]) -> int:
    dropped = 0
    while kept and not _normalise(kept[-1][:_SCAN_CHARS]):
        kept.pop()
        dropped += 1
    return dropped + 1


def _is_mobile_signature(s: str) -> bool:
    if s.endswith(">") and "<" in s:  # "Get Outlook for iOS<https://aka.ms/o0ukef>"
        s = s[: s.rfind("<")].rstrip()
    low = s.lower().rstrip(".!")
    words = low.split()
    if low.startswith("sent from my "):
        # "Sent from my Verizon Wireless BlackBerry", but not "Sent from my desk, is much easier".
        device = words[3:]
        return 1 <= len(device) <= 4 and all(
            w.replace("-", "").replace("'", "").replace("&", "").isalnum() for w in device
        )
    for prefix, most_words in _MOBILE_SIGNATURES:
        if low.startswith(prefix):
            return len(words) <= most_words and "," not in low and ";" not in low
    return False


def _is_dash_signoff(s: str) -> bool:
    """A short "-Abhishek Kona" line at the end: a sign-off, not a list item ("- item")."""
    return (
        len(s) >= 2
        and s[0] == "-"
        and s[1].isalpha()
        and len(s) <= 40
        and len(s.split()) <= 4
        and ":" not in s
    )
