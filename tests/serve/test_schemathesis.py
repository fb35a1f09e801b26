"""Property-based requests over the OpenAPI schema: no request may produce a 5xx.

Schemathesis' pytest plugin (``schema.parametrize`` / ``pytest.from_fixture``)
breaks on pytest 9 ('Function' object has no attribute '_nodeid'), so the
fuzzing uses its plain Python API instead: each operation's Hypothesis
strategy drives an ordinary ``@given`` loop, run once per module by a fixture
whose tally both tests read (each test passes alone, in any order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from metamorphosis.serve.app import create_app  # noqa: E402
from metamorphosis.serve.server import build_service, key_store  # noqa: E402


@dataclass
class Tally:
    """What the fuzzing saw: status codes per route, and every 5xx answer."""

    statuses: dict[str, set[int]] = field(default_factory=dict)
    server_errors: list[tuple[str, str, object, int, str]] = field(default_factory=list)


def _fuzz(operation, tally: Tally, **fixed) -> None:
    @given(case=operation.as_strategy(**fixed))
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        response = case.call()
        tally.statuses.setdefault(operation.path, set()).add(response.status_code)
        if response.status_code >= 500:
            tally.server_errors.append(
                (case.method, case.path, case.query, response.status_code, response.text[:200])
            )

    run()


@pytest.fixture(scope="module")
def tally(served_run) -> Tally:
    """Fuzz every operation of the in-process app once, with a valid key for ``shape``."""
    app = create_app(build_service(served_run, max_ids=16))
    headers = {"Authorization": f"Bearer {key_store(served_run).issue('shape').secret}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the schema lists no operations"
    result = Tally()
    for operation in operations:
        _fuzz(operation, result, headers=headers)  # any task name: mostly 403
        if "{task}" in operation.path:  # the key's own task: reaches the handlers
            _fuzz(operation, result, headers=headers, path_parameters={"task": "shape"})
    return result


def test_no_request_produces_a_server_error(tally):
    assert tally.statuses, "no request was made"
    assert tally.server_errors == []


def test_the_fuzzing_got_past_authentication(tally):
    """With the key attached, generated requests reach the handlers (not only 401s)."""
    task_routes = [codes for path, codes in tally.statuses.items() if path.startswith("/v1/")]
    assert task_routes and all(codes - {401, 403} for codes in task_routes), tally.statuses
