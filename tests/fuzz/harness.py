"""Coverage-guided fuzzing (Atheris, libFuzzer) of the code that reads what strangers send
(docs/architecture.md, 'Testing'; OWASP ASVS 5.0 1.3.12 on ReDoS): mail parsing and reply
extraction, HTML to text, the sensitive-content
classifier, keywords and phone numbers. Nothing may raise an undeclared exception, and no input
may take longer than libFuzzer's `-timeout` (a regular expression with catastrophic backtracking
would).

    .venv/bin/python -m tests.fuzz.harness -atheris_runs=200000 -timeout=2 [corpus dir]

tests/fuzz/test_fuzz_smoke.py runs a short campaign in the suite; run longer ones by hand.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from gateway.errors import ValidationError
    from gateway.messaging.phone import normalize_e164
    from gateway.rules.classifier import find_sensitive
    from gateway.rules.keywords import parse_keyword
    from inbound.mail.html_text import html_to_text
    from inbound.mail.parse import parse_message
    from inbound.mail.reply_text import extract_reply


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    choice = fdp.ConsumeIntInRange(0, 4)
    if choice == 0:
        parsed = parse_message(fdp.ConsumeBytes(fdp.remaining_bytes()), max_attachments=3,
                               max_attachment_bytes=10_000)
        extract_reply(parsed.text or "")
        return
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    if choice == 1:
        extract_reply(text)
    elif choice == 2:
        html_to_text(text)
    elif choice == 3:
        find_sensitive(text, ("chemotherapy", "case 12"))
        parse_keyword(text)
    else:
        try:
            normalize_e164(text)
        except ValidationError:
            pass  # the one exception it declares


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
