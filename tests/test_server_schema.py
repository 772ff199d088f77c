"""Schemathesis against the server's own OpenAPI document, on the scripted engine.

Bounded: a few examples per operation, so it stays quick. Embeddings (a real embedding
model per call) are left to test_server_real.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.test_server import serve_scripted


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOS_CONFIG", str(tmp_path_factory.mktemp("cfg") / "none.toml"))
        with serve_scripted(tmp_path_factory.mktemp("schema"), server_max_tokens=64) as (url, _app):
            yield schemathesis.openapi.from_url(f"{url}/openapi.json")


# The memory endpoints answer 501 until a memory filesystem registers fs.* syscalls; their
# mapping is tested in test_server.py.
schema = (
    schemathesis.pytest.from_fixture("api_schema")
    .exclude(path="/v1/embeddings")
    .exclude(tag="memory")
    # perplexity scores with real llama.cpp (it reads the model file itself) and a task set
    # runs a whole set: minutes under fuzzing; test_eval_syscalls.py covers both routes
    .exclude(path="/v1/eval/perplexity")
    .exclude(path="/v1/eval/run")
)


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_api_conforms_to_its_openapi_document(case: Any) -> None:
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=60,
    )
