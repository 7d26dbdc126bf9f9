"""config.example.toml documents every key with its default: it loads, and it names them all."""

from dataclasses import fields
from pathlib import Path

from gateway.runtime.config import Config, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_example_config_loads_and_matches_the_defaults():
    assert load_config(EXAMPLE, {}) == Config()


def test_example_config_documents_every_key():
    text = EXAMPLE.read_text()
    for section in fields(Config):
        assert f"[{section.name}]" in text
        for key in fields(section.type if isinstance(section.type, type) else getattr(Config(), section.name)):
            assert f"\n{key.name} = " in text, f"{section.name}.{key.name} is not documented"
