"""The OpenAPI document says exactly what the server accepts: schemathesis, live.

A real server (``tests.api_server.running``) serves its own ``/openapi.json``;
schemathesis reads it there and runs every operation with its default checks
(status codes, content types, response schemas and headers, ``Allow``, schema-valid
data accepted, schema-invalid data refused, auth enforced, no 5xx), in its examples,
coverage and fuzzing phases, deterministically and with few examples each, twice:
as an anonymous caller (what needs credentials is a documented 401) and as an
auditor (who reads everything: exports, lineages, entry bodies).

One allowance, narrow: a schema says what each parameter may be, not how two relate
or what the log holds now, and not whether a signature verifies. On the operations
where that decides (``ALLOWED_400``), a schema-valid request may be refused with 400,
but only with the handler's own message for that rule; a refusal by FastAPI's
validation there would still fail (the document let through what the server's
declarations refuse).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import schemathesis

from tests.api_server import Server, running

MAX_EXAMPLES = 12  # per operation and phase; the coverage phase adds its boundary cases

# (method, path): what a 400 to a schema-valid request must say (None: any 400)
ALLOWED_400: dict[tuple[str, str], str | None] = {
    # index < tree_size <= the log's size: two parameters, and the log now
    ("GET", "/v1/log/proof/inclusion"): r"need index < tree_size <= \d+",
    ("GET", "/v1/log/proof/consistency"): r"need 0 < first <= second <= \d+",
    ("GET", "/v1/log/entries"): r"start must be below end and the size \d+",
    # from_size: only with format=bundle, and at most the log's size
    ("GET", "/v1/export"): r"from_size (goes with format=bundle|\d+ exceeds the log's \d+ leaves)",
    # a signed entry: its signatures, authority and chain are for the log to judge; the
    # route reads the body itself, so no FastAPI validation stands between
    ("POST", "/v1/entries"): None,
    # the same entry as a subject token, then a DPoP proof made with its holder's key
    ("POST", "/oauth/token"): None,
}


# schemathesis's default for positive_data_acceptance, and 400
RELAXED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx", "400"]


def _config(bearer: str | None) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,  # the same cases every run
                "database": "none",
            },
            **({"auth": {"openapi": {"bearer": {"bearer": bearer}}}} if bearer else {}),
            "operations": [
                {
                    # one filter: separate include-method and include-path would match either
                    "include-name": f"{method} {path}",
                    "checks": {"positive_data_acceptance": {"expected-statuses": RELAXED}},
                }
                for method, path in ALLOWED_400
            ],
        }
    )


def refused_only_for_what_no_schema_says(ctx, response, case) -> None:
    """A schema-valid request refused with 400 (allowed above) names the rule that did it."""
    meta = case.meta
    key = (case.method.upper(), case.path)
    if response.status_code != 400 or meta is None or not meta.generation.mode.is_positive:
        return None
    if key not in ALLOWED_400:
        return None  # positive_data_acceptance fails it as it is
    pattern = ALLOWED_400[key]
    body = response.json()
    said = body.get("detail", body.get("error_description", ""))
    assert pattern is None or re.fullmatch(pattern, said), (
        f"{key}: a schema-valid request was refused for something else: {said!r}"
    )
    return None


def _media(value: str) -> tuple[str, dict[str, str]]:
    kind, *params = (p.strip() for p in value.split(";"))
    pairs = (p.partition("=") for p in params if p)
    params = {k.strip().lower(): v.strip() for k, _, v in pairs}
    params.pop("charset", None)  # what a text type is encoded in, not which format
    return kind.strip().lower(), params


def content_type_parameters_match(ctx, response, case) -> None:
    """A documented media type's parameters are what is sent: schemathesis compares the
    type and subtype alone, and ``/metrics`` says which Prometheus text format it is."""
    responses = case.operation.definition.raw.get("responses", {})
    documented = responses.get(str(response.status_code), {}).get("content", {})
    received = response.headers.get("content-type", [""])
    received = received[0] if isinstance(received, list) else received
    kind, params = _media(received)
    for media in documented:
        want_kind, want = _media(media)
        if want_kind == kind and want:
            assert params == want, f"Content-Type {received!r} is not the documented {media}"
    return None


CHECKS = [refused_only_for_what_no_schema_says, content_type_parameters_match]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("schemathesis")) as srv:
        yield srv


@pytest.fixture
def anonymous_schema(live: Server):
    return schemathesis.openapi.from_url(live.url("/openapi.json"), config=_config(None))


@pytest.fixture
def auditor_schema(live: Server):
    return schemathesis.openapi.from_url(live.url("/openapi.json"), config=_config(live.auditor))


@pytest.fixture(autouse=True)
def _nodeid(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's from_fixture renames the test node for its reports through
    # ``node._nodeid``, which pytest 9.2 no longer has (it keeps ``_id``): give it one.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


anonymous = schemathesis.pytest.from_fixture("anonymous_schema")
auditor = schemathesis.pytest.from_fixture("auditor_schema")


@anonymous.parametrize()
def test_the_document_is_exact_for_anyone(case) -> None:
    case.call_and_validate(additional_checks=CHECKS)


@auditor.parametrize()
def test_the_document_is_exact_for_an_auditor(case) -> None:
    case.call_and_validate(additional_checks=CHECKS)
