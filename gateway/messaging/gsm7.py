"""SMS encoding arithmetic: does a text fit GSM-7, and how many segments will it cost.

GSM 03.38 (3GPP TS 23.038 §6.2.1) defines the 7-bit default alphabet and its extension table;
an extension character is sent as ESC + char, so it costs two septets. Texts with any other
character go out as UCS-2 (UTF-16 code units). Concatenated SMS lose room to the user data
header (3GPP TS 23.040 §9.2.3.24.1): 160 → 153 septets, 70 → 67 code units per part.
"""

from __future__ import annotations

# 3GPP TS 23.038 Figure 6.2.1.1, in code-point order 0x00-0x7F, minus 0x1B (ESC: it introduces
# an extension character and is not text itself).
_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ" "ÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# 3GPP TS 23.038 Figure 6.2.1.2 (default extension table): form feed, ^ { } \ [ ~ ] | €.
_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE = 160
GSM7_PART = 153
UCS2_SINGLE = 70
UCS2_PART = 67


def is_gsm7(text: str) -> bool:
    """Return True if every character of `text` is in the GSM-7 alphabet or its extension table."""
    return all(c in _BASIC or c in _EXTENSION for c in text)


def gsm7_septets(text: str) -> int:
    """Return the septets GSM-7 `text` needs (extension characters count 2)."""
    return sum(2 if c in _EXTENSION else 1 for c in text)


def sms_segments(text: str) -> int:
    """Return how many SMS segments `text` is sent as (0 for the empty text).

    A character is never split across parts: an ESC pair (GSM-7) or a surrogate pair (UCS-2)
    that would straddle a boundary moves whole to the next part, as handsets and Twilio do.
    """
    if not text:
        return 0
    if is_gsm7(text):
        widths = [2 if c in _EXTENSION else 1 for c in text]
        single, part = GSM7_SINGLE, GSM7_PART
    else:
        # UTF-16 code units: astral characters (most emoji) take a surrogate pair.
        widths = [2 if ord(c) > 0xFFFF else 1 for c in text]
        single, part = UCS2_SINGLE, UCS2_PART
    if sum(widths) <= single:
        return 1
    segments, used = 1, 0
    for width in widths:
        if used + width > part:
            segments += 1
            used = 0
        used += width
    return segments
