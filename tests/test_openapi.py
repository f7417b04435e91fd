"""The served OpenAPI document says what the service does: 400s, not 422s, in the right shape."""

import pytest

from lineage.api.main import create_app
from lineage.ledger.ledger import init_ledger


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    d = tmp_path_factory.mktemp("openapi")
    log = init_ledger(d / "l.db", d / "keys", origin="openapi.example/log")
    yield create_app(log, checkpoints=False).openapi()
    log.close()


def test_no_validation_422_anywhere(spec):
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert "422" not in op["responses"], f"{method} {path}"
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_errors_are_documented_in_their_shapes(spec):
    for path, operations in spec["paths"].items():
        for op in operations.values():
            content = op["responses"]["400"]["content"]
            if path.startswith("/oauth/"):
                ref = content["application/json"]["schema"]["$ref"]
                assert ref.endswith("/OAuthError")
            else:
                ref = content["application/problem+json"]["schema"]["$ref"]
                assert ref.endswith("/Problem")


@pytest.mark.parametrize(
    "path, method, model",
    [
        ("/v1/log/proof/inclusion", "get", "InclusionProof"),
        ("/v1/log/proof/consistency", "get", "ConsistencyProof"),
        ("/oauth/token", "post", "TokenResponse"),
        ("/oauth/introspect", "post", "Introspection"),
        ("/v1/access", "post", "AccessDecision"),
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
