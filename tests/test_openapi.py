"""The OpenAPI contract (``GET /v1/openapi.json``): valid OpenAPI 3.1, in step with the
app's routes and with the HTTP reference, and true of a live server: a bounded
property-based run (schemathesis) generates requests from it, valid and invalid, and
finds no 500 and no status, header or body the document does not describe."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import CheckContext
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.routing import Route, WebSocketRoute

from pushsvc.app import create_app
from pushsvc.openapi import PATH, PROBLEM_MEDIA_TYPE, openapi_document
from pushsvc.settings import Settings
from tests.fixtures_server import API_KEY, Server, make_server

ROOT = Path(__file__).resolve().parent.parent
HTTP_REFERENCE = ROOT / "docs" / "reference" / "http-api.md"
SETTINGS = Settings(secrets=("s",), api_keys=("k",))


def _spec_path(route_path: str) -> str:
    """Starlette's ``{channel:path}`` as OpenAPI's ``{channel}``."""
    return re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", route_path)


def _operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def test_document_is_valid_openapi_3_1() -> None:
    doc = openapi_document(SETTINGS)
    assert doc["openapi"].startswith("3.1.")
    validate(doc)  # raises with the first error


async def test_served_document_is_the_app_s_and_honours_the_mount_prefix() -> None:
    for root_path, server_url in (("", "/"), ("/push", "/push")):
        app = create_app(SETTINGS)
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.get(root_path + PATH)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == openapi_document(SETTINGS, root_path)
        assert r.json()["servers"] == [{"url": server_url}]


def test_configured_limits_are_schema_constraints() -> None:
    s = Settings(
        secrets=("s",),
        api_keys=("k",),
        max_channel_length=20,
        max_channels_per_session=3,
        max_batch_messages=7,
        max_event_name_length=9,
        poll_timeout_max=4.5,
        history_limit_max=50,
    )
    doc = openapi_document(s)
    schemas = doc["components"]["schemas"]
    assert schemas["Channel"]["maxLength"] == 20
    assert schemas["Batch"]["properties"]["messages"]["maxItems"] == 7
    assert schemas["Message"]["properties"]["event"]["maxLength"] == 9
    poll = {p["name"]: p for p in doc["paths"]["/v1/poll"]["get"]["parameters"]}
    assert poll["channel"]["schema"]["maxItems"] == 3
    assert poll["timeout"]["schema"]["anyOf"][0]["maximum"] == 4.5
    history = {
        p["name"]: p for p in doc["paths"]["/v1/channels/{channel}/history"]["get"]["parameters"]
    }
    assert history["limit"]["schema"]["maximum"] == 50
    assert history["limit"]["schema"]["default"] == 50
    validate(doc)


def test_every_route_is_documented_and_every_documented_path_is_a_route() -> None:
    app = create_app(SETTINGS)
    served: set[tuple[str, str]] = set()
    websockets = []
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            websockets.append(route.path)
            continue
        assert isinstance(route, Route), route
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET route
                served.add((method, _spec_path(route.path)))
    doc = openapi_document(SETTINGS)
    assert _operations(doc) == served
    # the WebSocket cannot be an OpenAPI operation: the description names it instead
    assert websockets == ["/v1/ws"]
    assert "/v1/ws" in doc["info"]["description"]


def test_every_error_is_a_problem_body_and_every_operation_is_secured_or_public() -> None:
    doc = openapi_document(SETTINGS)
    problems = doc["components"]["responses"]
    for status, response in problems.items():
        assert list(response["content"]) == [PROBLEM_MEDIA_TYPE], status
        assert response["content"][PROBLEM_MEDIA_TYPE]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }
    public = {"/healthz", "/readyz", "/metrics", PATH, "/pushsvc.js", "/pushsvc.d.ts"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith("4") or (status.startswith("5") and path != "/readyz"):
                    assert response == {"$ref": f"#/components/responses/Problem{status}"}, (
                        method,
                        path,
                        status,
                    )
            names = {name for requirement in operation["security"] for name in requirement}
            if path in public:
                assert operation["security"] == [], path
            else:
                assert names == {"apiKey", "token", "tokenQuery"}, path
                assert "401" in operation["responses"], path


def test_http_reference_documents_every_operation_and_links_the_contract() -> None:
    text = HTTP_REFERENCE.read_text()
    rows = {
        (m.group(1), path)
        for m in re.finditer(r"^\| `(GET|POST)` \| (.+?) \|", text, re.MULTILINE)
        for path in re.findall(r"`(/[^`]*)`", m.group(2))
    }
    documented = _operations(openapi_document(SETTINGS))
    assert documented <= rows, documented - rows
    assert ("GET", "/v1/ws") in rows  # beside the contract, which cannot hold it
    assert "(openapi.md)" in text


# --- the property-based run against a live server ----------------------------------------

# Where a request that the schema allows is refused (400) for a reason a JSON Schema cannot
# state: a cursor's checksum, and parameters that depend on each other.
_DEPENDENT_REFUSALS = (
    "https://pushsvc.dev/problems/bad-cursor",
    "a cursor needs the channels it positions",
    "long-poll presence needs presence_id",
    "presence_id must be",
)


def valid_requests_are_accepted(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """schemathesis' ``positive_data_acceptance``, with the refusals above allowed: a
    schema-valid request gets a 2xx (or 401/403/429/503, which a schema cannot rule out)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    body = response.text
    if any(reason in body for reason in _DEPENDENT_REFUSALS):
        return None
    raise Failure(
        operation=case.operation.label,
        title="Schema-valid request refused",
        message=f"400 for a request the schema allows: {body[:300]}",
    )


# The live server's settings, and so its document, known before it starts: the generated
# tests are collected from the document (the test below checks that the server serves it).
# Short long-poll timeouts (the document's bound follows), and heartbeats often enough that
# an SSE stream soon has the event schemathesis reads before it hangs up. The port, unused
# by the document, is picked when the server starts.
_SERVER_SETTINGS: dict[str, Any] = {
    "poll_timeout_max": 0.3,
    "poll_timeout_default": 0.1,
    "heartbeat_interval": 0.5,
}
_LIVE_DOCUMENT = openapi_document(
    Settings.from_env(make_server("memory://", port=1, **_SERVER_SETTINGS).env)
)
contract = schemathesis.openapi.from_dict(
    _LIVE_DOCUMENT,
    config=SchemathesisConfig.from_dict(
        {
            "cache": {"enabled": False},  # no .schemathesis/ in the work tree
            "max-stream-events": 1,
            "request-timeout": 10,
            "generation": {"max-examples": 15},
            "checks": {
                # 413 is how the server refuses a batch or a body over its limits
                "negative_data_rejection": {
                    "expected-statuses": ["400", "401", "403", "413", "429", "503"]
                },
            },
        }
    ),
)


@pytest.fixture(scope="module")
def live_server() -> Iterator[Server]:
    srv = make_server("memory://", **_SERVER_SETTINGS).start()  # a port free now
    yield srv
    srv.stop()


def test_live_server_serves_the_document_under_test(live_server: Server) -> None:
    r = httpx.get(live_server.url + PATH, timeout=10)
    assert r.status_code == 200
    assert r.json() == _LIVE_DOCUMENT


@contract.parametrize()
@settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_live_server_conforms_to_its_contract(case: Any, live_server: Server) -> None:
    """Generated requests, valid and invalid, on every operation (bounded: 15 examples
    each plus schemathesis' coverage cases): no 500, and every answer's status, headers
    and body are the documented ones."""
    if case.operation.path == "/v1/publish":
        credential = API_KEY
    else:
        credential = live_server.auth.issue(
            "prop", subscribe=["*"], publish=["*"], presence=["*"], ttl=600
        )
    case.call_and_validate(
        base_url=live_server.url,
        headers={"Authorization": f"Bearer {credential}"},
        excluded_checks=[positive_data_acceptance],
        additional_checks=[valid_requests_are_accepted],
    )


def test_sse_answers_an_event_stream_and_problem_bodies(live_server: Server) -> None:
    """The SSE operation as documented, beside the generated run: the stream's media type,
    and a problem body (not a stream) for a refused request."""
    headers = live_server.api_headers
    with httpx.stream(
        "GET", live_server.url + "/v1/sse", params={"channel": "a"}, headers=headers, timeout=10
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
    r = httpx.get(live_server.url + "/v1/sse", params={"channel": "a b"}, headers=headers)
    assert r.status_code == 400
    assert r.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert json.loads(r.text)["type"] == "https://pushsvc.dev/problems/bad-request"
