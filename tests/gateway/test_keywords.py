"""SMS keywords: one-word STOP/START/HELP replies, however a phone happens to type them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rules.keywords import Keyword, parse_keyword

FAMILIES = {
    Keyword.STOP: ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"],
    Keyword.START: ["START", "UNSTOP", "YES"],
    Keyword.HELP: ["HELP", "INFO"],
}
ALL_WORDS = [(word, kw) for kw, words in FAMILIES.items() for word in words]


@pytest.mark.parametrize(("word", "keyword"), ALL_WORDS)
def test_every_twilio_default_word_is_recognized(word: str, keyword: Keyword) -> None:
    assert parse_keyword(word) is keyword
    assert parse_keyword(word.lower()) is keyword
    assert parse_keyword(word.capitalize()) is keyword


@pytest.mark.parametrize(
    "body",
    ["stop", " Stop ", "STOP.", "Stop!", "stop!!!", "STOP?", "\tstop\n", "sToP", "stop …",
     "ＳＴＯＰ",  # full-width letters, as some Asian keyboards send them
     "\u3000STOP\u3000",  # ideographic spaces
     "\ufeffSTOP",  # byte-order mark in front
     "ST\u200bOP",  # zero-width space inside
     "ſtop",  # long s casefolds to s
     "STOP\u00a0"],  # no-break space
)  # fmt: skip
def test_stop_survives_case_spacing_punctuation_and_width(body: str) -> None:
    assert parse_keyword(body) is Keyword.STOP


@pytest.mark.parametrize(
    "body",
    ["stop it", "Please stop", "STOP ALL", "don't stop", "stopping", "unstoppable", "stop-it",
     "STOP\nthanks", "yes please", "help me", "info?!  more", "", "   ", ".", "!STOP", "ST OP",
     "OPT OUT", "quitting", "endless"],
)  # fmt: skip
def test_anything_but_a_single_keyword_is_not_a_keyword(body: str) -> None:
    assert parse_keyword(body) is None


def test_opt_in_and_help_words_map_to_their_families() -> None:
    assert parse_keyword("Yes!") is Keyword.START
    assert parse_keyword("unstop") is Keyword.START
    assert parse_keyword("Info.") is Keyword.HELP


def test_long_body_is_not_a_keyword() -> None:
    assert parse_keyword("STOP" + "!" * 200) is None
    assert parse_keyword("x" * 100_000) is None


@settings(max_examples=500)
@given(st.text())
def test_arbitrary_text_never_raises(body: str) -> None:
    assert parse_keyword(body) in (None, Keyword.STOP, Keyword.START, Keyword.HELP)


@given(
    st.sampled_from(ALL_WORDS),
    st.lists(st.booleans(), min_size=11, max_size=11),
    st.text(alphabet=" \t\n\r\u3000", max_size=4),
    st.text(alphabet=".!?", max_size=3),
    st.text(alphabet=" \t\n", max_size=4),
)
def test_keyword_in_any_case_with_padding_and_punctuation_is_recognized(
    entry: tuple[str, Keyword], upper: list[bool], lead: str, punct: str, trail: str
) -> None:
    word, keyword = entry
    mixed = "".join(c.upper() if u else c.lower() for c, u in zip(word, upper, strict=False))
    assert parse_keyword(f"{lead}{mixed}{punct}{trail}") is keyword


@given(st.sampled_from(ALL_WORDS), st.text(alphabet="abcxyz", min_size=1, max_size=6))
def test_keyword_followed_by_another_word_is_not_a_keyword(
    entry: tuple[str, Keyword], other: str
) -> None:
    assert parse_keyword(f"{entry[0]} {other}") is None
