"""The README is the operator's reference: it names every command and every HTTP endpoint."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from aiohttp import web

from gateway.runtime import cli
from tests.support.harness import Gateway

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _paths(app: web.Application) -> set[str]:
    out = set()
    for resource in app.router.resources():
        info = resource.get_info()
        if "app" in info:  # a mounted sub-application: the README names its prefix
            out.add(info["prefix"] + "/...")
            continue
        out.add(info.get("path") or info.get("formatter") or info.get("prefix", "") + "/...")
    return out


async def test_every_http_endpoint_is_in_the_readme(gw: Gateway) -> None:
    paths = _paths(gw.client.app)
    # The app was read, not an empty router.
    assert {"/healthz", "/api/v1/messages", "/u/{token}", "/staff/..."} <= paths, paths
    missing = sorted(p for p in paths if f"`{p}`" not in README and not re.search(
        rf"`(GET|POST) {re.escape(p)}`", README))
    assert not missing, f"endpoints the README does not list: {missing}"


def test_every_cli_command_is_in_the_readme() -> None:
    commands = []
    for action in cli.parser()._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
            commands += [f"hushlink {name} {n}" for a in nested for n in a.choices] or [f"hushlink {name}"]
    assert len(commands) > 5
    missing = [c for c in commands if c not in README]
    assert not missing, f"commands the README does not list: {missing}"
