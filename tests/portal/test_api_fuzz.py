"""The API against its own OpenAPI document, with generated requests (docs/architecture.md, 'Testing').

Schemathesis generates requests for every operation in /api/v1/openapi.json (valid ones and,
from the schema's edges, many that are not) and sends them to the running test gateway with a
real API key. Every answer must be a documented status with a body that matches its schema, and
none may be a server error. The requests go through `requests` (schemathesis's own transport),
so the generation runs in a thread beside the test server's event loop.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from portal.openapi import OPENAPI
from tests.support.harness import Gateway

# Per operation. The suite runs a fixed (derandomized) sample, so CI is repeatable; for a longer
# campaign with fresh inputs: HUSHLINK_FUZZ_EXAMPLES=2000 HUSHLINK_FUZZ_RANDOM=1 pytest this file.
EXAMPLES = int(os.environ.get("HUSHLINK_FUZZ_EXAMPLES", "60"))
RANDOM = os.environ.get("HUSHLINK_FUZZ_RANDOM") == "1"


def fuzz(base_url: str, headers: dict[str, str]) -> list[str]:
    schema = schemathesis.openapi.from_dict(OPENAPI)
    checked: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            response = case.call(base_url=base_url, headers=headers, timeout=10)
            assert response.status_code < 500, (case.method, case.formatted_path, response.status_code,
                                                response.text[:300])
            case.validate_response(response)

        run()
        checked.append(f"{operation.method.upper()} {operation.path}")
    return checked


async def test_generated_requests_get_documented_answers_and_never_a_server_error(gw: Gateway) -> None:
    await gw.api_send(body="A message so that ids exist.", secure=True)
    checked = await asyncio.to_thread(fuzz, gw.server_url, gw.auth())
    assert "POST /api/v1/messages" in checked and len(checked) == len(OPENAPI["paths"]) + sum(
        len(ops) - 1 for ops in OPENAPI["paths"].values())
