"""Property-based requests over the OpenAPI schema: no request may produce a 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from metamorphosis.serve.app import create_app  # noqa: E402
from metamorphosis.serve.server import build_service, key_store  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(served_run):
    """The in-process app's schema, with a valid key for ``shape`` on every request."""
    app = create_app(build_service(served_run, max_ids=16))
    secret = key_store(served_run).issue("shape").secret
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.headers = {"Authorization": f"Bearer {secret}"}
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_produces_a_server_error(case):
    response = case.call()
    STATUSES.setdefault(case.path, set()).add(response.status_code)
    assert response.status_code < 500, (case.path, case.query, response.text)


STATUSES: dict[str, set[int]] = {}


def test_the_fuzzing_got_past_authentication():
    """With the key attached, generated requests reach the handlers (not only 401s)."""
    assert STATUSES, "run with the property test above"
    task_routes = [codes for path, codes in STATUSES.items() if path.startswith("/v1/")]
    assert task_routes and all(codes - {401} for codes in task_routes), STATUSES
