"""The layers, checked on the source: the edges (inbound/, outbound/, portal/) do not import each
other, and the core (gateway/) imports none of them nor the transport libraries, except the
composition root, which wires everything together (docs/architecture.md).

What two edges share belongs in the core (for example the reply-address format,
gateway/messaging/reply_address.py, and the rate limiter, gateway/security/ratelimit.py). Every import counts,
including imports inside functions and under `if TYPE_CHECKING:`: a type-only import is still a
dependency on the other layer. Known violations are listed in KNOWN_VIOLATIONS; the test fails
on any new one, and on a listed one that is gone (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EDGES = ("inbound", "outbound", "portal")
CORE = "gateway"
# The composition root: builds the services and hands each edge its collaborators.
COMPOSITION_ROOT = frozenset({"gateway/runtime/app.py", "gateway/runtime/cli.py"})
# Transport libraries belong to the edges; the core sees providers through gateway/ports.py.
TRANSPORTS = ("aiohttp", "aiosmtpd", "twilio")

# (importing file, imported module) pairs still to be fixed. Remove an entry when it is fixed.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports (anywhere in it)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ("from inbound import sms" gives "inbound": judged by its top-level package.) A
            # relative import (level > 0) stays inside its own package, which is allowed.
            found.add(node.module)
    return found


def layer_violations() -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for package in (*EDGES, CORE):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for module in imported_modules(path):
                top = module.split(".")[0]
                if package in EDGES and top in EDGES and top != package:
                    out.add((rel, module))
                elif package == CORE and rel not in COMPOSITION_ROOT and top in (*EDGES, *TRANSPORTS):
                    out.add((rel, module))
    return out


def test_edges_import_only_the_core_and_the_core_imports_no_edge() -> None:
    found = layer_violations()
    new = sorted(found - KNOWN_VIOLATIONS)
    assert not new, "sideways or upward imports (move what they share into gateway/):\n" + "\n".join(
        f"  {path} imports {module}" for path, module in new)


def test_the_allow_list_of_known_violations_only_shrinks() -> None:
    gone = sorted(KNOWN_VIOLATIONS - layer_violations())
    assert not gone, "fixed; remove from KNOWN_VIOLATIONS in tests/test_layers.py:\n" + "\n".join(
        f"  {path} imports {module}" for path, module in gone)


def test_the_checker_sees_imports_inside_functions_and_type_checking_blocks(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from outbound.sandbox import SandboxSmsSender\n"
        "def f():\n    import portal.http\n    from inbound import sms\n",
        encoding="utf-8")
    assert {"outbound.sandbox", "portal.http", "inbound"} <= imported_modules(sample)
