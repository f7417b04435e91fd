"""docs/INTEGRATIONS.md: every Python block compiles, and the core's example runs as shown
against a live service, gateway and upstream (the frameworks' examples run in their own
tests, tests/test_integration_*.py, which say which block they follow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lineage.client import Agent, LineageClient

from .gateway_harness import MAIL_SECRET
from .test_gateway import SCOPE, stack

DOC = (Path(__file__).resolve().parent.parent / "docs" / "INTEGRATIONS.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", DOC, re.S)


def test_the_page_has_the_core_and_the_frameworks():
    assert len(BLOCKS) >= 1
    for heading in ("## The core", "## The drill"):
        assert heading in DOC


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_python_block_compiles(index: int):
    compile(BLOCKS[index], f"INTEGRATIONS.md block {index}", "exec")


def test_the_core_example_runs_as_shown(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    with stack(tmp_path) as w:
        agent = Agent.ephemeral()  # the person's grant, for the example's task
        with LineageClient(w.srv.base, log_key=w.srv.log.log_key.vkey) as client:
            credential = client.grant(
                w.srv.alice, "alice@corp", agent, task="inbox-triage", scope=SCOPE
            )
        names = {"SERVICE": w.srv.base, "GATEWAY": w.base, "agent": agent, "credential": credential}
        exec(compile(BLOCKS[0], "INTEGRATIONS.md core", "exec"), names)
        printed = capsys.readouterr().out
        assert '"/v1/messages/17"' in printed and '"/v1/messages/18"' in printed
        assert [s.raw_path for s in w.api.seen] == ["/v1/messages/17", "/v1/messages/18"]
        reader = names["reader"]
        assert w.srv.log.state().is_revoked(
            w.srv.log.state().credential(reader.credential), w.srv.log.size
        )
