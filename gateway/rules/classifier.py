"""Sensitive-content classifier: does a text carry identifiers that must not go out in the clear.

Kinds reported (docs/security-model.md, 'Notifications carry no content'): "ssn", "card",
"date_of_birth", "record_number", "term". The
classifier only ever makes a standard send safer (it forces the secure path or a warning), so
where a rule is ambiguous it leans towards flagging.

Every pattern is linear in the input: no nested unbounded quantifiers, bounded gaps between
context words and values, and unbounded runs only where each run is entered once (anchored by a
look-behind). Unicode is folded one character at a time (NFKD, marks and format characters
dropped, casefolded, any decimal digit made ASCII, dashes and minus signs made "-", space
separators made " "), because whole-string NFKC is quadratic on a
long run of combining marks, and because full-width digits or a zero-width space must not hide
an SSN.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Sequence
from datetime import date
from functools import lru_cache

SSN = "ssn"
CARD = "card"
DATE_OF_BIRTH = "date_of_birth"
RECORD_NUMBER = "record_number"
TERM = "term"

# A starting point an org can copy into its policy; never applied unless passed in.
CLINICAL_TERMS: tuple[str, ...] = (
    "HIV",
    "AIDS",
    "hepatitis",
    "chemotherapy",
    "oncology",
    "cancer",
    "biopsy",
    "pregnancy",
    "abortion",
    "miscarriage",
    "STD",
    "STI",
    "chlamydia",
    "gonorrhea",
    "syphilis",
    "herpes",
    "psychiatric",
    "psychiatry",
    "depression",
    "schizophrenia",
    "bipolar",
    "suicide",
    "rehab",
    "methadone",
    "buprenorphine",
    "substance use",
    "dialysis",
)


# --- Unicode folding ---------------------------------------------------------------------------


# Separators a writer (or a word processor) puts between digit groups in place of "-" and " ":
# every dash (Unicode category Pd: U+2010 hyphen, U+2012 figure dash, en and em dash, ...) and the
# minus sign U+2212 count as "-", every space separator (Zs: NBSP, U+2007 figure space, U+202F,
# thin space, ...) as " ", so "123–45–6789" or an SSN spaced with NBSP is still found.
_MINUS_SIGNS = frozenset("\u2212\u2796\ufe63\uff0d")


def _fold_char(c: str) -> str:
    out = []
    for d in unicodedata.normalize("NFKD", c):
        cat = unicodedata.category(d)
        if cat in ("Mn", "Me", "Cf"):
            continue  # accents, enclosing marks, zero-width and bidi controls
        if cat == "Nd" and not d.isascii():
            d = str(unicodedata.decimal(d))  # "٣" or "३" → "3"
        elif cat == "Pd" or d in _MINUS_SIGNS:
            d = "-"
        elif cat == "Zs":
            d = " "
        out.append(d)
    return "".join(out).casefold()


class _FoldTable(dict[int, str]):
    """A str.translate table filled on demand; bounded so odd inputs cannot grow it forever."""

    _LIMIT = 1 << 16

    def __missing__(self, code: int) -> str:
        folded = _fold_char(chr(code))
        if len(self) < self._LIMIT:
            self[code] = folded
        return folded


_FOLD = _FoldTable()


def _fold(text: str) -> str:
    if text.isascii():
        return text.lower()
    return text.translate(_FOLD)


# --- SSN -------------------------------------------------------------------------------------

# SSA: area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
_SSN_FORMATTED = re.compile(r"(?<![0-9])([0-9]{3})[ .\-]([0-9]{2})[ .\-]([0-9]{4})(?![0-9])")
# Nine bare digits are too common (order numbers, ZIP+4) unless the text says it is an SSN.
_SSN_CONTEXT = re.compile(
    r"(?<![a-z])(?:ssns?|ss\#|social\s{1,3}security(?:\s{1,3}(?:number|num|no))?)(?![a-z])"
    r"[^0-9]{0,24}(?<![0-9])([0-9]{9})(?![0-9])"
)


def _valid_ssn(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _has_ssn(text: str) -> bool:
    for m in _SSN_FORMATTED.finditer(text):
        if _valid_ssn(m[1], m[2], m[3]):
            return True
    for m in _SSN_CONTEXT.finditer(text):
        d = m[1]
        if _valid_ssn(d[:3], d[3:5], d[5:]):
            return True
    return False


# --- Payment cards ---------------------------------------------------------------------------

# A maximal run of digit groups joined by single spaces or dashes. Candidates are the windows of
# whole groups holding 13-19 digits, so "4111 1111 1111 1111 12" still finds the card.
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]+(?:[ \-][0-9]+)*")
_GROUP_SEP = re.compile(r"[ \-]")
_LUHN_DOUBLE = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _has_card_in_run(run: str) -> bool:
    groups = _GROUP_SEP.split(run)
    digits = "".join(groups)
    n = len(digits)
    if n < 13:
        return False
    # Luhn doubles every second digit counting from the right end of the window. With prefix
    # sums for "double the even positions" and "double the odd positions", each window's checksum
    # is one subtraction, so a long run costs O(length), not O(length x 19).
    even = [0] * (n + 1)
    odd = [0] * (n + 1)
    for i, ch in enumerate(digits):
        v = ord(ch) - 48
        even[i + 1] = even[i] + (_LUHN_DOUBLE[v] if i % 2 == 0 else v)
        odd[i + 1] = odd[i] + (v if i % 2 == 0 else _LUHN_DOUBLE[v])
    bounds = [0]
    for g in groups:
        bounds.append(bounds[-1] + len(g))
    for i, start in enumerate(bounds[:-1]):
        if digits[start] == "0":
            continue  # no card scheme issues numbers starting with 0 (ISO/IEC 7812 MII 0)
        j = bisect.bisect_left(bounds, start + 13, i + 1)
        while j < len(bounds) and bounds[j] - start <= 19:
            end = bounds[j]
            # The rightmost digit (end - 1) is never doubled; its neighbours alternate.
            sums = even if end % 2 == 0 else odd
            if (sums[end] - sums[start]) % 10 == 0:
                return True
            j += 1
    return False


def _has_card(text: str) -> bool:
    return any(_has_card_in_run(m[0]) for m in _DIGIT_RUN.finditer(text))


# --- Dates of birth --------------------------------------------------------------------------

_MONTHS = {
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4, "apr": 4,
    "may": 5, "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8,
    "september": 9, "sept": 9, "sep": 9, "october": 10, "oct": 10, "november": 11, "nov": 11,
    "december": 12, "dec": 12,
}  # fmt: skip
_MONTH = "(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + ")"
_ORD = r"(?:st|nd|rd|th)?"
_GAP = r"[\s.,/\-]{0,3}"
_YEAR = r"([0-9]{4}|'?[0-9]{2})"

# The same separator twice ("04/12/1987", "12.04.87"); group numbers are read in _is_birth_date.
_NUMERIC_DATE = re.compile(
    r"(?<![0-9])([0-9]{1,2})([/.\-])([0-9]{1,2})\2([0-9]{4}|[0-9]{2})(?![0-9])"
)
_ISO_DATE = re.compile(r"(?<![0-9])([0-9]{4})([/.\-])([0-9]{1,2})\2([0-9]{1,2})(?![0-9])")
_DAY_MONTH_YEAR = re.compile(
    rf"(?<![0-9])([0-9]{{1,2}}){_ORD}{_GAP}(?:of\s{{1,3}})?(?<![a-z])({_MONTH})(?![a-z])"
    rf"{_GAP}{_YEAR}(?![0-9])"
)
_MONTH_DAY_YEAR = re.compile(
    rf"(?<![a-z])({_MONTH})(?![a-z]){_GAP}([0-9]{{1,2}}){_ORD}(?![0-9]){_GAP}{_YEAR}(?![0-9])"
)
_DOB_WORDS = re.compile(
    r"(?<![a-z])(?:dob|d\.\s?o\.\s?b|date\s{1,3}of\s{1,3}birth|birth\s{0,3}date|birthdays?|bday"
    r"|b-day|born)(?![a-z])"
)
# How far (in characters) a DOB word may stand from the date: "DOB: 04/12/1987",
# "born on the 12th of April 1987", "1987-04-12 (date of birth)".
_DOB_REACH = 40


def _full_year(text: str, today: date) -> int:
    digits = text.lstrip("'")
    year = int(digits)
    if len(digits) == 2:  # "87" → 1987, "05" → 2005: the most recent such year not in the future
        year += 2000 if 2000 + year <= today.year else 1900
    return year


def _plausible_birth(year: int, month: int, day: int, today: date) -> bool:
    if year < 1900:
        return False
    try:
        return date(year, month, day) <= today
    except ValueError:
        return False


def _is_birth_date(m: re.Match[str], today: date) -> bool:
    if m.re is _NUMERIC_DATE:
        a, b, year = int(m[1]), int(m[3]), _full_year(m[4], today)
        # 04/12/1987 is April 12 in the US and 4 December elsewhere: either will do.
        return _plausible_birth(year, a, b, today) or _plausible_birth(year, b, a, today)
    if m.re is _ISO_DATE:
        return _plausible_birth(int(m[1]), int(m[3]), int(m[4]), today)
    if m.re is _DAY_MONTH_YEAR:
        return _plausible_birth(_full_year(m[3], today), _MONTHS[m[2]], int(m[1]), today)
    return _plausible_birth(_full_year(m[3], today), _MONTHS[m[1]], int(m[2]), today)


def _has_dob(text: str, today: date) -> bool:
    words = [(m.start(), m.end()) for m in _DOB_WORDS.finditer(text)]
    if not words:
        return False
    word_ends = [end for _, end in words]
    for pattern in (_NUMERIC_DATE, _ISO_DATE, _DAY_MONTH_YEAR, _MONTH_DAY_YEAR):
        for m in pattern.finditer(text):
            # The first DOB word ending no further than _DOB_REACH before the date; it counts if
            # it also starts no further than _DOB_REACH after it. Words never overlap, so their
            # ends are sorted and this one is the closest candidate.
            k = bisect.bisect_left(word_ends, m.start() - _DOB_REACH)
            if k < len(words) and words[k][0] <= m.end() + _DOB_REACH and _is_birth_date(m, today):
                return True
    return False


# --- Record numbers --------------------------------------------------------------------------

_RECORD = re.compile(
    r"(?<![a-z])(?:mrn|medical\s{1,3}records?(?:\s{1,3}(?:number|num|no))?"
    r"|patient\s{1,3}(?:identifier|number|num|id|no)|account\s{1,3}(?:number|num|no|id)"
    r"|acct(?:\s{0,3}(?:number|num|no))?)(?![a-z])"
    r"[\s.:#=\-]{0,6}(?:is\s{1,3})?([a-z0-9][a-z0-9\-]{0,40})"
)


def _has_record_number(text: str) -> bool:
    for m in _RECORD.finditer(text):
        ident = m[1].replace("-", "")
        # Five or more characters with at least one digit: "MRN 00123456", "acct# AB-12345";
        # not "patient number below" or "account number pending".
        if len(ident) >= 5 and any(c.isdigit() for c in ident):
            return True
    return False


# --- Org terms -------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _terms_pattern(terms: tuple[str, ...]) -> re.Pattern[str] | None:
    parts = set()
    for term in terms:
        words = _fold(term).split()
        if words:
            parts.add(r"\s+".join(re.escape(w) for w in words))
    if not parts:
        return None
    alternatives = "|".join(sorted(parts, key=lambda p: (-len(p), p)))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def _has_term(text: str, terms: tuple[str, ...]) -> bool:
    pattern = _terms_pattern(terms)
    return pattern is not None and pattern.search(text) is not None


# --- Public API ------------------------------------------------------------------------------


def find_sensitive(
    text: str, extra_terms: Sequence[str] = (), *, today: date | None = None
) -> list[str]:
    """Return the sorted kinds of sensitive content in `text` ([] if none).

    `extra_terms` are the org's words and phrases (whole-word, case-insensitive); `today` bounds
    dates of birth (a date in the future is an appointment, not a birthday).
    """
    if not isinstance(text, str):
        text = str(text)
    folded = _fold(text)
    if isinstance(extra_terms, str):
        extra_terms = (extra_terms,)  # one term, not a sequence of one-letter terms
    terms = tuple(t for t in extra_terms if isinstance(t, str)) if extra_terms else ()
    kinds = []
    if _has_card(folded):
        kinds.append(CARD)
    if _has_dob(folded, today or date.today()):
        kinds.append(DATE_OF_BIRTH)
    if _has_record_number(folded):
        kinds.append(RECORD_NUMBER)
    if _has_ssn(folded):
        kinds.append(SSN)
    if terms and _has_term(folded, terms):
        kinds.append(TERM)
    return kinds


def is_sensitive(
    text: str, extra_terms: Sequence[str] = (), *, today: date | None = None
) -> bool:
    """Return True if `text` carries any kind of sensitive content (see find_sensitive)."""
    return bool(find_sensitive(text, extra_terms, today=today))
