"""GSM-7 detection and SMS segment counting (what a notification will cost, and whether it fits)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.messaging.gsm7 import gsm7_septets, is_gsm7, sms_segments
from gateway.security.tokens import new_token

BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXTENSION = "\f^{}\\[~]|€"


def test_whole_basic_alphabet_and_extension_table_are_gsm7() -> None:
    assert len(BASIC) == 127  # 128 code points minus ESC
    assert is_gsm7(BASIC)
    assert is_gsm7(EXTENSION)
    assert gsm7_septets(BASIC) == 127
    assert gsm7_septets(EXTENSION) == 2 * len(EXTENSION)


@pytest.mark.parametrize(
    "text",
    ["naïve", "ê", "`", "\t", "\x1b", "😀", "Привет", "日本", "’", "“quoted”", "—", "\u00a0"],
)
def test_characters_outside_gsm_03_38_force_ucs2(text: str) -> None:
    assert not is_gsm7(text)


def test_empty_text_is_gsm7_and_costs_nothing() -> None:
    assert is_gsm7("")
    assert sms_segments("") == 0


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_segment_boundaries(length: int, segments: int) -> None:
    assert sms_segments("a" * length) == segments


def test_extension_characters_count_twice() -> None:
    assert sms_segments("€" * 80) == 1  # 160 septets
    assert sms_segments("€" * 81) == 2  # 162 septets
    assert sms_segments("a" * 159 + "[") == 2


def test_escape_pair_is_not_split_across_parts() -> None:
    # 152 + 2 + 152 = 306 septets would be 2 parts if the € could straddle the boundary.
    assert sms_segments("a" * 152 + "€" + "a" * 152) == 3


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3)],
)
def test_ucs2_segment_boundaries(length: int, segments: int) -> None:
    assert sms_segments("й" * length) == segments


def test_one_non_gsm_character_switches_the_whole_text_to_ucs2() -> None:
    assert sms_segments("a" * 70) == 1
    assert sms_segments("a" * 69 + "’") == 1
    assert sms_segments("a" * 70 + "’") == 2


def test_emoji_take_two_code_units_and_are_not_split() -> None:
    assert sms_segments("😀" * 35) == 1  # 70 code units
    assert sms_segments("😀" * 36) == 2
    assert sms_segments("й" * 66 + "😀" + "й" * 66) == 3


def test_link_only_notification_fits_one_gsm7_segment() -> None:
    text = (
        "Riverside Family Clinic: you have a new secure message. "
        f"Open: https://msg.riverside.example/s/{new_token()}"
    )
    assert is_gsm7(text)
    assert sms_segments(text) == 1


@given(st.text(alphabet=BASIC + EXTENSION, min_size=1, max_size=1200))
def test_gsm7_segments_match_the_septet_count(text: str) -> None:
    septets = gsm7_septets(text)
    segments = sms_segments(text)
    if septets <= 160:
        assert segments == 1
    else:
        # At least the tight count; at most one extra part per 153 for unsplittable pairs.
        assert math.ceil(septets / 153) <= segments <= math.ceil(septets / 152)


@given(st.text(min_size=1, max_size=600))
def test_any_text_costs_at_least_one_segment(text: str) -> None:
    segments = sms_segments(text)
    assert segments >= 1
    units = len(text.encode("utf-16-le", "surrogatepass")) // 2
    if not is_gsm7(text):
        if units <= 70:
            assert segments == 1
        else:
            assert segments >= math.ceil(units / 67)
