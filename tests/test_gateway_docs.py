"""docs/GATEWAY.md's examples are what the code does: its configuration parses, its
worked request is what the HTTP request it describes becomes, and its description is what
the gateway publishes for that configuration."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from lineage.api.gateway.config import parse_gateway
from lineage.client.gateway import canonical_segments, derive_request, field_attributes
from lineage.ledger.errors import ConfigError

DOC = (Path(__file__).resolve().parent.parent / "docs" / "GATEWAY.md").read_text()


def example(name: str) -> str:
    m = re.search(rf"<!-- gateway-example: {name} -->\n```\w+\n(.*?)\n```", DOC, re.S)
    assert m, f"GATEWAY.md has no example {name!r}"
    return m.group(1)


def config():
    return parse_gateway(tomllib.loads(example("config"))["gateway"])


def test_the_configuration_example_parses():
    cfg = config()
    assert cfg.name == "gateway-1" and list(cfg.upstreams) == ["mail"]
    assert cfg.upstreams["mail"].attach.name == "X-Api-Key"


def test_the_worked_request_is_what_the_described_http_request_becomes():
    route = config().upstreams["mail"].route
    body = b'{"to":"bob@corp.example","text":"hi"}'
    assert len(body) == 37  # as the page says
    fields = field_attributes(route, "folder=sent", body, "application/json")
    got = derive_request(route, "POST", canonical_segments("/v1/send"), "folder=sent", body, fields)
    assert got == json.loads(example("request"))


def test_the_description_example_is_what_the_gateway_publishes():
    routes = [up.route.to_json() for up in config().upstreams.values()]
    assert json.loads(example("description")) == {"routes": routes}


@pytest.mark.parametrize(
    ("mutation", "field"),
    [
        ({"attach": "cookie:x"}, "attach"),
        ({"url": "ftp://h/x"}, "url"),
        ({"url": "http://user:pw@h/x"}, "url"),
        ({"fields": {"http.method": "query"}}, "fields.http.method"),
        ({"fields": {"to": "header"}}, "fields.to"),
        ({"actions": {"get": "read"}}, "actions.get"),
        ({"asserts": ["nope"]}, "asserts"),
        ({"colour": "blue"}, "colour"),
        ({"secret": None}, "mail"),
    ],
)
def test_a_bad_configuration_is_refused_naming_the_key(mutation, field):
    data = tomllib.loads(example("config"))["gateway"]
    mail = data["upstreams"]["mail"]
    for k, v in mutation.items():
        if v is None:
            del mail[k]
        else:
            mail[k] = v
    with pytest.raises(ConfigError, match=re.escape(field)):
        parse_gateway(data)


def test_the_mcp_configuration_example_parses():
    text = example("config") + "\n" + example("mcp-config")
    cfg = parse_gateway(tomllib.loads(text)["gateway"])
    tools = cfg.upstreams["tools"]
    assert tools.kind == "mcp" and tools.route.resource == "tool" and tools.route.type == "mcp"
    assert tools.secret.source == "command" and tools.attach.how == "bearer"


def test_the_readme_gateway_configuration_parses():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    m = re.search(r"<!-- readme-gateway -->\n```toml\n(.*?)\n```", readme, re.S)
    assert m
    cfg = parse_gateway(tomllib.loads(m.group(1))["gateway"])
    assert cfg.mount == "/gateway" and sorted(cfg.upstreams) == ["mail", "tools"]
    assert cfg.upstreams["tools"].kind == "mcp"
    assert cfg.upstreams["mail"].secret.command[:2] == ("vault", "kv")
