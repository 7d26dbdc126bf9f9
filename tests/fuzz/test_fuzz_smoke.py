"""A short Atheris campaign in the suite (tests/fuzz/harness.py says what is fuzzed): seeded
with the mail corpus, any crash or any input slower than the timeout fails it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [ROOT / "tests" / "fixtures" / "email" / "mime", ROOT / "tests" / "fixtures" / "email" / "replies"]


def test_a_short_fuzzing_campaign_finds_no_crash_and_no_slow_input(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"  # new inputs go here; the seeds are only read
    corpus.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.harness", "-atheris_runs=6000", "-timeout=10", "-max_len=20000",
         "-seed=1", str(corpus), *map(str, SEEDS)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 6000" in run.stderr
