"""Schemathesis against /v1/openapi.json: generated valid and invalid requests never get a 5xx.

Bounded: a fixed number of examples per operation and mode, against the tiny-model server whose
completions are capped at 8 tokens (CHAT_MAX_TOKENS_CAP).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

# Per operation and mode; raise it for a longer hunt: CHAT_FUZZ_EXAMPLES=500 pytest -k schemathesis
MAX_EXAMPLES = int(os.environ.get("CHAT_FUZZ_EXAMPLES", "30"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(tiny_api_server):
    return schemathesis.openapi.from_url(f"{tiny_api_server.url}/v1/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_it_never_answers_5xx_to_generated_requests(tiny_api_server, api_schema, mode) -> None:
    auth = {"Authorization": f"Bearer {tiny_api_server.keys['alice']}"}
    statuses: list[int] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 3

    for operation in operations:

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case) -> None:
            response = case.call(base_url=tiny_api_server.url, headers=auth, timeout=60)
            statuses.append(response.status_code)
            request = response.request
            seen = (request.method, request.url, request.headers, request.body, response.text[:500])
            assert response.status_code < 500, seen
            content_type = response.headers.get("content-type", [""])[0]
            assert content_type.startswith(("application/json", "text/event-stream")), seen  # never HTML

        check()

    assert statuses and all(s < 500 for s in statuses)
    if mode == GenerationMode.POSITIVE:
        assert 200 in statuses  # the generated valid requests did reach the model
