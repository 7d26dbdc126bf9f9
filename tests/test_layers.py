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


# --- Thin edges (issue 9): the edges call domain services; they neither touch a MongoDB collection
# nor take the Services bag (each handler gets its collaborators in its constructor).

# The driver calls that read or write a collection (pymongo.asynchronous.collection.AsyncCollection).
DRIVER_METHODS = frozenset({
    "find", "find_one", "insert_one", "insert_many", "update_one", "update_many", "delete_one",
    "delete_many", "aggregate", "count_documents", "find_one_and_update", "find_one_and_delete",
    "find_one_and_replace", "bulk_write", "watch", "replace_one", "distinct",
})
SERVICES_MODULE = "gateway.runtime.services"

# Edge files that still touch a collection. Remove a file when its handlers only call domain services.
KNOWN_COLLECTION_USERS: frozenset[str] = frozenset()
# Files outside gateway/runtime/ that still import the Services bag. Remove a file when its classes
# take explicit collaborators.
KNOWN_SERVICES_IMPORTERS: frozenset[str] = frozenset()


def _collection_names() -> frozenset[str]:
    from gateway.storage.store import COLLECTIONS
    return COLLECTIONS


def _is_named(node: ast.expr, name: str) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == name) or (
        isinstance(node, ast.Name) and node.id == name)


def collection_uses(path: Path) -> list[str]:
    """Where a file touches MongoDB: `X.<collection>.<driver method>`, `X.db[...]` /
    `X.audit_db[...]`, or anything reached through a `store` (`store.messages`, `self.store.collection(...)`)."""
    collections = _collection_names()
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Attribute):
            if node.attr in DRIVER_METHODS and isinstance(node.value, ast.Attribute) \
                    and node.value.attr in collections:
                found.append(f"{node.lineno}: .{node.value.attr}.{node.attr}")
            elif _is_named(node.value, "store"):
                found.append(f"{node.lineno}: store.{node.attr}")
        elif isinstance(node, ast.Subscript) and (
                _is_named(node.value, "db") or _is_named(node.value, "audit_db")):
            found.append(f"{node.lineno}: db[...]")
    return found


def collection_users() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for package in EDGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            uses = collection_uses(path)
            if uses:
                out[path.relative_to(ROOT).as_posix()] = uses
    return out


def imports_services(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import) and any(
                alias.name == SERVICES_MODULE or alias.name.startswith(SERVICES_MODULE + ".")
                for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == SERVICES_MODULE or (
                    node.module == "gateway.runtime" and any(a.name == "services" for a in node.names)):
                return True
    return False


def services_importers() -> set[str]:
    out: set[str] = set()
    for package in (*EDGES, CORE):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith("gateway/runtime/") and imports_services(path):
                out.add(rel)
    return out


def test_the_edges_touch_no_database_collection() -> None:
    new = {path: uses for path, uses in collection_users().items() if path not in KNOWN_COLLECTION_USERS}
    assert not new, "edge code touching MongoDB (call a domain service instead):\n" + "\n".join(
        f"  {path} {use}" for path, uses in sorted(new.items()) for use in uses)


def test_the_allow_list_of_edges_touching_collections_only_shrinks() -> None:
    gone = sorted(KNOWN_COLLECTION_USERS - set(collection_users()))
    assert not gone, "clean; remove from KNOWN_COLLECTION_USERS in tests/test_layers.py:\n" + "\n".join(
        f"  {path}" for path in gone)


def test_only_the_composition_root_sees_the_services_bag() -> None:
    new = sorted(services_importers() - KNOWN_SERVICES_IMPORTERS)
    assert not new, "imports gateway.runtime.services (take explicit collaborators instead):\n" + "\n".join(
        f"  {path}" for path in new)


def test_the_allow_list_of_services_importers_only_shrinks() -> None:
    gone = sorted(KNOWN_SERVICES_IMPORTERS - services_importers())
    assert not gone, "clean; remove from KNOWN_SERVICES_IMPORTERS in tests/test_layers.py:\n" + "\n".join(
        f"  {path}" for path in gone)


def test_the_checkers_see_collection_calls_and_the_services_bag(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from gateway.runtime import services\n"
        "async def f(self, store, outbox):\n"
        "    await self.services.messages.find_one({})\n"
        "    await store.collection('x').count_documents({})\n"
        "    await self.db['threads'].insert_one({})\n"
        "    await outbox.enqueue({})\n",
        encoding="utf-8")
    uses = collection_uses(sample)
    assert any(".messages.find_one" in use for use in uses)
    assert any("store.collection" in use for use in uses)
    assert any("db[...]" in use for use in uses)
    assert not any("enqueue" in use for use in uses)  # a domain service's method is fine
    assert imports_services(sample)
