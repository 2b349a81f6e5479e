"""The API fuzzed from its own OpenAPI schema (schemathesis, bounded): whatever the
parameters, bodies and ids, no answer is a 5xx."""

from __future__ import annotations

from dataclasses import replace

import pytest

from clipdex.server import create_app
from serve_helpers import FP32, build_index

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    schemathesis = pytest.importorskip("schemathesis")  # imported here: it is slow to import
    from fastapi.testclient import TestClient

    from serve_helpers import wait_ready

    folder = build_index(tmp_path_factory.mktemp("fuzz"), count=12)
    app = create_app(folder, options=replace(FP32, max_upload_bytes=256 * 1024))
    with TestClient(app) as client:  # runs the lifespan: the model loads, warm
        wait_ready(client)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_request_from_the_schema_gets_a_5xx(api_schema):
    from hypothesis import HealthCheck, given, settings

    answered: dict[str, set[int]] = {}
    for found in api_schema.get_all_operations():
        operation = found.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case):
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, response.text[:300])
            if response.status_code >= 400:  # every error is one JSON message
                assert isinstance(response.json()["detail"], str)
            answered.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)

        call()
    print(answered)
    assert len(answered) >= 9, answered  # every operation was exercised
