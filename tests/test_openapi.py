"""The served OpenAPI document says what the service does: 400s, not 422s, in the right shape,
and the rules the handlers enforce (tests/test_openapi_schemathesis.py checks it live)."""

import re

import httpx
import pytest

from lineage.api.main import create_app
from lineage.api.openapi import OPERATIONS
from lineage.ledger.ledger import init_ledger
from lineage.verifier.jcs import MAX_SAFE_INTEGER
from tests.api_server import running


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    d = tmp_path_factory.mktemp("openapi")
    log = init_ledger(d / "l.db", d / "keys", origin="openapi.example/log")
    yield create_app(log, checkpoints=False)
    log.close()


@pytest.fixture(scope="module")
def spec(app):
    return app.openapi()


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with running(tmp_path_factory.mktemp("openapi-live")) as server:
        yield server


def operations(spec):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield method, path, op


def parameter(spec, method, path, name):
    (found,) = [p for p in spec["paths"][path][method]["parameters"] if p["name"] == name]
    return found


def test_no_validation_422_anywhere(spec):
    for method, path, op in operations(spec):
        assert "422" not in op["responses"], f"{method} {path}"
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_errors_are_documented_in_their_shapes(spec):
    for method, path, op in operations(spec):
        errors = {code: r for code, r in op["responses"].items() if code >= "400"}
        assert "413" in errors, f"{method} {path}"  # any request body over 1 MiB
        for code, response in errors.items():
            if path.startswith("/oauth/"):
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/OAuthError")
            else:
                ref = response["content"]["application/problem+json"]["schema"]["$ref"]
                assert ref.endswith("/Problem")
            if code == "401":
                assert response["headers"]["WWW-Authenticate"]["required"] is True


def test_every_operation_says_which_errors_it_gives(spec):
    documented = {(method, path) for method, path, _ in operations(spec)}
    assert documented == set(OPERATIONS)
    for (method, path), (codes, _) in OPERATIONS.items():
        errors = {c for c in spec["paths"][path][method]["responses"] if c >= "400"}
        assert errors == {*codes.split(), "413"}, f"{method} {path}"


def test_what_needs_credentials_says_so(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer" and schemes["dpop"]["scheme"] == "DPoP"
    for method, path, op in operations(spec):
        if "401" in op["responses"]:
            assert op["security"], f"{method} {path}"
        else:
            assert "security" not in op, f"{method} {path}"
    assert {} not in spec["paths"]["/v1/export"]["get"]["security"]
    assert {} in spec["paths"]["/v1/log/entries"]["get"]["security"]  # anyone; more if allowed


@pytest.mark.parametrize(
    "path, name",
    [
        ("/v1/entries/{entry_id}", "entry_id"),
        ("/v1/credentials/{credential}/lineage", "credential"),
    ],
)
def test_ids_in_paths_are_64_lower_case_hex(spec, path, name):
    schema = parameter(spec, "get", path, name)["schema"]
    assert schema["pattern"] == "^[0-9a-f]{64}$"
    assert re.fullmatch(schema["pattern"][1:-1], "a" * 64)


@pytest.mark.parametrize(
    "path, name, low",
    [
        ("/v1/log/entries/{index}", "index", 0),
        ("/v1/log/entries", "start", 0),
        ("/v1/log/entries", "end", 1),
        ("/v1/log/proof/inclusion", "index", 0),
        ("/v1/log/proof/inclusion", "tree_size", 1),
        ("/v1/log/proof/consistency", "first", 1),
        ("/v1/log/proof/consistency", "second", 1),
        ("/v1/entries", "cursor", 0),
        ("/v1/entries", "since", 0),
        ("/v1/export", "until", 0),
        ("/v1/export", "from_size", 0),
    ],
)
def test_integers_are_bounded_as_the_server_reads_them(spec, path, name, low):
    schema = parameter(spec, "get", path, name)["schema"]
    assert (schema["type"], schema["minimum"], schema["maximum"]) == (
        "integer",
        low,
        MAX_SAFE_INTEGER,
    )


def test_optional_parameters_are_never_null(spec):
    """An absent parameter is how it is left out: ``?since=null`` is refused."""
    for method, path, op in operations(spec):
        for p in op.get("parameters", []):
            assert "anyOf" not in p["schema"] and p["schema"].get("type") != "null", (method, path)


def test_a_range_the_document_gives_is_the_one_enforced(srv):
    top = MAX_SAFE_INTEGER
    assert httpx.get(srv.url(f"/v1/log/entries/{top}")).status_code == 404  # valid, no leaf
    assert httpx.get(srv.url(f"/v1/log/entries/{top + 1}")).status_code == 400
    r = httpx.get(srv.url(f"/v1/log/proof/consistency?first=1&second={top + 1}"))
    assert r.status_code == 400


def test_media_types_are_the_ones_served(spec):
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain; version=0.0.4"]
    export = spec["paths"]["/v1/export"]["get"]["responses"]["200"]["content"]
    assert set(export) == {"application/json", "application/jsonl", "text/csv", "text/vnd.graphviz"}
    assert export["application/json"]["schema"]["$ref"].endswith("/Bundle")


def test_metrics_answer_prometheus_text_0_0_4(srv):
    r = httpx.get(srv.url("/metrics"))
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_request_bodies_are_declared(spec):
    append = spec["paths"]["/v1/entries"]["post"]["requestBody"]
    assert append["required"] is True
    assert append["content"]["application/json"]["schema"]["$ref"].endswith("/SignedEntry")
    access = spec["components"]["schemas"]["AccessRequest"]["properties"]
    assert access["invocation"]["$ref"].endswith("/Invocation")
    token = spec["paths"]["/oauth/token"]["post"]
    form = token["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    form = spec["components"]["schemas"][form["$ref"].rsplit("/", 1)[1]]
    assert set(form["required"]) == {"grant_type", "subject_token", "subject_token_type"}
    assert form["properties"]["grant_type"]["enum"] == [
        "urn:ietf:params:oauth:grant-type:token-exchange"
    ]
    assert not {"scope", "resource", "audience"} & set(form["properties"])  # always refused
    assert [p["name"] for p in token["parameters"]] == ["DPoP"]


def test_a_result_body_is_exactly_one_answer_never_null(spec):
    """``POST /v1/access/{id}/result``: ``upstream_status`` or ``failure``, one of them."""
    op = spec["paths"]["/v1/access/{access_id}/result"]["post"]
    assert set(op["responses"]) >= {"200", "201", "409"}
    assert parameter(spec, "post", "/v1/access/{access_id}/result", "access_id")["schema"][
        "pattern"
    ] == ("^[0-9a-f]{64}$")
    schema = spec["components"]["schemas"]["ResultRequest"]
    assert schema["additionalProperties"] is False
    assert schema["oneOf"] == [{"required": ["upstream_status"]}, {"required": ["failure"]}]
    status, failure = schema["properties"]["upstream_status"], schema["properties"]["failure"]
    assert (status["type"], status["minimum"], status["maximum"]) == ("integer", 100, 599)
    assert failure["enum"] == ["timeout", "unreachable", "bad_response", "cancelled"]
    assert "anyOf" not in status and "anyOf" not in failure and "default" not in status


def test_required_form_fields_cannot_be_empty(spec):
    """FastAPI reads an empty form value as absent, so ``token=`` is a missing token."""
    for name in ("Body_introspect_oauth_introspect_post", "Body_revoke_oauth_revoke_post"):
        assert spec["components"]["schemas"][name]["properties"]["token"]["minLength"] == 1


@pytest.mark.parametrize(
    "path, allow",
    [("/v1/entries", "GET, POST"), ("/healthz", "GET"), ("/oauth/token", "POST")],
)
def test_a_405_names_every_method_of_the_resource(srv, path, allow):
    r = httpx.request("OPTIONS", srv.url(path))  # /v1/entries: GET and POST are two routes
    assert r.status_code == 405 and r.headers["Allow"] == allow


@pytest.mark.parametrize(
    "path, method, model",
    [
        ("/v1/log/proof/inclusion", "get", "InclusionProof"),
        ("/v1/log/proof/consistency", "get", "ConsistencyProof"),
        ("/oauth/token", "post", "TokenResponse"),
        ("/oauth/introspect", "post", "Introspection"),
        ("/v1/access", "post", "AccessDecision"),
        ("/v1/access/{access_id}/result", "post", "AppendResult"),
        ("/v1/credentials/{credential}/lineage", "get", "Bundle"),
    ],
)
def test_success_bodies_have_models(spec, path, method, model):
    schema = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]
    assert schema["schema"]["$ref"].endswith("/" + model)
    assert model in spec["components"]["schemas"]


def test_contract_paths_are_served(spec):
    for path in [
        "/.well-known/oauth-authorization-server",
        "/oauth/token",
        "/oauth/introspect",
        "/oauth/revoke",
        "/v1/entries",
        "/v1/entries/{entry_id}",
        "/v1/access",
        "/v1/access/{access_id}/result",
        "/v1/credentials/{credential}/lineage",
        "/v1/log/checkpoint",
        "/v1/log/key",
        "/v1/log/entries/{index}",
        "/v1/log/entries",
        "/v1/log/proof/inclusion",
        "/v1/log/proof/consistency",
        "/v1/export",
    ]:
        assert path in spec["paths"], path
