"""Link-only SMS texts: one GSM-7 segment, the whole link, nothing of the message itself."""

from __future__ import annotations

import inspect
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.messaging.gsm7 import is_gsm7, sms_segments
from gateway.security.tokens import new_token
from outbound.compose import LINK_TEMPLATES, TEMPLATES, gsm7_name, sms_text

PUBLIC = "https://messages.riverside-health.example"[:40]
LONG_NAME = "Clínica Señora de Guadalupe — Pédiatrie & Santé Familiale de Montréal-Nord ✨ 🩺💙"
NAMES = [
    "Riverside Clinic",
    LONG_NAME,
    "Zürich Ärztehaus Öffentliche Gesundheit und Prävention für Familien & Kinder 🏥",
    "🩺💙✨",  # nothing GSM-7 left
    "{Dr. [Smith]} ~ Family | Practice ^ €uro",  # extension characters only cost room
    "Ｆｕｌｌｗｉｄｔｈ Ｃｌｉｎｉｃ",
    "Ąćęłńśźż Przychodnia Rodzinna w Łodzi — Zdrowie Dziecka i Rodziny 👶",
    "A" * 80,
]


def link() -> str:
    return f"{PUBLIC}/s/{new_token()}"


def test_public_url_is_forty_characters():
    assert len(PUBLIC) == 40 and PUBLIC.startswith("https://")
    assert max(len(n) for n in NAMES) == 80
    assert len(LONG_NAME) <= 80


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("name", NAMES)
def test_every_template_is_one_gsm7_segment_with_the_whole_link(template, name):
    url = link() if template in LINK_TEMPLATES else None
    text = sms_text(template, org_name=name, url=url)
    assert is_gsm7(text), text
    assert sms_segments(text) == 1, (len(text), text)
    if url is not None:
        assert url in text
        assert text.endswith(url)  # nothing glued to the link that a phone would swallow into it
    # Only the org's name (as GSM-7, maybe shortened) precedes the template's fixed words.
    org_part = text.split(":", 1)[0]
    assert gsm7_name(name).startswith(org_part.rstrip("."))


def test_short_org_name_is_kept_whole():
    url = link()
    text = sms_text("secure_notice", org_name="Riverside Clinic", url=url)
    assert text == f"Riverside Clinic: you have a new secure message. Open it here: {url}"


def test_long_name_is_shortened_not_the_link():
    url = link()
    text = sms_text("inbound_ack", org_name=LONG_NAME, url=url)
    assert len(text) <= 160 and url in text
    assert text.startswith("Clinica")  # accents folded, not dropped with their letter
    assert "." in text.split(":", 1)[0]  # marked as shortened


def test_gsm7_name_folds_accents_and_drops_the_rest():
    assert gsm7_name("Clínica Pédiatrie 🩺") == "Clinica Pediatrie"
    assert gsm7_name("🩺💙") == "Secure messages"
    assert not set("{}[]~\\|^€") & set(gsm7_name("{Dr. [Smith]} ~ | ^ €"))


def test_templates_take_no_message_content():
    fields = {f for t in TEMPLATES.values() for _, f, _, _ in string.Formatter().parse(t) if f}
    assert fields <= {"org", "url"}
    assert set(inspect.signature(sms_text).parameters) == {"template", "org_name", "url"}
    for template in LINK_TEMPLATES:
        assert "{url}" in TEMPLATES[template]


@pytest.mark.parametrize("template", sorted(LINK_TEMPLATES))
def test_link_templates_refuse_to_go_without_a_link(template):
    with pytest.raises(ValueError):
        sms_text(template, org_name="Riverside Clinic", url=None)


@pytest.mark.parametrize("name", ["A", "Abcd", "Abcde", "Riverside Clinic", LONG_NAME])
@pytest.mark.parametrize("extra", [60, 150])
def test_a_link_too_long_for_one_segment_is_refused_not_split(name, extra):
    url = "https://" + "x" * extra + ".example/s/" + new_token()
    with pytest.raises(ValueError):  # and returns: it once looped forever here
        sms_text("secure_notice", org_name=name, url=url)


@settings(max_examples=300, deadline=None)
@given(name=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=80),
       template=st.sampled_from(sorted(TEMPLATES)))
def test_any_org_name_fits_one_segment(name, template):
    url = link() if template in LINK_TEMPLATES else None
    text = sms_text(template, org_name=name, url=url)
    assert is_gsm7(text) and sms_segments(text) == 1
    if url:
        assert url in text
