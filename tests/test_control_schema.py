"""The control API against its own OpenAPI schema (schemathesis), and its readiness without Redis.

Schemathesis generates requests for every operation from the schema served by a real
switchboard-control (uvicorn, the session's Redis), with a valid token, and checks that no
answer is a 5xx and that every answer matches the schema.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from switchboard_dev import procs

from test_control_api import API_TOKEN, control_service

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def control_url(redis_url, tmp_path_factory):
    service, port = control_service(redis_url, "ctlschema:", CONTROL_PUBLIC_DOCS="true")
    service.start(tmp_path_factory.mktemp("control-schema"))
    yield f"http://127.0.0.1:{port}"
    service.stop()


@pytest.fixture(scope="module")
def api_schema(control_url):
    return schemathesis.openapi.from_url(f"{control_url}/openapi.json")


# Positive cases exercise the happy paths (writes land in this module's key prefix); negative
# ones send what the schema forbids and must get 4xx answers that still match the schema.
@pytest.mark.parametrize(
    ("mode", "examples"), [(GenerationMode.POSITIVE, 50), (GenerationMode.NEGATIVE, 25)], ids=["positive", "negative"]
)
def test_no_operation_answers_5xx_or_breaks_its_schema(api_schema, control_url, mode, examples):
    # schemathesis' pytest plugin does not run under pytest 9: drive hypothesis per operation instead.
    tested = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=AUTH, checks=[not_a_server_error, response_schema_conformance])

        try:
            check()
        except Unsatisfiable:
            continue  # nothing to break (e.g. GET /healthz has no parameters): no negative case exists
        tested.append(operation.label)
    assert len(tested) >= (20 if mode is GenerationMode.POSITIVE else 15), tested
    if mode is GenerationMode.POSITIVE:
        # The generated writes were accepted, not just refused: the happy paths ran too.
        text = httpx.get(f"{control_url}/metrics").text
        for accepted in ('method="PUT",route="/v1/profiles/{name}",status="200"',
                         'method="PUT",route="/v1/calls/{call_sid}/settings",status="200"',
                         'method="PATCH",route="/v1/calls/{call_sid}/settings",status="200"'):
            assert accepted in text, accepted


def test_schema_documents_examples_auth_and_every_endpoint(control_url):
    spec = httpx.get(f"{control_url}/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert {"/healthz", "/readyz", "/metrics", "/twiml", "/v1/settings/default", "/v1/profiles", "/v1/profiles/{name}",
            "/v1/calls", "/v1/calls/{call_sid}", "/v1/calls/{call_sid}/settings", "/v1/calls/{call_sid}/events",
            "/v1/calls/{call_sid}/say", "/v1/calls/{call_sid}/hangup", "/v1/calls/{call_sid}/prompt",
            "/v1/calls/{call_sid}/voice", "/v1/calls/{call_sid}/user-message"} <= set(spec["paths"])
    put = spec["paths"]["/v1/profiles/{name}"]["put"]
    assert put["requestBody"]["content"]["application/json"]["examples"]
    assert "security" not in spec["paths"]["/healthz"]["get"] and "security" not in spec["paths"]["/twiml"]["post"]


def test_readyz_is_false_while_redis_is_unreachable(tmp_path):
    service, port = control_service(f"redis://127.0.0.1:{procs.free_port()}/0", "ctldead:")
    service.start(tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = httpx.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json() == {"ready": False, "redis": False}
        assert httpx.get(f"{base}/healthz").status_code == 200
        # A request that needs Redis answers 503 with a clear message, not a 500.
        profiles = httpx.get(f"{base}/v1/profiles", headers=AUTH, timeout=10)
        assert profiles.status_code == 503 and profiles.json() == {"detail": "redis is unavailable"}
    finally:
        service.stop()
